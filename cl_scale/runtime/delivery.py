"""Worker delivery inside an instance: render each local session's outbox through Chainlit.

Publishers append signed entries to a session's outbox stream (``wire.scripts.OUTBOX_APPEND``) and
wake the session's owner on its own channel. Fast path: when the outbox was empty the wake-up carries
the entry, and the owner renders it without reading the stream. Otherwise the owner reads its stream
with one consumer group (``keyspace.GROUP``/``CONSUMER``): entries left pending by a dead owner are
read first (``0``), then new ones (``>``), so order holds across a move. Each entry is verified
(signature, key scope against the session itself, age), its seen mark checked in Redis from the id
*inside the verified body* (on every path: a captured entry appended again is a replay), rendered
(``runtime.chainlit.render``), then acked, marked and deleted in one Lua call (``SETTLE``).

Exactly-once as the user sees it: a seen id is dead-lettered as ``duplicate``; the few entries a
SIGKILLed owner emitted but had not marked yet, or a batch during which the socket closed, are
emitted again with the same message id, which Chainlit's UI upserts instead of showing twice.
Refused entries and repeated failures go to the dead-letter stream with a code and a reason.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time

import redis.exceptions

from cl_scale.runtime import metrics
from cl_scale.wire import messages as m
from cl_scale.wire import scripts
from cl_scale.wire.connect import connect
from cl_scale.wire.keyspace import CONSUMER, GROUP, Keyspace

log = logging.getLogger("cl_scale.delivery")

BATCH = 200
SWEEP_EVERY = 1.0
#: Sessions whose outbox one sweep tick looks at, round robin (5,000 local sessions: a full pass every
#: 25 s). The sweep is a safety net; an XLEN for every session every second was half of an idle
#: instance's CPU (measured with 1,500 idle clients).
SWEEP_SLICE = 200
#: Seconds a session that just became ready here is looked at on every tick: a wake-up published while
#: it moved went to its previous owner.
SWEEP_RECENT = 5.0


class Delivery:
    """Renders worker entries into the sessions this instance holds.

    :param redis: the instance's Redis client (commands with a timeout).
    :param keyspace: key names.
    :param renderer: the Chainlit side (``runtime.chainlit.render.ChainlitRenderer``): local sessions,
                     their identity and connection, ``render(session, body)``.
    :param sync: ``SessionSync``: a batch is saved once (its entries stay pending until then).
    :param settings: ``RuntimeSettings`` (keys, limits, instance id, Redis URL for the listener).
    """

    def __init__(self, redis, keyspace: Keyspace, renderer, sync, settings, on_taken=None):
        """:param on_taken: ``(session id) -> None``, for a takeover notice on this instance's wake
            channel (``wire.messages.taken_notice``): a peer claimed a session held here."""
        self.redis, self.ks, self.renderer, self.sync, self.settings = redis, keyspace, renderer, sync, settings
        self.on_taken = on_taken or (lambda session_id: None)
        self.keys = m.parse_keys(settings.worker_keys)
        self.outbox_ttl = settings.worker_outbox_ttl
        self.max_age = settings.worker_max_age or settings.worker_outbox_ttl
        self.max_attempts, self.max_bytes = settings.worker_max_attempts, settings.worker_max_bytes
        self._settle = redis.register_script(scripts.SETTLE)
        self._reading: dict[str, asyncio.Task] = {}  # session id -> the task delivering its outbox
        self._again: set[str] = set()  # sessions whose outbox got more while a task was reading it
        self._tasks: list[asyncio.Task] = []
        self._rotation: collections.deque[str] = collections.deque()  # sessions the sweep has still to look at
        self._recent: dict[str, float] = {}  # session id -> until when every tick looks at it
        self._sweep_all = False  # the wake-up listener was (re)subscribed: wake-ups may have been missed

    # -- lifecycle ----------------------------------------------------------------------------------
    async def start(self, *extra) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._wake_loop()), loop.create_task(self._sweep_loop()),
                       *(loop.create_task(coro) for coro in extra)]
        log.info("worker delivery on: %d key(s) [%s]", len(self.keys), ", ".join(self.keys))

    async def stop(self) -> None:
        for task in [*self._tasks, *self._reading.values()]:
            task.cancel()

    def release(self, session_id: str) -> None:
        """The session left this process."""
        self._again.discard(session_id)
        self._recent.pop(session_id, None)

    def tracked(self) -> dict[str, int]:
        return {"delivery_reading": len(self._reading), "delivery_again": len(self._again),
                "delivery_recent": len(self._recent)}

    # -- triggers -------------------------------------------------------------------------------------
    async def on_session_ready(self, session) -> None:
        """Index the session by user and thread (fan-out targets), then deliver what waited for it."""
        user, thread = self.renderer.identity(session)
        ttl = self.settings.session_timeout
        try:
            async with asyncio.timeout(self.settings.redis_timeout):
                pipe = self.redis.pipeline(transaction=False)
                for index in ([self.ks.user_sessions(user)] if user else []) + (
                        [self.ks.thread_sessions(thread)] if thread else []):
                    pipe.sadd(index, session.id)
                    pipe.expire(index, ttl)
                await pipe.execute()
        except Exception as exc:
            log.warning("session %s: user/thread index not written: %s", session.id, exc.__class__.__name__)
        self._recent[session.id] = time.monotonic() + SWEEP_RECENT
        self.kick(session.id)

    def kick(self, session_id: str, entry: tuple | None = None) -> None:
        """Deliver a session's outbox; ``entry`` (from the wake-up) is rendered first, without a read.
        While a task reads the outbox, it is only told to read once more: the entry is in the stream."""
        task = self._reading.get(session_id)
        if task is not None and not task.done():
            self._again.add(session_id)
            return
        task = asyncio.get_running_loop().create_task(self._deliver(session_id, entry))
        self._reading[session_id] = task
        task.add_done_callback(lambda _t, s=session_id: self._reading.pop(s, None)
                               if self._reading.get(s) is _t else None)

    async def _wake_loop(self) -> None:
        """Publishers wake the owner of the session on the owner's own channel."""
        delay = 0.1
        while True:
            client = connect(self.settings.redis_url, timeout=None)
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.ks.wake_channel(self.settings.instance_id))
                self._sweep_all = True  # what was published while the listener was away
                delay = 0.1
                async for message in pubsub.listen():
                    taken = m.parse_taken(message["data"])
                    if taken is not None:
                        self.on_taken(taken)
                        continue
                    sid, entry = m.parse_wake(message["data"])
                    if self.renderer.session(sid) is not None:
                        self.kick(sid, entry)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("wake-up listener lost (%s); retrying", exc.__class__.__name__)
            finally:
                try:
                    await pubsub.aclose()
                    await client.aclose()
                except Exception:
                    pass
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def _sweep_loop(self) -> None:
        """Safety net for wake-ups that went astray: every tick, the outboxes of the sessions that
        just became ready here and the next ``SWEEP_SLICE`` local sessions in turn; every local
        session after the wake-up listener (re)subscribed."""
        while True:
            await asyncio.sleep(SWEEP_EVERY)
            try:
                await self._sweep(self._sweep_ids())
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("outbox sweep failed: %s", exc.__class__.__name__)

    def _sweep_ids(self) -> list[str]:
        now = time.monotonic()
        self._recent = {sid: until for sid, until in self._recent.items() if until > now}
        if self._sweep_all:
            self._sweep_all = False
            self._rotation.clear()
            return self.renderer.session_ids()
        if not self._rotation:
            self._rotation.extend(self.renderer.session_ids())
        picked = [self._rotation.popleft() for _ in range(min(SWEEP_SLICE, len(self._rotation)))]
        return list(dict.fromkeys([*self._recent, *picked]))

    async def _sweep(self, sids: list[str]) -> None:
        for i in range(0, len(sids), 1000):
            chunk = [sid for sid in sids[i:i + 1000] if self.renderer.session(sid) is not None]
            if not chunk:
                continue
            async with asyncio.timeout(self.settings.redis_timeout):
                pipe = self.redis.pipeline(transaction=False)
                for sid in chunk:
                    pipe.xlen(self.ks.outbox(sid))
                lengths = await pipe.execute()
            for sid, n in zip(chunk, lengths):
                if n:
                    self.kick(sid)

    # -- reading an outbox --------------------------------------------------------------------------
    async def _deliver(self, session_id: str, entry: tuple | None = None) -> None:
        delay = 0.1
        while True:
            self._again.discard(session_id)
            session = self.renderer.session(session_id)
            if session is None or not self.renderer.connected(session):
                return
            self.renderer.enter(session)
            if entry is not None:  # fast path: the wake-up carried the only entry of the outbox
                entries, entry = [entry], None
                if await self.process(session, entries) and session_id not in self._again:
                    return
                continue
            try:
                owner, entries = await self._read(session_id)
            except redis.exceptions.ResponseError:
                return  # no stream / group yet: nothing was ever published here
            except Exception as exc:
                log.warning("session %s: outbox read failed: %s", session_id, exc.__class__.__name__)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            if owner != self.settings.instance_id:
                return  # a peer holds it: the owner delivers (what we just read stays pending for it)
            if not entries:
                if session_id in self._again:
                    continue
                return
            if await self.process(session, entries):
                delay = 0.1
            else:
                await asyncio.sleep(delay)  # a render failed: retry the same entry, in order, later
                delay = min(delay * 2, 5.0)

    async def _read(self, session_id: str) -> tuple[str | None, list]:
        """One round trip: the owner, entries a previous owner left pending (``0``), then new ones."""
        key = self.ks.outbox(session_id)
        async with asyncio.timeout(self.settings.redis_timeout):
            pipe = self.redis.pipeline(transaction=False)
            pipe.hget(self.ks.session(session_id), "owner")
            pipe.xreadgroup(GROUP, CONSUMER, {key: "0"}, count=BATCH)
            pipe.xreadgroup(GROUP, CONSUMER, {key: ">"}, count=BATCH)
            owner, pending, new = await pipe.execute(raise_on_error=False)
        for result in (owner, pending, new):
            if isinstance(result, Exception):
                raise result
        entries = []
        for reply in (pending, new):
            if reply:
                entries += [(eid, f) for eid, f in reply[0][1] if f]  # deleted-while-pending: empty
        return (owner.decode() if owner else None), entries

    async def process(self, session, entries) -> bool:
        """Render a batch in order; False when a render failed (retried later, in order)."""
        try:
            with self.sync.batch(session.id):
                return await self._process(session, entries)
        except Exception:
            log.exception("session %s: delivery round failed; retrying", session.id)
            return False

    def _check(self, session, entries) -> list[tuple]:
        """Verify each entry: (entry id, fields, seen key, body or None, Rejected or None)."""
        user, thread = self.renderer.identity(session)
        checked = []
        for eid, fields in entries:
            try:
                body, key = m.verify(fields, self.keys, session.id, max_age=self.max_age, max_bytes=self.max_bytes)
                # Scope against the session itself (restored from Redis), never the body's target.
                if not key.allows(session.id, user, thread):
                    raise m.Rejected("out_of_scope", f"key {key.kid!r} is not allowed to reach this session")
                checked.append((eid, fields, self.ks.seen(session.id, body.eid), body, None))
            except Exception as exc:  # Rejected, or anything a hostile entry might trigger
                rejected = exc if isinstance(exc, m.Rejected) else m.Rejected(
                    "malformed", f"malformed: {exc.__class__.__name__}")
                checked.append((eid, fields, None, None, rejected))
        return checked

    async def _seen(self, seen_keys: list[str]) -> set[str]:
        async with asyncio.timeout(self.settings.redis_timeout):
            pipe = self.redis.pipeline(transaction=False)
            for k in seen_keys:
                pipe.exists(k)
            return {k for k, found in zip(seen_keys, await pipe.execute()) if found}

    async def _process(self, session, entries) -> bool:
        sid = session.id
        checked = self._check(session, entries)
        try:
            seen = await self._seen([k for _, _, k, _, _ in checked if k])
        except Exception as exc:
            log.warning("session %s: dedupe lookup failed: %s", sid, exc.__class__.__name__)
            return False
        in_context = self.renderer.context_ids(sid)
        handled, delivered, rendered, dead, ok = [], [], set(), [], True
        for eid, fields, seen_key, body, rejected in checked:
            if rejected is not None:
                dead.append((fields, rejected.code, str(rejected)))
                handled.append(eid)
                continue
            if seen_key in seen:  # rendered before (a replay), or twice in this batch
                metrics.WORKER_MESSAGES.labels("duplicate").inc()
                dead.append((fields, "duplicate", f"duplicate: entry {body.eid[:80]!r} was delivered before"))
                handled.append(eid)
                continue
            if body.kind in ("message", "stream_end") and body.mid in in_context:
                self.renderer.drop_from_context(sid, body.mid)
            try:
                await self.renderer.render(session, body)
            except Exception as exc:
                tries = await self._count_failure(sid, eid)
                log.warning("session %s: delivering %s failed (%d/%d): %s", sid, body.mid, tries,
                            self.max_attempts, exc.__class__.__name__)
                if tries >= self.max_attempts:
                    dead.append((fields, "delivery_failed",
                                 f"delivery failed {tries} times: {exc.__class__.__name__}: {str(exc)[:200]}"))
                    handled.append(eid)
                    continue
                ok = False
                break
            metrics.WORKER_MESSAGES.labels("delivered").inc()
            metrics.DELIVERY_SECONDS.observe(max(0.0, time.time() - body.ts))
            if body.kind in ("message", "stream_end"):
                in_context.add(body.mid)
            delivered.append(seen_key)
            seen.add(seen_key)
            rendered.add(eid)
            handled.append(eid)
        if delivered:
            await self.sync.save(session)  # the batch enters the stored chat context, then is acked
            if not self.renderer.connected(session):
                # The socket went away while the batch was rendered: what it emitted may never have
                # reached the browser. Those entries stay in the outbox; whoever holds the session
                # next renders them again, with the same ids (the UI upserts, the context dedupes).
                log.info("session %s disconnected during delivery: %d message(s) stay in its outbox",
                         sid, len(rendered))
                handled, delivered = [e for e in handled if e not in rendered], []
        await self._settle_batch(sid, handled, delivered, dead)
        return ok

    async def _count_failure(self, sid: str, eid) -> int:
        try:
            key = self.ks.attempts(sid)
            n = await self.redis.hincrby(key, eid, 1)
            await self.redis.expire(key, int(self.outbox_ttl) + 60)
            return n
        except Exception:
            return 1

    async def _settle_batch(self, sid: str, handled: list, delivered: list, dead: list) -> None:
        """Ack + delete handled entries, mark rendered ones seen, dead-letter rejects: one round trip."""
        if not handled:
            return
        keys, args = scripts.settle(self.ks, sid, handled, [k for k in delivered if k], dead,
                                    dedupe_ttl=int(max(self.max_age, self.outbox_ttl)) + 60)
        for attempt in range(3):
            try:
                async with asyncio.timeout(self.settings.redis_timeout):
                    await self._settle(keys=keys, args=args)
                break
            except Exception as exc:  # unsettled entries are re-read and skipped as seen / in context
                log.warning("session %s: ack failed (%s), attempt %d", sid, exc.__class__.__name__, attempt + 1)
                await asyncio.sleep(0.1 * 2 ** attempt)
        for _, _, reason in dead:
            metrics.WORKER_MESSAGES.labels("dead_letter").inc()
            log.warning("session %s: worker message dead-lettered: %s", sid, reason)
