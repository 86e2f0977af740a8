"""A Redis that stalls while a session moves must never cost the session: "Redis failed" is not
"no session" (a fresh session would be claimed over the stored one, its history deleted)."""

from __future__ import annotations

import asyncio

import pytest
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
        for _ in range(100):  # bounded: the reply's context entry is written beside the reply, not before it
            ctx = await admin.hlen(Keyspace().context(client.session_id))
            if ctx >= history + 3:
                break
            await asyncio.sleep(0.1)
        assert ctx == history + 3, "stored chat context lost entries"  # + previous reply, "after", its reply
    finally:
        await moved.close()
        await admin.aclose()


@pytest.mark.slow
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


async def test_two_handshakes_restoring_one_session_at_once_leave_one_owner_and_a_working_chat(cluster):
    """A client that retried its handshake may reach two instances at once. Claims are a compare-and-
    set on the owner each restore loaded: one wins; the other refuses its handshake, and whichever
    socket survives has its session (a socket without one would answer nothing, forever)."""
    import asyncio

    a, b, c = cluster.start(3).instances
    first = ChainlitClient(a.url, reconnection=False)
    await first.connect()
    await first.wait_for(lambda: any("started on" in str(m.get("output")) for m in first.messages()), 15)
    await first.ask("m0", contains="count=")
    await first.close()
    twins = [ChainlitClient(inst.url, session_id=first.session_id, reconnection=False) for inst in (b, c)]
    results = await asyncio.gather(*(t.connect(timeout=5) for t in twins), return_exceptions=True)
    connected = [t for t, r in zip(twins, results) if r is None and t.sio.connected]
    assert connected, results
    admin = aioredis.Redis.from_url(cluster.redis.url)
    try:
        for t in connected:  # every socket still open has its session and answers
            if t.sio.connected:
                reply = await t.ask("still here", contains="count=", timeout=15)
                assert field(reply, "thread") and int(field(reply, "count")) >= 2
        owner = (await admin.hget(Keyspace().session(first.session_id), "owner")).decode()
        assert owner in (b.name, c.name)
    finally:
        for t in twins:
            await t.close()
        await admin.aclose()
