"""Owner killed mid-delivery; client offline; outbox bound and TTL."""

from __future__ import annotations

import asyncio

from cl_scale.ops.client import ChainlitClient
from cl_scale.worker import OutboxFull, Publisher
from tests.worker.helpers import dlq, offline, shown, started, worker_texts


async def test_sigkill_owner_with_200_in_flight_all_shown_once_in_order(cluster, worker_env):
    a, b = cluster.start(2, env=worker_env).instances
    first = await started(ChainlitClient(a.url, reconnection=False))
    async with Publisher(cluster.redis.url, key_id="k1", key="secret-one") as pub:
        await pub.send_many([{"session_id": first.session_id, "text": f"w{i:03d}"} for i in range(200)])
        await first.wait_for(lambda: len(worker_texts(first)) >= 20, 20)
        a.kill()  # SIGKILL while the rest is in flight
    got_before = len(worker_texts(first))
    await first.close()
    second = ChainlitClient(b.url, session_id=first.session_id, reconnection=False)
    await second.connect()
    try:
        try:
            await second.wait_for(lambda: len(shown([first, second])) >= 200, 30)
        except TimeoutError:
            got = shown([first, second])
            raise AssertionError(f"{got_before} before kill, {len(got)} shown: {got[:3]}..{got[-3:]}; "
                                 f"B log: {b.proc.log()[-2500:]}")
        await asyncio.sleep(0.5)  # anything extra would show up now
        assert shown([first, second]) == [f"w{i:03d}" for i in range(200)], f"{got_before} before the kill"
        assert not [m for m in second.messages() if "started on" in str(m.get("output"))]
    finally:
        await second.close()


async def test_messages_sent_while_disconnected_arrive_on_reconnect_elsewhere(cluster, worker_env):
    a, b = cluster.start(2, env=worker_env).instances
    client = await started(ChainlitClient(a.url, reconnection=False))
    await offline(cluster.redis.url, client)
    async with Publisher(cluster.redis.url, key_id="k1", key="secret-one") as pub:
        for i in range(10):
            await pub.send(client.session_id, f"w{i}")
    await asyncio.sleep(1.5)  # no one delivers to a disconnected session: it waits in the outbox
    back = ChainlitClient(b.url, session_id=client.session_id, reconnection=False)
    await back.connect()
    try:
        await back.wait_for(lambda: len(worker_texts(back)) >= 10, 20)
        assert worker_texts(back) == [f"w{i}" for i in range(10)]
    finally:
        await back.close()


async def test_outbox_bound_and_ttl_dead_letter_instead_of_dropping(cluster, worker_env):
    env = {**worker_env, "CL_SCALE_WORKER_OUTBOX_TTL": "3"}
    (a,) = cluster.start(1, env=env).instances
    client = await started(ChainlitClient(a.url, reconnection=False))
    await offline(cluster.redis.url, client)
    async with Publisher(cluster.redis.url, key_id="k1", key="secret-one", outbox_max=5) as pub:
        for i in range(5):
            await pub.send(client.session_id, f"w{i}")
        try:
            await pub.send(client.session_id, "w-overflow")
            raise AssertionError("overflow accepted")
        except OutboxFull as exc:
            assert "dead-lettered" in str(exc)
        await pub.send("never-connected-session-1234", "w-orphan")
    letters = await dlq(cluster.redis.url)
    assert [d["reason"] for d in letters] == ["outbox full: 5 waiting (max 5)"]
    # Past the TTL, the janitor moves what waited to the dead-letter stream with the reason.
    for _ in range(120):  # bounded: 30 s
        letters = await dlq(cluster.redis.url)
        if len(letters) >= 7:
            break
        await asyncio.sleep(0.25)
    reasons = sorted(d["reason"] for d in letters)
    assert sum("offline past the outbox TTL" in r for r in reasons) == 5, reasons
    assert sum("unknown session after the outbox TTL" in r for r in reasons) == 1, reasons
