"""Real Redis, real `cl-scale run` instances, the Chainlit-protocol client: worker messages in chats."""

from __future__ import annotations

import asyncio

from cl_scale.ops.client import ChainlitClient
from cl_scale.worker import Publisher, SyncPublisher
from tests.worker.helpers import started, worker_texts


async def test_delivery_to_session_on_another_instance_in_order_with_a_stream(cluster, worker_env):
    a, b = cluster.start(2, env=worker_env).instances
    client = await started(ChainlitClient(b.url))
    try:
        async with Publisher(cluster.redis.url, key_id="k1", key="secret-one") as pub:
            mids = [await pub.send(client.session_id, f"w{i}", author="Agent") for i in range(30)]
            async with pub.stream(client.session_id, author="Streamer") as s:
                for i in range(20):
                    await s.token(f"x{i} ")
            await pub.send(client.session_id, "w-after-stream")
        await client.wait_for(lambda: "w-after-stream" in worker_texts(client), 20)
        assert worker_texts(client) == [f"w{i}" for i in range(30)] + ["w-after-stream"]
        assert [m["id"] for m in client.messages() if m["output"].startswith("w")][:30] == mids
        assert all(m["name"] == "Agent" for m in client.messages() if m["output"].startswith("w") and m["output"] != "w-after-stream")
        streamed = [m for m in client.messages() if m.get("id") == s.id]
        assert len(streamed) == 1 and streamed[0]["output"] == "".join(f"x{i} " for i in range(20))
        assert client.counts.get("stream_start") == 1
        assert client.counts.get("stream_token") == 19
        # In the chat context: the app sees worker messages in its history.
        reply = await client.ask("hi", contains="count=")
        assert "history=" in reply["output"] and int(reply["output"].split("history=")[1].split()[0]) >= 33
    finally:
        await client.close()


async def test_send_to_user_reaches_each_of_their_sessions_and_scoped_key_holds(cluster, worker_env):
    a, b = cluster.start(2, app="auth_app.py", env=worker_env).instances
    clients = []
    for user, inst in (("alice", a), ("alice", b), ("bob", a)):
        c = ChainlitClient(inst.url)
        await c.login_with_header({"X-User": user})
        await c.connect()
        await c.wait_for(lambda c=c: any(m.get("output") == "started" for m in c.messages()), 15)
        clients.append(c)
    alice1, alice2, bob = clients
    try:
        # k2 may reach only alice: a user message to alice lands, one aimed at bob's session is dead-lettered.
        async with Publisher(cluster.redis.url, key_id="k2", key="secret-two") as pub:
            await pub.send_to_user("alice", "w-for-alice")
            await pub.send(bob.session_id, "w-not-for-bob")
        async with Publisher(cluster.redis.url, key_id="k1", key="secret-one") as pub:
            await pub.send(bob.session_id, "w-bob")
        for c in (alice1, alice2):
            await c.wait_for(lambda c=c: "w-for-alice" in worker_texts(c), 15)
        await bob.wait_for(lambda: "w-bob" in worker_texts(bob), 15)
        assert worker_texts(bob) == ["w-bob"]
        from tests.worker.helpers import dlq_until
        assert [d["reason"] for d in await dlq_until(cluster.redis.url, 1)] == ["key 'k2' is not allowed to reach this session"]
    finally:
        for c in clients:
            await c.close()


async def test_send_to_thread(cluster, worker_env):
    (a,) = cluster.start(1, env=worker_env).instances
    client = await started(ChainlitClient(a.url))
    try:
        reply = await client.ask("hi", contains="thread=")
        thread = reply["output"].split("thread=")[1].split()[0]
        async with Publisher(cluster.redis.url, key_id="k1", key="secret-one") as pub:
            await pub.send_to_thread(thread, "w-thread")
        await client.wait_for(lambda: "w-thread" in worker_texts(client), 15)

        def blocking_worker():  # SyncPublisher: same path from threads and scripts
            with SyncPublisher(cluster.redis.url, "k1", "secret-one") as sync_pub:
                mid = sync_pub.send(client.session_id, "w-sync")
                sync_pub.update(client.session_id, mid, "w-sync-edited")
                stream_id = sync_pub.stream_tokens(client.session_id, ["w-", "sync-", "stream"])
                return mid, stream_id

        mid, stream_id = await asyncio.to_thread(blocking_worker)
        await client.wait_for(lambda: any(m.get("id") == stream_id for m in client.messages()), 15)
        await client.wait_for(lambda: client.counts.get("update_message", 0) >= 1, 15)
        assert [m["output"] for m in client.messages() if m.get("id") == stream_id] == ["w-sync-stream"]
        assert [d["output"] for _, e, d in client.events if e == "update_message" and d["id"] == mid] == ["w-sync-edited"]
    finally:
        await client.close()


