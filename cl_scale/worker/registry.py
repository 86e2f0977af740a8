"""Who is sending: every worker-side process announces itself in Redis (``Keyspace.workers``).

Each entry is one JSON heartbeat under the worker's id: ``kind`` (``sdk``, ``gateway``,
``grpc-client``, ``http-client``, ``bridge``), ``version``, ``interval`` (seconds between beats),
``at`` (when written), ``sent`` and ``errors`` (totals so far), ``rate`` (messages per second since
the previous beat) and kind-specific fields (a bridge's broker, lag, connection). A worker silent for
longer than ``STALE_FACTOR`` times its own interval is *stale* (``read``); a worker that stops
cleanly removes its entry. SDK publishers beat by themselves (``Heartbeat``); workers behind a
gateway announce themselves through it (gRPC ``Announce``, HTTP ``POST /cl-scale/v1/workers/{id}``).
``cl-scale status`` lists the entries and the instances export them on ``/metrics``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import socket
import time
import uuid

from pydantic import BaseModel, ConfigDict, Field

from cl_scale import __version__
from cl_scale.wire.keyspace import Keyspace

log = logging.getLogger("cl_scale.worker")

KINDS = ("sdk", "gateway", "grpc-client", "http-client", "bridge", "autogen")
#: Default seconds between two heartbeats.
INTERVAL = 5.0
#: Stale after this many intervals without a beat (one late beat is not an outage).
STALE_FACTOR = 2.0
#: Worker ids: what may name a worker (its field in the registry, a label in /metrics).
WORKER_ID = re.compile(r"[A-Za-z0-9._:/@-]{1,128}")


def default_id(kind: str) -> str:
    """``kind-host-pid-xxxx``: unique per process, readable in ``cl-scale status``."""
    return f"{kind}-{socket.gethostname()[:40]}-{os.getpid()}-{uuid.uuid4().hex[:4]}"


class Beat:
    """A worker's running totals, turned into heartbeat entries (with the rate since the last one)."""

    def __init__(self, kind: str, worker_id: str, *, interval: float = INTERVAL, version: str = __version__):
        self.kind, self.id, self.interval, self.version = kind, worker_id, interval, version
        self.sent = self.errors = 0
        self._last: tuple[float, int] | None = None

    def entry(self, now: float | None = None, **detail) -> dict:
        now = time.time() if now is None else now
        rate = None
        if self._last is not None and now > self._last[0]:
            rate = round((self.sent - self._last[1]) / (now - self._last[0]), 2)
        self._last = (now, self.sent)
        return {"id": self.id, "kind": self.kind, "version": self.version, "interval": self.interval,
                "at": round(now, 3), "sent": self.sent, "errors": self.errors, "rate": rate, **detail}


async def write(redis, keys: Keyspace, entry: dict) -> None:
    await redis.hset(keys.workers, entry["id"], json.dumps(entry, separators=(",", ":")))


async def forget(redis, keys: Keyspace, worker_id: str) -> None:
    await redis.hdel(keys.workers, worker_id)


class Heartbeat:
    """Write ``beat``'s entry every interval until stopped; ``detail()`` adds kind-specific fields.
    Redis errors are logged at debug level and retried next beat (a heartbeat never fails a send)."""

    def __init__(self, redis, keys: Keyspace, beat: Beat, detail=None):
        self.redis, self.keys, self.beat, self.detail = redis, keys, beat, detail or dict
        self._task: asyncio.Task | None = None
        self._stopping: asyncio.Event | None = None

    def start(self) -> None:
        if self._task is None:
            self._stopping = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                await write(self.redis, self.keys, self.beat.entry(**self.detail()))
            except Exception as exc:
                log.debug("worker %s: heartbeat failed (%s)", self.beat.id, exc.__class__.__name__)
            try:
                await asyncio.wait_for(self._stopping.wait(), self.beat.interval)
            except TimeoutError:
                pass

    async def stop(self) -> None:
        """Stop beating and remove the entry (a clean stop is not a stale worker). A write in flight
        finishes first: a Redis command cancelled halfway can leave its connection unusable."""
        if self._task is None:
            return
        self._stopping.set()
        try:
            async with asyncio.timeout(5):
                await self._task
        except (TimeoutError, Exception):
            self._task.cancel()
        self._task = None
        try:
            await forget(self.redis, self.keys, self.beat.id)
        except Exception as exc:
            log.debug("worker %s: could not remove its entry (%s)", self.beat.id, exc.__class__.__name__)


class Announcement(BaseModel):
    """What a worker behind a gateway reports (gRPC ``Announce``, HTTP ``POST .../workers/{id}``)."""

    model_config = ConfigDict(extra="forbid")
    version: str = Field(default="", max_length=64)
    interval: float = Field(default=INTERVAL, ge=1, le=3600)
    sent: int = Field(default=0, ge=0)
    errors: int = Field(default=0, ge=0)


async def announce(redis, keys: Keyspace, token_id: str, worker_id: str, kind: str, info: Announcement) -> str:
    """Record a gateway client's heartbeat as ``<token id>/<worker id>`` (a worker can only speak for
    itself under its own token); its rate is computed from its previous entry. Returns the stored id."""
    if not WORKER_ID.fullmatch(worker_id or ""):
        raise ValueError("worker id: 1-128 of letters, digits and ._:/@-")
    stored = f"{token_id}/{worker_id}"
    now = time.time()
    rate = None
    try:
        previous = json.loads(await redis.hget(keys.workers, stored) or "null")
        if previous and now > float(previous["at"]):
            rate = round(max(0, info.sent - int(previous.get("sent", 0))) / (now - float(previous["at"])), 2)
    except (ValueError, KeyError, TypeError):
        pass
    await write(redis, keys, {"id": stored, "kind": kind, "version": info.version, "interval": info.interval,
                              "at": round(now, 3), "sent": info.sent, "errors": info.errors, "rate": rate})
    return stored


def read(raw: dict, now: float | None = None) -> list[dict]:
    """The registry (``HGETALL workers``) as entries sorted by id, each with ``age`` (seconds since
    its last beat) and ``state``: ``healthy``, or ``stale`` when silent past ``STALE_FACTOR`` x its
    interval. Unreadable entries are skipped."""
    now = time.time() if now is None else now
    out = []
    for field, value in raw.items():
        try:
            entry = json.loads(value)
            age = now - float(entry["at"])
            interval = float(entry.get("interval") or INTERVAL)
        except (ValueError, KeyError, TypeError):
            continue
        entry["id"] = field.decode(errors="replace") if isinstance(field, bytes) else str(field)
        entry["age"] = round(age, 1)
        entry["state"] = "stale" if age > STALE_FACTOR * interval else "healthy"
        out.append(entry)
    return sorted(out, key=lambda e: e["id"])
