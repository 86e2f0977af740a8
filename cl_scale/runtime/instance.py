"""One running instance: builds the parts and wires them to Chainlit's server (the composition root).

Redis client, keyspace, session store, local-first Socket.IO manager, session sync, Chainlit hooks,
worker delivery and janitor are created here and handed to each other; none of them looks the
others up. Lifecycle: ``install`` (before the first connection), ``start``/``stop`` (ASGI
lifespan), ``drain`` (SIGTERM).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid

import redis.exceptions

from cl_scale.runtime import metrics
from cl_scale.runtime.chainlit.codec import ChainlitState
from cl_scale.runtime.chainlit.hooks import ChainlitHooks
from cl_scale.runtime.chainlit.render import ChainlitRenderer
from cl_scale.runtime.delivery import Delivery
from cl_scale.runtime.journal import Journal
from cl_scale.runtime.manager import LocalFirstRedisManager
from cl_scale.runtime.outbox_janitor import OutboxJanitor
from cl_scale.runtime.session_store import SessionStore
from cl_scale.runtime.session_sync import SessionSync
from cl_scale.runtime.settings import RuntimeSettings
from cl_scale.runtime.uploads import UploadStore
from cl_scale.wire.connect import connect
from cl_scale.wire.keyspace import REQUESTS_MAXLEN, Keyspace, room_name
from cl_scale.wire.redis_url import redacted

log = logging.getLogger("cl_scale.instance")

REGISTRATION_TTL = 10  # seconds an instance's address stays advertised without a refresh
REGISTRATION_EVERY = 2


class Instance:
    """:param settings: the runtime settings (the only reader of the environment).
    :param sio: Chainlit's ``socketio.AsyncServer``.
    :param restore_callbacks: ``@cl_scale.on_session_restore`` functions.
    """

    def __init__(self, settings: RuntimeSettings, sio, restore_callbacks: list):
        self.settings, self.sio = settings, sio
        self.keys = Keyspace(settings.prefix)
        self.redis = connect(settings.redis_url, timeout=settings.redis_timeout)
        self.run = uuid.uuid4().hex[:12]  # this process: restarted under the same name, a new owner
        self.store = SessionStore(self.redis, self.keys, instance_id=settings.instance_id, run=self.run,
                                  ttl=settings.session_timeout, timeout=settings.redis_timeout)
        self.manager = LocalFirstRedisManager(settings.redis_url, keyspace=self.keys, instance_id=settings.instance_id,
                                              redis_timeout=settings.redis_timeout,
                                              heartbeat_seconds=settings.heartbeat_seconds)
        self.state = ChainlitState(sio)
        self.sync = SessionSync(self.store, self.state, on_lost=lambda session: self.hooks.forget(session))
        self.renderer = ChainlitRenderer(self.state)
        self.delivery = Delivery(self.redis, self.keys, self.renderer, self.sync, settings,
                                 on_taken=lambda session_id: self.hooks.taken(session_id))
        self.janitor = OutboxJanitor(self.redis, self.keys, instance_id=settings.instance_id,
                                     outbox_ttl=settings.worker_outbox_ttl)
        self.hooks = ChainlitHooks(sio, state=self.state, store=self.store, sync=self.sync, join_rooms=self.join_rooms,
                                   on_ready=self.delivery.on_session_ready, closing=lambda: self.closing,
                                   restore_callbacks=restore_callbacks,
                                   on_request=self.publish_request if settings.publish_requests else None,
                                   uploads=UploadStore(settings.uploads, self.redis, self.keys,
                                                       shared_dir=settings.uploads_dir,
                                                       max_bytes=settings.uploads_max_mb * 1024 * 1024,
                                                       ttl=settings.session_timeout or 3600),
                                   journal=Journal(self.redis, self.keys, f"{settings.instance_id}/{self.run}",
                                                   ttl=settings.session_timeout or 3600) if settings.journal else None)
        self.hooks.release_callbacks += [self.renderer.release, self.delivery.release]
        self.draining = False  # readiness off; still serving its clients
        self.closing = False  # drained: new messages are refused (clients re-send them elsewhere)
        self.started_at = time.time()
        self._tasks: list[asyncio.Task] = []
        self._gateway = None  # the worker HTTP gateway app (/cl-scale/v1), built on first use
        self._grpc = None  # the gRPC gateway server (CL_SCALE_GRPC_PORT)

    def gateway_app(self):
        """The worker gateway of this instance (HTTP app; its ``state.gateway`` serves gRPC too)."""
        if self._gateway is None:
            from cl_scale.gateway.app import from_settings

            self._gateway = from_settings(self.settings)
        return self._gateway

    async def publish_request(self, session, payload) -> None:
        """Append a user's message to the requests stream (``CL_SCALE_PUBLISH_REQUESTS``). The
        identity written is the session's own (workers' scopes are checked against it); a Redis
        error is logged, never in the user's way."""
        msg = (payload or {}).get("message") or {}
        user = getattr(session, "user", None)
        fields = {"session": session.id, "thread": getattr(session, "thread_id", None) or "",
                  "user": (getattr(user, "identifier", None) or "") if user else "",
                  "message_id": str(msg.get("id") or ""), "text": str(msg.get("output") or ""),
                  "author": str(msg.get("name") or "User"), "at": f"{time.time():.3f}"}
        try:
            await self.redis.xadd(self.keys.requests, fields, maxlen=REQUESTS_MAXLEN, approximate=True)
        except (redis.exceptions.RedisError, OSError) as exc:
            log.warning("session %s: user message not added to the requests stream (%s)", session.id,
                        exc.__class__.__name__)

    # -- wiring -------------------------------------------------------------------------------
    def install(self) -> None:
        """Must run after the app module is loaded and before the first connection."""
        self.sio.manager = self.manager
        self.manager.set_server(self.sio)
        self.hooks.install()

    async def start(self) -> None:
        # The manager is normally initialised lazily on the first connection; readiness needs the
        # listener running before that.
        self.sio.manager_initialized = True
        self.manager.initialize()
        self._tasks.append(asyncio.get_running_loop().create_task(self._register_loop()))
        self._tasks.append(asyncio.get_running_loop().create_task(self._workers_loop()))
        await self.delivery.start(self.janitor.run())
        if self.settings.grpc_port:
            from cl_scale.gateway.grpc_gateway import start_server

            self._grpc = await start_server(self.gateway_app().state.gateway, self.settings.host,
                                            self.settings.grpc_port)
            log.info("gRPC gateway on %s:%d", self.settings.host, self.settings.grpc_port)
        log.info("instance %s up (redis %s, advertise %s)", self.settings.instance_id,
                 redacted(self.settings.redis_url), self.settings.advertise_url)

    async def stop(self) -> None:
        await self.hooks.journal_flush()  # messages that raced the close: journaled for the next owner
        for task in self._tasks:
            task.cancel()
        if self._grpc is not None:
            await self._grpc.stop(grace=2)
        await self.delivery.stop()
        await self.manager.close()
        me = self.settings.instance_id
        try:
            async with asyncio.timeout(self.settings.redis_timeout):
                pipe = self.redis.pipeline(transaction=False)
                pipe.delete(self.keys.instance(me))
                for registry in [self.keys.live_instances, *map(self.keys.key_accepted_by, self.delivery.keys)]:
                    pipe.zrem(registry, me)
                await pipe.execute()
        except Exception:
            pass

    async def _workers_loop(self, every: float = 5.0) -> None:
        """Export the worker registry on ``/metrics`` (every instance reads the same registry: scrape
        any one of them, or aggregate by ``worker``)."""
        from cl_scale.worker import registry

        shown: set[tuple[str, str]] = set()
        gauges = (metrics.WORKER_UP, metrics.WORKER_AGE, metrics.WORKER_SENT, metrics.WORKER_ERRORS, metrics.WORKER_RATE)
        while True:
            try:
                async with asyncio.timeout(self.settings.redis_timeout):
                    entries = registry.read(await self.redis.hgetall(self.keys.workers))
                now = set()
                for e in entries:
                    labels = (e["id"], str(e.get("kind", "")))
                    now.add(labels)
                    metrics.WORKER_UP.labels(*labels).set(1 if e["state"] == "healthy" else 0)
                    metrics.WORKER_AGE.labels(*labels).set(e["age"])
                    metrics.WORKER_SENT.labels(*labels).set(e.get("sent") or 0)
                    metrics.WORKER_ERRORS.labels(*labels).set(e.get("errors") or 0)
                    metrics.WORKER_RATE.labels(*labels).set(e.get("rate") or 0)
                for labels in shown - now:  # gone from the registry (stopped cleanly)
                    for gauge in gauges:
                        gauge.remove(*labels)
                shown = now
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("worker registry not exported (%s)", exc.__class__.__name__)
            await asyncio.sleep(every)

    async def _register_loop(self) -> None:
        """Advertise this instance with a short TTL: its address and pid (peers forward HTTP to live
        owners only), its liveness, and the worker key ids it accepts (senders check them)."""
        me = self.settings.instance_id
        key = self.keys.instance(me)
        while True:
            try:
                expires = time.time() + REGISTRATION_TTL
                async with asyncio.timeout(self.settings.redis_timeout):
                    pipe = self.redis.pipeline(transaction=False)
                    pipe.hset(key, mapping={"url": self.settings.advertise_url or "", "pid": os.getpid(),
                                            "started": int(self.started_at)})
                    pipe.expire(key, REGISTRATION_TTL)
                    for registry in [self.keys.live_instances, *map(self.keys.key_accepted_by, self.delivery.keys)]:
                        pipe.zadd(registry, {me: expires})
                        pipe.zremrangebyscore(registry, "-inf", time.time())
                        pipe.expire(registry, REGISTRATION_TTL * 3)
                    await pipe.execute()
            except asyncio.CancelledError:
                raise
            except Exception:
                pass
            await asyncio.sleep(REGISTRATION_EVERY)

    async def peer_url(self, instance_id: str) -> str | None:
        try:
            async with asyncio.timeout(self.settings.redis_timeout):
                url = await self.redis.hget(self.keys.instance(instance_id), "url")
        except Exception:
            return None
        return url.decode() if url else None

    # -- sessions -------------------------------------------------------------------------------
    async def join_rooms(self, sid: str, session) -> None:
        user, thread = self.state.identity(session)
        rooms = [room_name("session", session.id), room_name("thread", thread)]
        if user is not None:
            rooms.append(room_name("user", user))
        for room in rooms:
            await self.sio.enter_room(sid, room)

    def is_local(self, session_id: str) -> bool:
        return self.state.session(session_id) is not None

    # -- graceful drain (SIGTERM) ---------------------------------------------------------------
    async def drain(self, seconds: float) -> None:
        """Leave without losing anyone: fail readiness now, let in-flight replies finish (up to
        ``seconds``), write every session to Redis; then the server shuts down and clients reconnect
        by themselves — through the balancer, to a peer that restores them."""
        self.draining = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        log.info("draining: readiness off, %d sessions, waiting up to %ss for in-flight work",
                 len(self.state.sessions()), seconds)
        while loop.time() < deadline and self.hooks.busy():
            await asyncio.sleep(0.1)
        # From here on a message that races in is not started (its client re-sends it after the
        # reconnect), so no reply can be half-done when the sockets close.
        self.closing = True
        settle = loop.time() + 2.0
        while loop.time() < min(deadline, settle) and self.hooks.busy():
            await asyncio.sleep(0.05)
        if self.hooks.busy():
            log.warning("drain timeout: %d sessions still busy; their replies are cut short", self.hooks.busy())
        for session in self.state.sessions():
            await self.sync.save(session)
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
        metrics.SESSIONS.set(len(self.state.sessions()))
        metrics.SOCKETS.set(len(self.manager.rooms.get("/", {}).get(None, {})))
        tracked = {**self.sync.tracked(), **self.hooks.tracked(), **self.renderer.tracked(),
                   **self.delivery.tracked(), **self.manager.tracked(), **self.state.tracked()}
        for name, size in tracked.items():
            metrics.TRACKED.labels(name).set(size)
