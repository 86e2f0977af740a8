"""One running instance: wires the manager, the session store and the hooks to Chainlit's server."""

from __future__ import annotations

import asyncio
import logging
import os
import time

from cl_scale.runtime import metrics
from cl_scale.runtime.chainlit_hooks import ChainlitHooks
from cl_scale.runtime.manager import LocalFirstRedisManager
from cl_scale.runtime.redis_conn import connect
from cl_scale.runtime.session_store import SessionStore
from cl_scale.runtime.settings import RuntimeSettings, redacted

log = logging.getLogger("cl_scale.instance")

_current: "Instance | None" = None


def current() -> "Instance":
    if _current is None:
        raise RuntimeError("cl-scale runtime is not running in this process (start the app with `cl-scale run`)")
    return _current


class Instance:
    def __init__(self, settings: RuntimeSettings):
        global _current
        self.settings = settings
        self.redis = connect(settings.redis_url, timeout=settings.redis_timeout)
        self.store = SessionStore(self.redis, prefix=settings.prefix, instance_id=settings.instance_id,
                                  ttl=settings.session_timeout, timeout=settings.redis_timeout)
        self.manager = LocalFirstRedisManager(settings.redis_url, instance_id=settings.instance_id,
                                              prefix=settings.prefix, redis_timeout=settings.redis_timeout,
                                              heartbeat_seconds=settings.heartbeat_seconds)
        self.hooks = ChainlitHooks(self)
        from cl_scale.runtime.delivery import Delivery

        self.delivery = Delivery(self)  # worker messages (cl_scale.worker) into local sessions
        self.draining = False  # readiness off; still serving its clients
        self.closing = False  # drained: new messages are refused (clients re-send them elsewhere)
        self.started_at = time.time()
        self._tasks: list[asyncio.Task] = []
        self.sio = None
        _current = self

    # -- wiring -------------------------------------------------------------------------------
    def install(self) -> None:
        """Must run after the app module is loaded and before the first connection."""
        from chainlit.server import sio

        self.sio = sio
        sio.manager = self.manager
        self.manager.set_server(sio)
        self.hooks.install()

    async def start(self) -> None:
        # The manager is normally initialised lazily on the first connection; readiness needs the
        # listener running before that.
        self.sio.manager_initialized = True
        self.manager.initialize()
        self._tasks.append(asyncio.get_running_loop().create_task(self._register_loop()))
        await self.delivery.start()
        log.info("instance %s up (redis %s, advertise %s)", self.settings.instance_id,
                 redacted(self.settings.redis_url), self.settings.advertise_url)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await self.delivery.stop()
        await self.manager.close()
        try:
            async with asyncio.timeout(self.settings.redis_timeout):
                await self.redis.delete(self.instance_key(self.settings.instance_id))
        except Exception:
            pass

    def instance_key(self, instance_id: str) -> str:
        return f"{self.settings.prefix}:instance:{instance_id}"

    async def _register_loop(self) -> None:
        """Advertise this instance (address, pid) with a short TTL: peers forward HTTP to live owners only."""
        key = self.instance_key(self.settings.instance_id)
        while True:
            try:
                async with asyncio.timeout(self.settings.redis_timeout):
                    await self.redis.hset(key, mapping={"url": self.settings.advertise_url or "",
                                                        "pid": os.getpid(), "started": int(self.started_at)})
                    await self.redis.expire(key, 10)
            except asyncio.CancelledError:
                raise
            except Exception:
                pass
            await asyncio.sleep(2)

    async def peer_url(self, instance_id: str) -> str | None:
        try:
            async with asyncio.timeout(self.settings.redis_timeout):
                url = await self.redis.hget(self.instance_key(instance_id), "url")
        except Exception:
            return None
        return url.decode() if url else None

    # -- sessions -------------------------------------------------------------------------------
    async def join_rooms(self, sid: str, session) -> None:
        rooms = [f"session:{session.id}", f"thread:{session.thread_id}"]
        if session.user is not None:
            rooms.append(f"user:{session.user.identifier}")
        for room in rooms:
            await self.sio.enter_room(sid, room)

    async def on_session_ready(self, session) -> None:
        """Extension point for the worker outbox (delivered on reconnect)."""
        await self.delivery.on_session_ready(session)

    def transport_open(self, sid: str) -> bool:
        """The Engine.IO transport under a Socket.IO sid (connected or still handshaking) is open."""
        eio_sid = self.sio.manager.eio_sid_from_sid(sid, "/")
        sock = self.sio.eio.sockets.get(eio_sid) if eio_sid else None
        return sock is not None and not sock.closed

    async def drop_transport(self, sid: str) -> None:
        """Close a socket's Engine.IO transport without a Socket.IO verdict (no CONNECT_ERROR, no
        DISCONNECT): to the browser this is a lost connection, so it reconnects by itself with
        backoff — exactly what a handshake that cannot be decided yet needs."""
        eio_sid = self.sio.manager.eio_sid_from_sid(sid, "/")
        sock = self.sio.eio.sockets.get(eio_sid) if eio_sid else None
        if sock is not None and not sock.closed:
            await sock.close(wait=False, abort=True)
            await sock.queue.put(None)  # ends the websocket writer, which closes the websocket

    def is_local(self, session_id: str) -> bool:
        from chainlit.session import WebsocketSession

        return WebsocketSession.get_by_id(session_id) is not None

    def socket_connected(self, session) -> bool:
        """The session's socket is connected to this instance right now (not closed or closing)."""
        return bool(getattr(session, "socket_id", None)) and self.sio is not None and \
            bool(self.sio.manager.is_connected(session.socket_id, "/"))

    # -- graceful drain (SIGTERM) ---------------------------------------------------------------
    async def drain(self, seconds: float) -> None:
        """Leave without losing anyone: fail readiness now, let in-flight replies finish (up to
        ``seconds``), write every session to Redis; then the server shuts down and clients reconnect
        by themselves — through the balancer, to a peer that restores them."""
        from chainlit.session import ws_sessions_id

        self.draining = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        log.info("draining: readiness off, %d sessions, waiting up to %ss for in-flight work",
                 len(ws_sessions_id), seconds)
        while loop.time() < deadline and self.hooks.busy():
            await asyncio.sleep(0.1)
        # From here on a message that races in is not started (its client re-sends it after the
        # reconnect), so no reply can be half-done when the sockets close.
        self.closing = True
        settle = loop.time() + 2.0
        while loop.time() < min(deadline, settle) and self.hooks.busy():
            await asyncio.sleep(0.05)
        if self.hooks.busy():
            log.warning("drain timeout: %d sessions still busy; their replies are cut short",
                        self.hooks.busy())
        for session in list(ws_sessions_id.values()):
            await self.hooks.save(session)
        sockets = len(self.manager.rooms.get("/", {}).get(None, {}))
        metrics.DRAINED.inc(sockets)
        # uvicorn's shutdown, which follows, closes the websockets with 1012 ("service restart"):
        # to every Socket.IO client that is a lost transport, so it reconnects, through the
        # balancer, to a peer. (A Socket.IO-level disconnect would tell clients *not* to reconnect.)
        log.info("drained: %d sockets handed over", sockets)

    # -- health ---------------------------------------------------------------------------------
    def readiness(self) -> tuple[bool, dict]:
        lag = time.monotonic() - self.manager.listener_alive_at if self.manager.listener_alive_at else None
        if lag is not None:
            metrics.LISTENER_LAG.set(lag)
        checks = {
            "redis": self.manager.redis_ok,
            "listener": self.manager.listener_alive(),
            "draining": self.draining,
        }
        return (checks["redis"] and checks["listener"] and not self.draining), checks

    def update_gauges(self) -> None:
        from chainlit.chat_context import chat_contexts
        from chainlit.session import ws_sessions_id, ws_sessions_sid
        from chainlit.user_session import user_sessions

        metrics.SESSIONS.set(len(ws_sessions_id))
        metrics.SOCKETS.set(len(self.manager.rooms.get("/", {}).get(None, {})))
        tracked = {**self.hooks.tracked(), **self.delivery.tracked(), "rooms_registered": len(self.manager._registered),
                   "chainlit_sessions": len(ws_sessions_id), "chainlit_sockets": len(ws_sessions_sid),
                   "chainlit_user_sessions": len(user_sessions), "chainlit_chat_contexts": len(chat_contexts)}
        for name, size in tracked.items():
            metrics.TRACKED.labels(name).set(size)
