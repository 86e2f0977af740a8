"""Dead-letter worker entries that waited in an outbox past its TTL (the session stayed offline, or
never existed). One instance at a time sweeps (a short lock), from the outbox index's oldest end."""

from __future__ import annotations

import asyncio
import logging
import time

from cl_scale.runtime import metrics
from cl_scale.wire import dead_letters
from cl_scale.wire.keyspace import GROUP, Keyspace

log = logging.getLogger("cl_scale.delivery")

EVERY = 2.0
SESSIONS_PER_ROUND = 100


class OutboxJanitor:
    """:param outbox_ttl: seconds an entry may wait for its session."""

    def __init__(self, redis, keyspace: Keyspace, *, instance_id: str, outbox_ttl: float):
        self.redis, self.ks, self.instance_id, self.outbox_ttl = redis, keyspace, instance_id, outbox_ttl

    async def run(self) -> None:
        while True:
            await asyncio.sleep(EVERY)
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("outbox janitor failed: %s", exc.__class__.__name__)

    async def sweep(self) -> None:
        if not await self.redis.set(self.ks.janitor_lock, self.instance_id, nx=True, ex=max(1, int(EVERY))):
            return
        index = self.ks.outbox_index
        cutoff = time.time() - self.outbox_ttl
        stale = await self.redis.zrangebyscore(index, "-inf", cutoff, start=0, num=SESSIONS_PER_ROUND)
        metrics.OUTBOX_DEPTH.set(await self.redis.zcard(index))
        for raw_sid in stale:
            await self._expire(raw_sid.decode(), cutoff)

    async def _expire(self, sid: str, cutoff: float) -> None:
        key = self.ks.outbox(sid)
        entries = await self.redis.xrange(key, count=1000)
        old = [(eid, f) for eid, f in entries if int(eid.split(b"-")[0]) / 1000 < cutoff]
        known = await self.redis.exists(self.ks.session(sid))
        code = "expired" if known else "unknown_session"
        reason = (f"expired: session offline past the outbox TTL ({self.outbox_ttl:.0f}s)" if known
                  else f"unknown session after the outbox TTL ({self.outbox_ttl:.0f}s)")
        pipe = self.redis.pipeline(transaction=False)
        for _, raw in old:
            await dead_letters.add(pipe, self.ks.dead_letters, kid=raw.get(b"kid", b""), body=raw.get(b"body", b""),
                                   sig=raw.get(b"sig", b""), code=code, reason=reason, session=sid)
        if old:
            pipe.xack(key, GROUP, *[e for e, _ in old])
            pipe.xdel(key, *[e for e, _ in old])
        rest = entries[len(old):]
        if rest:
            pipe.zadd(self.ks.outbox_index, {sid: int(rest[0][0].split(b"-")[0]) / 1000})
        else:
            pipe.zrem(self.ks.outbox_index, sid)
        await pipe.execute()
        if old:
            metrics.WORKER_MESSAGES.labels("dead_letter").inc(len(old))
            log.warning("session %s: %d worker messages dead-lettered (%s)", sid, len(old), reason)
