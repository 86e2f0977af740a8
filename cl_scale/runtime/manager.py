"""Socket.IO client manager: local-first, targeted cross-instance delivery over Redis.

python-socketio's stock ``AsyncRedisManager`` publishes every emit on one channel that every instance
decodes, so each streamed token costs a Redis round trip plus N decodes. Chainlit emits almost
exclusively to one socket id that is connected to the emitting instance; this manager:

* delivers an emit whose target is a socket connected here without touching Redis (fast path);
* keeps a Redis registry ``room -> instances holding a member`` and publishes a cross-instance emit
  only on the channels of those instances (one publish per holder, decoded only there);
* uses the broadcast channel only for room-less emits;
* prunes registry entries of dead instances when a publish reaches nobody.
"""

from __future__ import annotations

import asyncio
import logging
import time

from socketio import AsyncManager, AsyncRedisManager

from cl_scale.runtime import metrics
from cl_scale.wire.connect import connect
from cl_scale.wire.keyspace import Keyspace

log = logging.getLogger("cl_scale.manager")


_LOCAL_EMITS = metrics.EMITS.labels("local")  # resolved once: this is the per-token hot path
# Room registry entries expire unless their holder refreshes them: a SIGKILLed instance's rooms
# disappear by themselves (publishes to a gone holder also prune it at once).
ROOM_TTL = 600
ROOM_REFRESH_EVERY = ROOM_TTL / 3


