"""A Redis that stalls while a session moves must never cost the session: "Redis failed" is not
"no session" (a fresh session would be claimed over the stored one, its history deleted)."""

from __future__ import annotations

import redis.asyncio as aioredis

from cl_scale.ops.client import ChainlitClient
from cl_scale.wire.keyspace import Keyspace


def field(reply: dict, name: str) -> str:
    return dict(p.split("=", 1) for p in reply["output"].split() if "=" in p)[name]


async def test_client_pause_during_reconnect_elsewhere_keeps_the_stored_session(cluster):
    a, b = cluster.start(2).instances
    client = ChainlitClient(a.url, reconnection=False)
    await client.connect()
    await client.wait_for(lambda: any("started on" in str(m.get("output")) for m in client.messages()), 15)
    for i in range(3):
        reply = await client.ask(f"m{i}", contains="count=")
    thread, history = field(reply, "thread"), int(field(reply, "history"))
    await client.close()

    admin = aioredis.Redis.from_url(cluster.redis.url)
    moved = ChainlitClient(b.url, session_id=client.session_id)
    try:
        # Every client stalls for 3.5 s: longer than an instance's per-command timeout (2 s).
        await admin.execute_command("CLIENT", "PAUSE", 3500, "ALL")
        await moved.connect(timeout=30)
        reply = await moved.ask("after", contains="count=", timeout=30)
        assert field(reply, "instance") == "inst2"
        assert field(reply, "thread") == thread, "a fresh session replaced the stored one"
        assert field(reply, "count") == "4"
        assert int(field(reply, "history")) == history + 2
        assert not [m for m in moved.messages() if "started on" in str(m.get("output"))], "on_chat_start re-ran"
        ctx = await admin.hlen(Keyspace().context(client.session_id))
        assert ctx == history + 3, "stored chat context lost entries"  # + previous reply, "after", its reply
    finally:
        await moved.close()
        await admin.aclose()


async def test_redis_stall_longer_than_the_handshake_wait_drops_the_transport_and_client_retries(cluster):
    """Redis paused for 12 s while a SIGKILLed instance's client fails over through nginx: the
    instance answers neither "restored" nor "fresh session" (that would overwrite the stored one);
    it drops the transport, the client reconnects by itself, and the session comes back intact."""
    cluster.start(2, nginx=True)
    client = ChainlitClient(cluster.nginx.url)
    await client.connect()
    await client.wait_for(lambda: any("started on" in str(m.get("output")) for m in client.messages()), 15)
    reply = await client.ask("m0", contains="count=")
    thread, victim = field(reply, "thread"), cluster.by_name(field(reply, "instance"))
    admin = aioredis.Redis.from_url(cluster.redis.url)
    try:
        await admin.execute_command("CLIENT", "PAUSE", 12000, "ALL")
        victim.kill()
        await client.wait_for(lambda: client.connects >= 2, 45)
        reply = await client.ask("after", contains="count=", timeout=30)
        assert field(reply, "thread") == thread and field(reply, "count") == "2"
        assert field(reply, "instance") != victim.name
        survivor = next(i for i in cluster.instances if i is not victim)
        assert "Redis unavailable during the handshake" in survivor.proc.log()
    finally:
        await client.close()
        await admin.aclose()