async def test_redelivered_ids_render_once_and_stamps_stay_ordered(cluster, worker_env):
    """Idempotency on both paths: a repeat of a delivered id (the wake-up fast path) and a repeat
    inside one batch (the stream path) each show once; created_at stays strictly increasing even
    though worker messages skip Chainlit's 1 ms sleep."""
    a, b = cluster.start(2, env=worker_env).instances
    client = await started(ChainlitClient(a.url))
    try:
        async with Publisher(cluster.redis.url, key_id="k1", key="secret-one") as pub:
            first = await pub.send(client.session_id, "w-once")
            await client.wait_for(lambda: "w-once" in worker_texts(client), 10)
            assert await pub.send(client.session_id, "w-once", message_id=first) == first
            await pub.send_many([{"session_id": client.session_id, "text": f"w-burst {i}", "message_id": f"burst-{i % 5}"}
                                 for i in range(10)])
            await pub.update(client.session_id, first, "w-once (edited)")
            await pub.send(client.session_id, "w-last")
        await client.wait_for(lambda: "w-last" in worker_texts(client), 15)
        await asyncio.sleep(0.5)  # anything re-rendered would arrive right behind
        news = [m for m in client.messages() if str(m.get("output", "")).startswith("w")]
        assert [m["output"] for m in news] == ["w-once"] + [f"w-burst {i}" for i in range(5)] + ["w-last"]
        stamps = [m["createdAt"] for m in news]
        assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
        assert client.counts.get("update_message", 0) >= 1
        # The app's history holds each id once.
        reply = await client.ask("hi", contains="count=")
        assert int(reply["output"].split("history=")[1].split()[0]) == 1 + 1 + 5 + 1 + 1  # start, w, 5 bursts, last, hi
    finally:
        await client.close()


async def test_update_and_remove_act_on_the_message_in_the_chat_context(cluster, worker_env):
    (a,) = cluster.start(1, env=worker_env).instances
    client = await started(ChainlitClient(a.url))
    try:
        async with Publisher(cluster.redis.url, key_id="k1", key="secret-one") as pub:
            keep = await pub.send(client.session_id, "w-keep")
            gone = await pub.send(client.session_id, "w-gone")
            await pub.update(client.session_id, keep, "w-keep (edited)")
            await pub.remove(client.session_id, gone)
        await client.wait_for(lambda: client.counts.get("delete_message", 0) >= 1, 15)
        reply = await client.ask("hi", contains="count=")
        assert int(reply["output"].split("history=")[1].split()[0]) == 3  # start, w-keep, hi
        updates = [d for _, e, d in client.events if e == "update_message"]
        assert updates and updates[-1]["output"] == "w-keep (edited)"
    finally:
        await client.close()


async def test_an_entry_whose_wake_up_went_astray_is_delivered_by_the_outbox_sweep(cluster, worker_env):
    """The wake-up is the fast path; the owner's outbox sweep is the safety net (a wake-up sent to the
    previous owner of a moving session, or lost while the listener reconnected)."""
    (a,) = cluster.start(1, env=worker_env).instances
    client = await started(ChainlitClient(a.url))
    try:
        async with Publisher(cluster.redis.url, key_id="k1", key="secret-one") as pub:
            keys, args = pub._args(pub.body(client.session_id, "message", "w-astray", "w-astray", "w-astray", None, None))
            args[7] = "cl-scale-test:nobody-listens:"  # the wake channel prefix: the wake-up reaches no instance
            assert await pub._script(keys=keys, args=args) == 1
        await client.wait_for(lambda: "w-astray" in worker_texts(client), 15)
        assert worker_texts(client) == ["w-astray"]
    finally:
        await client.close()
