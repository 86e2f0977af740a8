"""The bridge process: connect, move batches, acknowledge, report health; reconnect by itself.

``cl-scale bridge URL`` builds a ``Runner`` from ``WorkerSettings`` (Redis, keys) and
``BrokerSettings`` (the broker). Nothing it meets stops it: a bad message is refused into the
dead-letter stream and acknowledged; Redis errors retry the same batch unacknowledged with backoff;
a lost broker connection reconnects with backoff (the broker redelivers what was not acknowledged).

Health: ``/healthz`` (the loop runs), ``/readyz`` (broker and Redis answer) and ``/metrics`` on
``--health-port``; every few seconds a heartbeat (lag, counts, last message) in Redis
(the worker registry, ``Keyspace.workers``), which ``cl-scale status`` shows.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time

import redis.exceptions

from cl_scale.bridge import metrics
from cl_scale.bridge.core import Backpressure, Bridge, Incoming, Outcome, Refused
from cl_scale.bridge.settings import BrokerSettings
from cl_scale.worker import registry

log = logging.getLogger("cl_scale.bridge")

_REDIS_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError, TimeoutError)
HEARTBEAT_SECONDS = 5.0


def make_source(settings: BrokerSettings, client_id: str):
    if settings.kind == "kafka":
        from cl_scale.bridge.kafka import KafkaSource

        return KafkaSource(settings, client_id=client_id)
    from cl_scale.bridge.amqp import AmqpSource

    return AmqpSource(settings, client_id=client_id)


class Runner:
    """One bridge: the broker ``settings`` name (its source, ``make_source``) into ``bridge`` (outboxes).

    :param batch_size: at most this many messages per batch (one Redis round trip to append them).
    :param batch_seconds: how long to wait for a first message before checking health again.
    :param name: this bridge in ``cl-scale status`` (default: ``kind-hostname``).
    """

    def __init__(self, bridge: Bridge, settings: BrokerSettings, *, batch_size: int = 200,
                 batch_seconds: float = 0.05, name: str | None = None):
        self.bridge, self.settings = bridge, settings
        self.batch_size, self.batch_seconds = batch_size, batch_seconds
        self.name = name or f"{settings.kind}-{socket.gethostname()}"
        self.source = make_source(settings, client_id=self.name)
        self.connected = False
        self.redis_ok = False
        self.lag: int | None = None
        self.last_seen: float | None = None
        self.stopping = asyncio.Event()
        self.beat = registry.Beat("bridge", self.name, interval=HEARTBEAT_SECONDS)

    # -- main loop ---------------------------------------------------------------------------------
    async def run(self) -> None:
        beat = asyncio.create_task(self._heartbeat_loop())
        try:
            delay = 0.2
            while not self.stopping.is_set():
                try:
                    await self.source.connect()
                except Exception as exc:
                    log.warning("%s: cannot reach %s (%s); retrying in %.1fs", self.name, self.settings.shown,
                                exc.__class__.__name__, delay)
                    await self._sleep(delay)
                    delay = min(delay * 2, 10.0)
                    continue
                delay = 0.2
                self.connected = True
                metrics.CONNECTED.set(1)
                log.info("%s: consuming %s", self.name, self.settings.shown)
                try:
                    await self._consume()
                except Exception as exc:
                    if self.stopping.is_set():
                        break
                    log.warning("%s: broker connection lost (%s); reconnecting", self.name, exc.__class__.__name__)
                finally:
                    self.connected = False
                    metrics.CONNECTED.set(0)
                    await self.source.close()
        finally:
            beat.cancel()
            await asyncio.gather(beat, return_exceptions=True)
            await self._forget()

    async def _consume(self) -> None:
        while not self.stopping.is_set():
            batch = await self.source.batch(self.batch_size, self.batch_seconds)
            if not batch:
                continue
            if not await self._forward(batch):
                return  # stopping: leave the batch unacknowledged (the broker redelivers it)
            await self.source.ack(batch)
            metrics.BATCHES.inc()

    async def _forward(self, batch: list[Incoming]) -> bool:
        """Forward until it worked (True) or the bridge stops (False)."""
        delay = 0.02
        while not self.stopping.is_set():
            try:
                outcome = await self.bridge.forward(batch, wait=self._wait)
            except Backpressure:  # stopping while waiting for room: leave the batch on the broker
                continue
            except _REDIS_ERRORS as exc:
                self.redis_ok = False
                metrics.RETRIES.inc()
                log.warning("%s: Redis unreachable (%s): batch of %d kept, retrying in %.2fs", self.name,
                            exc.__class__.__name__, len(batch), delay)
                await self._sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            except Exception as exc:  # a bug some message triggers: find it, never redeliver forever
                if len(batch) > 1:
                    for item in batch:  # one by one, in order (duplicates of what went through drop by id)
                        if not await self._forward([item]):
                            return False
                    return True
                log.error("%s: forwarding one message failed (%s): dead-lettered as bridge_error", self.name,
                          exc.__class__.__name__, exc_info=True)
                outcome = Outcome(refused=[Refused(batch[0], "bridge_error",
                                                   f"bridge error: {exc.__class__.__name__}")])
                try:
                    await self.bridge.dead_letter(outcome.refused)
                except _REDIS_ERRORS:
                    await self._sleep(delay)
                    continue
                metrics.REFUSED.labels("bridge_error").inc()
            self.redis_ok = True
            if outcome.forwarded:
                self.last_seen = time.time()
                metrics.LAST_SEEN.set(self.last_seen)
            try:
                await self.source.copy_refused(outcome.refused)
            except Exception as exc:  # the letters are in Redis already; the broker copy is best effort
                log.warning("%s: could not copy %d refusals to %s (%s)", self.name, len(outcome.refused),
                            self.settings.dead_letters, exc.__class__.__name__)
            return True
        return False

    async def _wait(self, seconds: float) -> bool:
        await self._sleep(seconds)
        return not self.stopping.is_set()

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self.stopping.wait(), seconds)
        except TimeoutError:
            pass

    # -- health ------------------------------------------------------------------------------------
    async def ready(self) -> bool:
        if not self.connected or not await self.source.ping():
            return False
        try:
            async with asyncio.timeout(2):
                await self.bridge.pub.redis.ping()
            self.redis_ok = True
        except Exception:
            self.redis_ok = False
        return self.redis_ok

    def status(self) -> dict:
        """This bridge's registry entry (``worker.registry``): sent = forwarded, errors = refused."""
        self.beat.sent, self.beat.errors = _total(metrics.FORWARDED), _total(metrics.REFUSED)
        return self.beat.entry(broker=self.settings.kind, source=self.settings.shown, connected=self.connected,
                               lag=self.lag, forwarded=self.beat.sent, refused=self.beat.errors,
                               last_seen=self.last_seen, pid=os.getpid())

    async def _heartbeat_loop(self) -> None:
        while True:
            if self.connected:
                try:
                    self.lag = await self.source.lag()
                    if self.lag is not None:
                        metrics.LAG.set(self.lag)
                except Exception as exc:
                    log.debug("%s: lag unavailable (%s)", self.name, exc.__class__.__name__)
            try:
                await registry.write(self.bridge.pub.redis, self.bridge.pub.keys, self.status())
            except Exception as exc:
                log.debug("%s: heartbeat failed (%s)", self.name, exc.__class__.__name__)
            await asyncio.sleep(HEARTBEAT_SECONDS)

    async def _forget(self) -> None:
        try:
            await registry.forget(self.bridge.pub.redis, self.bridge.pub.keys, self.name)
        except Exception:
            pass


def _total(counter) -> int:
    """A counter's value, summed over its labels."""
    return int(sum(s.value for m in counter.collect() for s in m.samples if s.name.endswith("_total")))


async def serve_health(runner: Runner, host: str, port: int):
    """``/healthz``, ``/readyz``, ``/metrics`` (aiohttp); returns the runner to clean up."""
    from aiohttp import web
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    async def healthz(request):
        return web.json_response({"status": "ok", "name": runner.name})

    async def readyz(request):
        ok = await runner.ready()
        return web.json_response({"ready": ok, "broker": runner.connected, "redis": runner.redis_ok},
                                 status=200 if ok else 503)

    async def metrics_view(request):
        return web.Response(body=generate_latest(metrics.REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.add_routes([web.get("/healthz", healthz), web.get("/readyz", readyz), web.get("/metrics", metrics_view)])
    web_runner = web.AppRunner(app, access_log=None)
    await web_runner.setup()
    await web.TCPSite(web_runner, host, port).start()
    return web_runner
