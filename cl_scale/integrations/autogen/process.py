"""Processes on an AutoGen gRPC runtime that stay connected, and the cl-scale side of a group chat
(``cl-scale autogen``): the sink and the relay in one process.

Why ``stay_connected``: AutoGen's ``GrpcWorkerAgentRuntime`` (0.7) never reconnects — when the host
goes away its read loop ends, later publishes are dropped, and a stopped runtime cannot be started
again. ``stay_connected`` watches the connection and, when it ends, builds a new runtime and runs the
same ``setup`` (registrations, subscriptions) on it, so a restarted host or a network blip heals by
itself instead of leaving a process that looks alive and does nothing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import Awaitable, Callable

from cl_scale.integrations.autogen import compat
from cl_scale.integrations.autogen.messages import GROUP_TOPIC, SINK_TYPE, UI_TOPIC, serializers

log = logging.getLogger("cl_scale.autogen")

Setup = Callable[[object], Awaitable[None]]
#: How often a standby asks the host for the agent type another process holds (its take-over delay).
STANDBY_SECONDS = 0.5


class Connection:
    """The current runtime of a ``stay_connected`` loop (``runtime`` changes after a reconnect)."""

    def __init__(self):
        self.runtime = None
        self.connected = asyncio.Event()
        self.reconnects = 0
        #: the host answered but gave our agent type to another process: we wait to take over
        self.standby = False

    async def publish(self, message, topic) -> None:
        await self.connected.wait()
        await self.runtime.publish_message(message, topic)


async def stay_connected(host_address: str, setup: Setup, stopping: asyncio.Event,
                         connection: Connection | None = None, *, max_delay: float = 5.0) -> None:
    """Run ``setup(runtime)`` on a ``GrpcWorkerAgentRuntime`` connected to ``host_address`` until
    ``stopping`` is set; reconnect (new runtime, ``setup`` again) whenever the connection ends."""
    from autogen_ext.runtimes.grpc import GrpcWorkerAgentRuntime

    conn = connection or Connection()
    delay = 0.2
    while not stopping.is_set():
        runtime = GrpcWorkerAgentRuntime(host_address=host_address)
        runtime.add_message_serializer(serializers())
        try:
            await runtime.start()
            await setup(runtime)
        except Exception as exc:  # host not there yet, or it refused a registration
            taken = "already registered" in str(exc)
            if taken and not conn.standby:
                log.warning("AutoGen host %s: another process serves this agent type; standing by", host_address)
            elif not taken:
                log.warning("AutoGen host %s: cannot connect (%s); retrying in %.1fs", host_address,
                            exc.__class__.__name__, delay)
            conn.standby = taken
            await _stop(runtime)
            await _wait(stopping, STANDBY_SECONDS if taken else delay)
            delay = min(delay * 2, max_delay)
            continue
        delay = 0.2
        conn.standby = False
        conn.runtime = runtime
        conn.connected.set()
        log.info("AutoGen host %s: connected", host_address)
        lost = asyncio.ensure_future(compat.connection_lost(runtime))
        stop = asyncio.ensure_future(stopping.wait())
        await asyncio.wait({lost, stop}, return_when=asyncio.FIRST_COMPLETED)
        conn.connected.clear()
        stop.cancel()
        lost.cancel()
        await _stop(runtime)
        if not stopping.is_set():
            conn.reconnects += 1
            log.warning("AutoGen host %s: connection lost; reconnecting", host_address)


async def _stop(runtime) -> None:
    try:
        await asyncio.wait_for(runtime.stop(), 5)
    except Exception:  # noqa: BLE001 - a half-started or dead runtime: nothing more to release
        pass


async def _wait(event: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(event.wait(), seconds)
    except asyncio.TimeoutError:
        pass


def setup_sink(publisher, *, ui_topic: str = UI_TOPIC, **sink_options) -> Setup:
    """A ``setup`` registering ``ChainlitSink`` (type ``chainlit_sink``) on the UI topic."""
    from autogen_core import TypeSubscription

    from cl_scale.integrations.autogen.sink import ChainlitSink

    async def setup(runtime) -> None:
        await ChainlitSink.register(runtime, SINK_TYPE, lambda: ChainlitSink(publisher, **sink_options))
        await runtime.add_subscription(TypeSubscription(topic_type=ui_topic, agent_type=SINK_TYPE))

    return setup


async def serve_host(address: str, stopping: asyncio.Event | None = None) -> None:
    """``cl-scale autogen-host``: AutoGen's ``GrpcWorkerAgentRuntimeHost`` on ``address`` until SIGTERM/SIGINT
    (or ``stopping``). It keeps registrations in memory: after a restart, ``stay_connected`` processes
    register again by themselves."""
    import signal

    from autogen_ext.runtimes.grpc import GrpcWorkerAgentRuntimeHost

    stopping = stopping or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    host = GrpcWorkerAgentRuntimeHost(address=address)
    host.start()
    try:
        await stopping.wait()
    finally:
        await host.stop(grace=1)


async def serve(settings, host_address: str, *, ui_topic: str = UI_TOPIC, group_topic: str = GROUP_TOPIC,
                consumer_group: str = "autogen", name: str | None = None, health_port: int | None = None,
                health_host: str = "127.0.0.1", accept_seconds: float = 10.0,
                stopping: asyncio.Event | None = None) -> None:
    """``cl-scale autogen``: the sink and the relay, connected to the AutoGen host, until SIGTERM/SIGINT.

    :param settings: ``WorkerSettings`` (Redis URL, prefix, the worker key that signs).
    :param health_port: plain HTTP ``/healthz`` and ``/readyz`` (connected to the host and Redis).
    :param accept_seconds: a user message no manager accepted within this gets a notice in its chat.
    """
    import signal

    from cl_scale.integrations.autogen.relay import Relay, Unanswered
    from cl_scale.worker.publisher import Publisher

    stopping = stopping or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    key = settings.signing_key()
    name = name or f"autogen-{socket.gethostname()[:40]}-{os.getpid()}"
    pub = Publisher(settings.redis_url, key.kid, key.secret, prefix=settings.prefix, announce="autogen",
                    worker_id=name, outbox_max=settings.outbox_max, outbox_ttl=settings.outbox_ttl)
    conn = Connection()
    unanswered = Unanswered(pub, seconds=accept_seconds)
    relay = Relay(pub.redis, pub.keys, lambda: conn.publish, group=consumer_group, consumer=name,
                  group_topic=group_topic, unanswered=unanswered)
    # The consumer group first: a user message recorded before it exists would never be read (it is
    # created at the stream's end), and "connected" below tells operators and tests we are serving.
    await _until_redis(relay.ensure_group, stopping)
    web = await _health(health_host, health_port, conn, pub) if health_port else None
    sink = setup_sink(pub, ui_topic=ui_topic, unanswered=unanswered)
    tasks = [asyncio.ensure_future(stay_connected(host_address, sink, stopping, conn)),
             asyncio.ensure_future(relay.run(stopping, conn.connected)),
             asyncio.ensure_future(unanswered.run(stopping))]
    pub.start_heartbeat()
    try:
        await stopping.wait()
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if web is not None:
            await web.cleanup()
        await pub.aclose(timeout=5)


async def _until_redis(call, stopping: asyncio.Event) -> None:
    import redis.exceptions

    delay = 0.2
    while not stopping.is_set():
        try:
            return await call()
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
            log.warning("Redis unreachable (%s); retrying in %.1fs", exc.__class__.__name__, delay)
            await _wait(stopping, delay)
            delay = min(delay * 2, 5.0)


async def _health(host: str, port: int, conn: Connection, pub):
    from aiohttp import web

    async def healthz(request):
        return web.json_response({"status": "ok"})

    async def readyz(request):
        try:
            await asyncio.wait_for(pub.redis.ping(), 2)
            redis_ok = True
        except Exception:  # noqa: BLE001 - any failure is "not ready"
            redis_ok = False
        # a standby is ready too: it is what takes over (a rollout must not wait for the old pod to go)
        ok = redis_ok and (conn.connected.is_set() or conn.standby)
        return web.json_response({"ready": ok, "autogen": conn.connected.is_set(), "standby": conn.standby,
                                  "redis": redis_ok}, status=200 if ok else 503)

    app = web.Application()
    app.add_routes([web.get("/healthz", healthz), web.get("/readyz", readyz)])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