class LocalFirstRedisManager(AsyncRedisManager):
    """python-socketio's Redis manager, local first and routed by room holders.

    :param url: Redis URL (any form ``wire.connect`` accepts).
    :param keyspace: key and channel names.
    :param instance_id: this instance's name (its channel, its entry in room registries).
    :param write_only: emit only (``RedisEmitter``): no listener, no registrations.
    """

    name = "cl-scale"

    def __init__(self, url: str, *, keyspace: Keyspace, instance_id: str, redis_timeout: float = 2.0,
                 heartbeat_seconds: float = 1.0, write_only: bool = False):
        self.ks = keyspace
        super().__init__(url=url, channel=keyspace.sio_channel(instance_id), write_only=write_only)
        self.host_id = instance_id  # callbacks return to ``sio_channel(host_id)``
        self.broadcast_channel = keyspace.sio_broadcast
        self.redis_timeout = redis_timeout
        self.heartbeat_seconds = heartbeat_seconds
        self.redis = connect(url, timeout=redis_timeout)
        self._listen_redis = connect(url, timeout=None)
        self.listener_alive_at = 0.0  # monotonic time of the last self-ping seen by the listener
        self.redis_ok = False
        # The listener's connection dropped this many times; the rooms were last registered in full
        # after that many. A drop means Redis went away and may have come back empty (a restart, a
        # failover) even when the heartbeat's own connection never failed.
        self._listener_losses = 0
        self._rooms_synced = 0
        self._registered: set[tuple[str, str]] = set()
        self._tasks: list[asyncio.Task] = []
        self.last_reached = 0  # instances the last cross-instance emit was published to

    def room_key(self, namespace: str, room: str) -> str:
        return self.ks.room(namespace, room)

    # -- lifecycle ------------------------------------------------------------------------
    def initialize(self):
        AsyncManager.initialize(self)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._thread()), loop.create_task(self._heartbeat())]

    async def close(self) -> None:
        """Deregister this instance's rooms so nobody publishes to a gone instance."""
        for task in self._tasks:
            task.cancel()
        try:
            async with asyncio.timeout(self.redis_timeout):
                pipe = self.redis.pipeline(transaction=False)
                for namespace, room in self._registered:
                    pipe.srem(self.room_key(namespace, room), self.host_id)
                await pipe.execute()
        except Exception as exc:  # Redis down at shutdown: entries are pruned lazily
            log.warning("could not deregister rooms at shutdown: %s", exc)

    # -- emit -----------------------------------------------------------------------------
    def _is_local_socket(self, namespace: str, room) -> bool:
        return isinstance(room, str) and room in self.rooms.get(namespace, {}).get(None, {})

    async def emit(self, event, data, namespace=None, room=None, skip_sid=None, callback=None, to=None, **kwargs):
        room = to or room
        namespace = namespace or "/"
        if kwargs.get("ignore_queue") or self._is_local_socket(namespace, room):
            _LOCAL_EMITS.inc()
            return await AsyncManager.emit(self, event, data, namespace=namespace, room=room,
                                           skip_sid=skip_sid, callback=callback)
        # Room emit: deliver locally, then to the instances that hold members of the room.
        return await super().emit(event, data, namespace=namespace, room=room, skip_sid=skip_sid,
                                  callback=callback)

    async def _publish(self, data):
        """Route one pub/sub message: callbacks to their origin, emits to the room's holders."""
        method = data.get("method")
        if method == "callback":
            return await self._publish_to([self.ks.sio_channel(data["host_id"])], data)
        room = data.get("room") if method in ("emit", "close_room") else data.get("sid")
        if room is None or not isinstance(room, str):
            return await self._publish_to([self.broadcast_channel], data)
        namespace = data.get("namespace") or "/"
        try:
            async with asyncio.timeout(self.redis_timeout):
                holders = await self.redis.smembers(self.room_key(namespace, room))
        except Exception as exc:
            metrics.EMIT_ERRORS.inc()
            log.warning("room lookup failed for %s: %s", room, exc)
            return
        targets = [h.decode() for h in holders if h.decode() != self.host_id]
        self.last_reached = 0
        if not targets:
            return
        metrics.EMITS.labels("remote").inc(len(targets))
        delivered = await self._publish_to([self.ks.sio_channel(t) for t in targets], data)
        self.last_reached = sum(1 for n in delivered or [] if n)
        stale = [t for t, n in zip(targets, delivered or []) if n == 0]
        if stale:  # nobody listens on those channels any more: the instance is gone
            try:
                await self.redis.srem(self.room_key(namespace, room), *stale)
            except Exception:
                pass

    async def _publish_to(self, channels: list[str], data) -> list[int] | None:
        payload = self.json.dumps(data)
        try:
            async with asyncio.timeout(self.redis_timeout):
                pipe = self.redis.pipeline(transaction=False)
                for channel in channels:
                    pipe.publish(channel, payload)
                return await pipe.execute()
        except Exception as exc:
            metrics.EMIT_ERRORS.inc()
            log.warning("publish to %s failed: %s", channels, exc)
            return None

    # -- room registry ----------------------------------------------------------------------
    async def enter_room(self, sid, namespace, room, eio_sid=None):
        result = await super().enter_room(sid, namespace, room, eio_sid=eio_sid)
        if room is not None and room != sid:
            await self._register(namespace or "/", room)
        return result

    async def connect(self, sid, namespace):
        sid = await super().connect(sid, namespace)
        if sid is not None:
            await self._register(namespace or "/", sid)
        return sid

    async def disconnect(self, sid, namespace, **kwargs):
        namespace = namespace or "/"
        rooms = [r for r, members in self.rooms.get(namespace, {}).items() if r is not None and sid in members]
        result = await super().disconnect(sid, namespace, **kwargs)
        await self._prune(namespace, rooms)
        return result

    async def leave_room(self, sid, namespace, room):
        result = await super().leave_room(sid, namespace, room)
        await self._prune(namespace or "/", [room])
        return result

    async def _register(self, namespace: str, room: str) -> None:
        self._registered.add((namespace, room))
        try:
            async with asyncio.timeout(self.redis_timeout):
                pipe = self.redis.pipeline(transaction=False)
                pipe.sadd(self.room_key(namespace, room), self.host_id)
                pipe.expire(self.room_key(namespace, room), ROOM_TTL)
                await pipe.execute()
        except Exception as exc:  # re-sent by the heartbeat once Redis is back
            self.redis_ok = False
            log.warning("room registration deferred (%s): %s", room, exc)

    async def _prune(self, namespace: str, rooms) -> None:
        gone = [r for r in rooms if r is not None and not self.rooms.get(namespace, {}).get(r)]
        if not gone:
            return
        for room in gone:
            self._registered.discard((namespace, room))
        try:
            async with asyncio.timeout(self.redis_timeout):
                pipe = self.redis.pipeline(transaction=False)
                for room in gone:
                    pipe.srem(self.room_key(namespace, room), self.host_id)
                await pipe.execute()
        except Exception as exc:
            log.warning("room deregistration failed: %s", exc)

    # -- listener ---------------------------------------------------------------------------
    async def _listen(self):
        """Yield messages from this instance's channel and the broadcast channel, resubscribing
        with a short backoff when Redis goes away (delivery resumes ~1 s after Redis returns)."""
        channels = {self.channel.encode(), self.broadcast_channel.encode()}
        backoff = 0.1
        while True:
            pubsub = self._listen_redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel, self.broadcast_channel)
                backoff = 0.1
                async for message in pubsub.listen():  # blocks on the socket: no polling timer per message
                    if message.get("type") != "message" or message["channel"] not in channels:
                        continue
                    data = message["data"]
                    if data == b"ping":
                        self.listener_alive_at = time.monotonic()
                        continue
                    yield data
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.listener_alive_at = 0.0
                self._listener_losses += 1  # the heartbeat registers the rooms again
                log.warning("Redis listener lost (%s); retrying in %.1fs", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)
            finally:
                try:
                    await pubsub.aclose()
                except Exception:
                    pass

    async def _heartbeat(self):
        """Self-ping through Redis (proves the listener works); re-register rooms after an outage
        (this connection failed, or the listener's dropped) and refresh their TTL every
        ``ROOM_REFRESH_EVERY`` seconds."""
        refreshed = time.monotonic()
        while True:
            try:
                async with asyncio.timeout(self.redis_timeout):
                    await self.redis.publish(self.channel, "ping")
                due = time.monotonic() - refreshed > ROOM_REFRESH_EVERY
                losses = self._listener_losses
                if due or not self.redis_ok or losses != self._rooms_synced:
                    if self._registered:
                        await self._refresh_rooms()
                    refreshed = time.monotonic()
                    self._rooms_synced = losses
                self.redis_ok = True
            except asyncio.CancelledError:
                raise
            except Exception:
                self.redis_ok = False
            await asyncio.sleep(self.heartbeat_seconds)

    async def _refresh_rooms(self) -> None:
        rooms = list(self._registered)
        for i in range(0, len(rooms), 1000):
            async with asyncio.timeout(self.redis_timeout):
                pipe = self.redis.pipeline(transaction=False)
                for namespace, room in rooms[i:i + 1000]:
                    pipe.sadd(self.room_key(namespace, room), self.host_id)
                    pipe.expire(self.room_key(namespace, room), ROOM_TTL)
                await pipe.execute()

    def tracked(self) -> dict[str, int]:
        return {"rooms_registered": len(self._registered)}

    def listener_alive(self) -> bool:
        return (self.redis_ok and self._rooms_synced == self._listener_losses
                and time.monotonic() - self.listener_alive_at < max(5.0, 3 * self.heartbeat_seconds))
