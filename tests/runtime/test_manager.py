"""The local-first Socket.IO manager against a real redis-server, two managers in one process (no
Chainlit): local emits never touch Redis, cross-instance emits go only to the room's holders, stale
holders are pruned, room registrations expire unless refreshed."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis
import socketio

from cl_scale.runtime.manager import ROOM_TTL, LocalFirstRedisManager
from cl_scale.wire.keyspace import Keyspace

KS = Keyspace()


class Node:
    """One 'instance': a python-socketio server with our manager; packets it sends are recorded."""

    def __init__(self, url: str, name: str):
        self.manager = LocalFirstRedisManager(url, keyspace=KS, instance_id=name, heartbeat_seconds=0.1)
        self.server = socketio.AsyncServer(client_manager=self.manager, async_mode="asgi")
        self.sent: list[tuple[str, object]] = []

        async def record(eio_sid, packet):
            self.sent.append((eio_sid, packet))

        self.server._send_eio_packet = record
        self.server.manager_initialized = True
        self.manager.initialize()

    async def socket(self, eio_sid: str, *rooms: str) -> str:
        sid = await self.manager.connect(eio_sid, "/")
        for room in rooms:
            await self.manager.enter_room(sid, "/", room)
        return sid

    def got(self, eio_sid: str) -> int:
        return sum(1 for e, _ in self.sent if e == eio_sid)

    async def close(self):
        await self.manager.close()
        for task in self.manager._tasks:
            task.cancel()


async def _publishes(r) -> int:
    info = await r.info("commandstats")
    return int(info.get("cmdstat_publish", {}).get("calls", 0))


async def _until(predicate, timeout=5.0):
    for _ in range(int(timeout / 0.02)):
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met")


@pytest.fixture
async def nodes(redis_server):
    a, b = Node(redis_server.url, "inst-a"), Node(redis_server.url, "inst-b")
    r = aioredis.Redis.from_url(redis_server.url)
    await _until(lambda: a.manager.listener_alive() and b.manager.listener_alive())
    yield a, b, r
    await a.close()
    await b.close()
    await r.aclose()


async def test_local_emit_skips_redis_and_remote_emit_reaches_only_the_holder(nodes):
    a, b, r = nodes
    sa = await a.socket("eio-a", "session:s-a")
    await b.socket("eio-b", "session:s-b")
    await asyncio.sleep(0.3)  # heartbeats settle (they publish pings)
    before = await _publishes(r)
    await a.manager.emit("event", {"x": 1}, room=sa)  # a socket connected to this instance
    assert a.got("eio-a") == 1
    assert await _publishes(r) - before <= 2  # no publish for the emit (heartbeat pings may tick)
    await a.manager.emit("event", {"x": 2}, room="session:s-b")  # held by b only
    await _until(lambda: b.got("eio-b") == 1)
    assert a.got("eio-a") == 1 and a.manager.last_reached == 1
    assert await r.smembers(KS.room("/", "session:s-b")) == {b"inst-b"}
    assert 0 < await r.ttl(KS.room("/", "session:s-b")) <= ROOM_TTL


async def test_a_publish_that_reaches_nobody_prunes_the_dead_holder(nodes):
    a, b, r = nodes
    await b.socket("eio-b", "user:alice")
    await r.sadd(KS.room("/", "user:alice"), "inst-dead")  # a SIGKILLed instance's registration
    await a.manager.emit("event", {}, room="user:alice")
    await _until(lambda: b.got("eio-b") == 1)
    for _ in range(50):
        if await r.smembers(KS.room("/", "user:alice")) == {b"inst-b"}:
            break
        await asyncio.sleep(0.02)
    assert await r.smembers(KS.room("/", "user:alice")) == {b"inst-b"}


async def test_leaving_deregisters_and_registrations_come_back_after_a_redis_flush(nodes):
    a, b, r = nodes
    sid = await b.socket("eio-b", "thread:t1")
    assert await r.sismember(KS.room("/", "thread:t1"), "inst-b")
    await b.manager.leave_room(sid, "/", "thread:t1")
    assert not await r.exists(KS.room("/", "thread:t1"))
    await b.manager.enter_room(sid, "/", "thread:t1")
    await r.flushall()  # what an empty Redis after a restart looks like
    b.manager.redis_ok = False  # as after a failed heartbeat: the next one re-registers everything
    await _until(lambda: b.manager.redis_ok)
    for _ in range(50):
        if await r.sismember(KS.room("/", "thread:t1"), "inst-b"):
            break
        await asyncio.sleep(0.05)
    assert await r.sismember(KS.room("/", "thread:t1"), "inst-b")
    assert b.manager.tracked()["rooms_registered"] >= 2  # the socket's own room and thread:t1


async def test_rooms_are_registered_again_once_the_listener_lost_its_connection(redis_server):
    """Redis lost its data and dropped the listener's connection (a restart or a failover the heartbeat
    happened not to see: its own connection was fresh): the instance registers its rooms again, and is
    not ready until it has — else a peer's emit finds no holder and is lost until the periodic refresh."""
    r = aioredis.Redis.from_url(redis_server.url)
    a = Node(redis_server.url, "a")
    try:
        await a.socket("e1", "room-x")
        await _until(a.manager.listener_alive)
        assert await r.smembers(KS.room("/", "room-x")) == {b"a"}
        await r.flushall()
        await r.client_kill_filter(_type="pubsub")
        for _ in range(150):  # bounded: 3 s, thirty heartbeats
            if await r.smembers(KS.room("/", "room-x")) == {b"a"} and a.manager.listener_alive():
                break
            await asyncio.sleep(0.02)
        assert await r.smembers(KS.room("/", "room-x")) == {b"a"}
    finally:
        await a.close()
        await r.aclose()
