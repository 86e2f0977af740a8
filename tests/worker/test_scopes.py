"""Key scopes are checked against what Redis holds for the session (its user, id and thread),
never against the target fields a signer chose to write into the message."""

from __future__ import annotations

import itertools
import time

from cl_scale.ops.client import ChainlitClient
from cl_scale.wire import messages as p
from cl_scale.wire.keyspace import Keyspace, acl_rules
from cl_scale.worker import Publisher
from tests.worker.helpers import dlq_until, raw_publish, worker_texts

ALICE_SID, BOB_SID = "alice-session-0001", "bob-session-00001"
ALICE_THREAD, BOB_THREAD = "alice-thread-0001", "bob-thread-000001"
SCOPED = {
    "ku": (b"secret-u", "users=alice"),
    "ks": (b"secret-s", f"sessions={ALICE_SID}"),
    "kt": (b"secret-t", f"threads={ALICE_THREAD}"),
}
KEYS = ",".join(f"{kid}:{secret.decode()};{scope}" for kid, (secret, scope) in SCOPED.items())


def _body(session: str, kid: str, target: p.Target, text: str) -> dict:
    secret = SCOPED[kid][0]
    mid = p.new_id()
    body = p.Body(eid=mid, mid=mid, kind="message", session=session, target=target, ts=time.time(), content=text)
    raw = p.canonical(body)
    return {"kid": kid, "body": raw, "sig": p.sign(secret, raw)}


async def _login(url: str, user: str, sid: str, thread: str) -> ChainlitClient:
    client = ChainlitClient(url, session_id=sid, thread_id=thread)
    await client.login_with_header({"X-User": user})
    await client.connect()
    await client.wait_for(lambda: any(m.get("output") == "started" for m in client.messages()), 15)
    return client


async def test_scope_is_checked_against_the_stored_session_not_the_message(cluster):
    (a,) = cluster.start(1, app="auth_app.py", env={"CL_SCALE_WORKER_KEYS": KEYS}).instances
    alice = await _login(a.url, "alice", ALICE_SID, ALICE_THREAD)
    bob = await _login(a.url, "bob", BOB_SID, BOB_THREAD)
    try:
        # Every combination of target fields, each naming nothing, alice's or bob's side.
        sessions, users, threads = (None, ALICE_SID, BOB_SID), (None, "alice", "bob"), (None, ALICE_THREAD, BOB_THREAD)
        forged = 0
        for kid in SCOPED:
            for s, u, t in itertools.product(sessions, users, threads):
                target = p.Target(session=s, user=u, thread=t)
                await raw_publish(cluster.redis.url, BOB_SID, _body(BOB_SID, kid, target, f"w-forged-{kid}"))
                forged += 1
        # Control: each key still reaches the session it is scoped to.
        for kid in SCOPED:
            await raw_publish(cluster.redis.url, ALICE_SID,
                              _body(ALICE_SID, kid, p.Target(session=ALICE_SID), f"w-ok-{kid}"))
        async with Publisher(cluster.redis.url, key_id="ku", key=SCOPED["ku"][0]) as pub:
            await pub.send(BOB_SID, "w-last-for-bob")  # out of scope as well: the last one bob's outbox holds
        forged += 1
        await alice.wait_for(lambda: len(worker_texts(alice)) == len(SCOPED), 15)
        letters = await dlq_until(cluster.redis.url, forged)  # every forged entry accounted for
        assert sorted(worker_texts(alice)) == ["w-ok-ks", "w-ok-kt", "w-ok-ku"]
        assert worker_texts(bob) == [], "a scoped key wrote into another user's session"
        assert len(letters) == forged
        assert all(d["session"] == BOB_SID and "not allowed to reach" in d["reason"] for d in letters), letters
        reply = await bob.ask("still mine", contains="owner=")
        assert "owner=bob" in reply["output"]
    finally:
        await alice.close()
        await bob.close()


async def test_redis_acl_roles_worker_reaches_chats_but_cannot_emit_or_read(app_dir, tmp_path):
    """The documented ACL users against a real redis-server: an instance runs entirely under the
    ``instance`` role; a ``worker`` user delivers through outboxes but cannot publish on the
    Socket.IO channels (where a raw emit would bypass signing), read chat contexts or delete."""
    import redis.asyncio as aioredis
    import redis.exceptions

    from cl_scale.ops.cluster import ProcessCluster
    from cl_scale.ops.processes import RedisServer
    from cl_scale.runtime.api import RedisEmitter

    server = RedisServer(tmp_path, password="admin-pw").start()
    admin = aioredis.Redis.from_url(server.url)
    try:
        for role, password in (("instance", "inst-pw"), ("worker", "work-pw")):
            await admin.execute_command("ACL", "SETUSER", f"clscale-{role}", "on", f">{password}",
                                        *acl_rules("clscale", role))
        base = f"127.0.0.1:{server.port}/0"
        instance_url, worker_url = f"redis://clscale-instance:inst-pw@{base}", f"redis://clscale-worker:work-pw@{base}"
        cluster = ProcessCluster(app_dir, tmp_path, redis_url=instance_url)
        try:
            a, b = cluster.start(2, env={"CL_SCALE_WORKER_KEYS": "k1:secret-one"}).instances
            client = ChainlitClient(a.url)
            await client.connect()
            await client.wait_for(lambda: any("started on" in str(m.get("output")) for m in client.messages()), 15)
            async with Publisher(worker_url, key_id="k1", key="secret-one") as pub:
                await pub.send(client.session_id, "w-under-acl")
            await client.wait_for(lambda: "w-under-acl" in worker_texts(client), 15)
            reply = await client.ask(f"relay {client.session_id} cross", contains="relayed")  # instance role works
            assert reply

            worker, ks = aioredis.Redis.from_url(worker_url), Keyspace()
            emitter = RedisEmitter(worker_url)
            try:
                denied = [
                    worker.publish(ks.sio_channel(a.name), "{}"),
                    worker.hgetall(ks.context(client.session_id)),
                    worker.hset(ks.session(client.session_id), "owner", "me"),
                    worker.delete(ks.outbox(client.session_id)),
                    worker.xrange(ks.dead_letters),
                ]
                for call in denied:
                    try:
                        await call
                    except redis.exceptions.NoPermissionError:
                        continue
                    raise AssertionError("the worker ACL allowed a command it must not")
                # RedisEmitter (a raw Socket.IO emit) cannot even look up the room's holders.
                assert await emitter.emit_to_session(client.session_id, "cl-scale", {"text": "raw"}) == 0
            finally:
                await worker.aclose()
                await emitter.aclose()
            assert [d["text"] for _, e, d in client.events if e == "cl-scale"] == ["cross"], "raw emit got through"
            await client.close()
        finally:
            cluster.stop()
    finally:
        await admin.aclose()
        server.stop()
