"""Worker delivery inside an instance: drain each local session's outbox stream through Chainlit.

Publishers append signed entries to ``<prefix>:wk:s:{session}`` and wake the session's owner on its
own channel (``protocol.OUTBOX_APPEND``). Fast path: when the outbox was empty the wake-up carries the
entry, and the owner renders it without reading the stream. Otherwise the owner reads its stream with one consumer
group (consumer ``owner``): entries left pending by a dead owner are read first (``0``), then new ones
(``>``), so order holds across a move. Each entry is verified (signature, key scope, age), rendered
with ``Message.send()`` / ``stream_token`` inside the session's context (chat context, data layer),
then acked and deleted in one Lua call. Rendering is exactly-once as the user sees it: an entry whose
verified id is marked seen in Redis (on every path) is a replay or a repeat and is dead-lettered as a
duplicate; the few a SIGKILLed owner emitted but had not marked yet, or a batch during which
the socket closed, are emitted again with the same message id, which Chainlit's UI upserts
(``addMessage`` replaces a known id) instead of showing twice. Rejected entries and repeated failures
go to the dead-letter stream with a reason. A janitor dead-letters outboxes whose session stayed away
past the TTL.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time

import redis.exceptions

from cl_scale.runtime import metrics
from cl_scale.runtime.redis_conn import connect
from cl_scale.worker import protocol as p

log = logging.getLogger("cl_scale.delivery")

BATCH = 200
JANITOR_EVERY = 2.0
SWEEP_EVERY = 1.0
MAX_OPEN_STREAMS = 10_000  # worker streams open at once on one instance (oldest dropped past it)
# Settle one batch in one round trip. KEYS: stream, outbox index, dlq, then the seen keys to set.
# ARGV: session, dedupe ttl, now, n handled entry ids, the ids, then (kid, body, sig, code, reason) per dead
# letter. The index entry goes only if the stream is really empty (a publish may have raced in).
_SETTLE = """
local sid, ttl, now, n = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
if n > 0 then
  local ids = {unpack(ARGV, 5, 4 + n)}
  pcall(redis.call, 'XACK', KEYS[1], 'deliver', unpack(ids))
  redis.call('XDEL', KEYS[1], unpack(ids))
end
for k = 4, #KEYS do redis.call('SET', KEYS[k], 1, 'EX', ttl) end
for i = 5 + n, #ARGV, 5 do
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', 100000, '*', 'kid', ARGV[i], 'body', ARGV[i + 1],
             'sig', ARGV[i + 2], 'code', ARGV[i + 3], 'reason', ARGV[i + 4], 'session', sid, 'at', now)
end
if redis.call('XLEN', KEYS[1]) == 0 then redis.call('ZREM', KEYS[2], sid) end
return 1
"""


class Delivery:
    def __init__(self, runtime):
        self.rt = runtime
        s = runtime.settings
        self.keys = p.parse_keys(s.worker_keys)
        self.prefix = s.prefix
        self.redis = runtime.redis
        self.outbox_ttl, self.max_age = s.worker_outbox_ttl, s.worker_max_age or s.worker_outbox_ttl
        self.max_attempts, self.max_bytes = s.worker_max_attempts, s.worker_max_bytes
        self._settle_script = self.redis.register_script(_SETTLE)
        self._draining: dict[str, asyncio.Task] = {}
        self._again: set[str] = set()
        # (session, mid) -> Message being streamed, oldest first. Freed at stream_end, when the session
        # leaves this process, or (a worker that never ends its stream) past MAX_OPEN_STREAMS.
        self._streams: collections.OrderedDict[tuple[str, str], object] = collections.OrderedDict()
        runtime.hooks.release_callbacks.append(self.release)
        self._tasks: list[asyncio.Task] = []

    # -- lifecycle ----------------------------------------------------------------------------------
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._wake_loop()), loop.create_task(self._sweep_loop())]
        log.info("worker delivery on: %d key(s) [%s]", len(self.keys), ", ".join(self.keys))

    def release(self, session_id: str) -> None:
        """The session left this process: drop its open streams and pending re-reads."""
        for handle in [h for h in self._streams if h[0] == session_id]:
            del self._streams[handle]
        self._again.discard(session_id)

    def tracked(self) -> dict[str, int]:
        return {"delivery_streams": len(self._streams), "delivery_draining": len(self._draining),
                "delivery_again": len(self._again)}

    async def stop(self) -> None:
        for task in [*self._tasks, *self._draining.values()]:
            task.cancel()

    # -- triggers -------------------------------------------------------------------------------------
    async def on_session_ready(self, session) -> None:
        """Index the session by user and thread (fan-out targets), then drain what waited for it."""
        ttl = self.rt.settings.session_timeout
        try:
            async with asyncio.timeout(self.rt.settings.redis_timeout):
                pipe = self.redis.pipeline(transaction=False)
                if session.user is not None:
                    pipe.sadd(f"{self.prefix}:wk:user:{session.user.identifier}", session.id)
                    pipe.expire(f"{self.prefix}:wk:user:{session.user.identifier}", ttl)
                if session.thread_id:
                    pipe.sadd(f"{self.prefix}:wk:thread:{session.thread_id}", session.id)
                    pipe.expire(f"{self.prefix}:wk:thread:{session.thread_id}", ttl)
                await pipe.execute()
        except Exception as exc:
            log.warning("session %s: user/thread index not written: %s", session.id, exc)
        self.kick(session.id)

    def kick(self, session_id: str, entry: tuple | None = None) -> None:
        """Drain a session's outbox; ``entry`` (from the wake-up) is rendered first, without a read.
        While a drain runs, it is only told to read once more: the entry is in the stream too."""
        task = self._draining.get(session_id)
        if task is not None and not task.done():
            self._again.add(session_id)
            return
        task = asyncio.get_running_loop().create_task(self._drain(session_id, entry))
        self._draining[session_id] = task
        task.add_done_callback(lambda _t, s=session_id: self._draining.pop(s, None)
                               if self._draining.get(s) is _t else None)

    async def _wake_loop(self) -> None:
        """Publishers wake the owner of the session on the owner's own channel."""
        delay = 0.1
        while True:
            client = connect(self.rt.settings.redis_url, timeout=None)
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(p.wake_channel(self.prefix, self.rt.settings.instance_id))
                delay = 0.1
                async for message in pubsub.listen():
                    sid, entry = p.parse_wake(message["data"])
                    if self.rt.is_local(sid):
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
        """Safety net for lost wake-ups (listener reconnects): look at every local session's outbox."""
        from chainlit.session import ws_sessions_id

        last_janitor = 0.0
        while True:
            await asyncio.sleep(SWEEP_EVERY)
            try:
                sids = [sid for sid, s in list(ws_sessions_id.items()) if self._connected(s)]
                if sids:
                    async with asyncio.timeout(self.rt.settings.redis_timeout):
                        pipe = self.redis.pipeline(transaction=False)
                        for sid in sids:
                            pipe.xlen(p.stream_key(self.prefix, sid))
                        lengths = await pipe.execute()
                    for sid, n in zip(sids, lengths):
                        if n:
                            self.kick(sid)
                if time.monotonic() - last_janitor > JANITOR_EVERY:
                    last_janitor = time.monotonic()
                    await self.janitor()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("outbox sweep failed: %s", exc)

    # -- draining ---------------------------------------------------------------------------------------
    def _connected(self, session) -> bool:
        return self.rt.socket_connected(session)

    async def _drain(self, session_id: str, entry: tuple | None = None) -> None:
        from chainlit.context import init_ws_context
        from chainlit.session import WebsocketSession

        delay = 0.1
        key = p.stream_key(self.prefix, session_id)
        while True:
            self._again.discard(session_id)
            session = WebsocketSession.get_by_id(session_id)
            if session is None or not self._connected(session):
                return
            init_ws_context(session)
            if entry is not None:  # fast path: the wake-up carried the only entry of the outbox
                entries, entry = [entry], None
                if await self._process(session, key, entries, prefetched=True) and session_id not in self._again:
                    return
                continue
            try:
                owner, entries = await self._read(session_id, key)
            except redis.exceptions.ResponseError:
                return  # no stream / group yet: nothing was ever published here
            except Exception as exc:
                log.warning("session %s: outbox read failed: %s", session_id, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            if owner != self.rt.settings.instance_id:
                return  # a peer holds it: the owner delivers (what we just read stays pending for it)
            if not entries:
                if session_id in self._again:
                    continue
                return
            if await self._process(session, key, entries):
                delay = 0.1
            else:
                await asyncio.sleep(delay)  # a render failed: retry the same entry, in order, later
                delay = min(delay * 2, 5.0)

    async def _read(self, session_id: str, key: str) -> tuple[str | None, list]:
        """One round trip: the owner, entries a previous owner left pending (``0``), then new ones."""
        async with asyncio.timeout(self.rt.settings.redis_timeout):
            pipe = self.redis.pipeline(transaction=False)
            pipe.hget(self.rt.store.key(session_id), "owner")
            pipe.xreadgroup(p.GROUP, p.CONSUMER, {key: "0"}, count=BATCH)
            pipe.xreadgroup(p.GROUP, p.CONSUMER, {key: ">"}, count=BATCH)
            owner, pending, new = await pipe.execute(raise_on_error=False)
        for result in (owner, pending, new):
            if isinstance(result, Exception):
                raise result
        entries = []
        for reply in (pending, new):
            if reply:
                entries += [(eid, f) for eid, f in reply[0][1] if f]  # deleted-while-pending: empty
        return (owner.decode() if owner else None), entries

    async def _process(self, session, key: str, entries, prefetched: bool = False) -> bool:
        """Render a batch in order; False when a render failed (retried later, in order)."""
        try:
            return await self._process_batch(session, key, entries, prefetched)
        except Exception:
            log.exception("session %s: delivery round failed; retrying", session.id)
            return False
        finally:
            self.rt.hooks.deferred_commit.discard(session.id)

    async def _process_batch(self, session, key: str, entries, prefetched: bool) -> bool:
        """Verify, dedupe and render one batch. Every path — the wake-up fast path too — checks the
        seen key of the id *inside the verified body* in Redis: the publish script's own check uses
        an id its caller passes, so a captured entry appended again with another id reaches here
        and must be recognised as a replay."""
        from chainlit.chat_context import chat_contexts

        sid = session.id
        user = session.user.identifier if session.user is not None else None
        checked = []
        for eid, fields in entries:
            try:
                body, key_used = p.verify(fields, self.keys, sid, max_age=self.max_age, max_bytes=self.max_bytes)
                # Scope against the session itself (restored from Redis), never the body's target.
                if not key_used.allows(sid, user, session.thread_id):
                    raise p.Rejected("out_of_scope", f"key {key_used.kid!r} is not allowed to reach this session")
                checked.append((eid, fields, p.seen_key(self.prefix, sid, body.eid), body, None))
            except Exception as exc:  # Rejected, or anything a hostile entry might trigger
                rejected = exc if isinstance(exc, p.Rejected) else p.Rejected(
                    "malformed", f"malformed: {exc.__class__.__name__}")
                checked.append((eid, fields, None, None, rejected))
        seen_keys = [k for _, _, k, _, _ in checked if k]
        try:
            async with asyncio.timeout(self.rt.settings.redis_timeout):
                pipe = self.redis.pipeline(transaction=False)
                for k in seen_keys:
                    pipe.exists(k)
                seen = {k for k, found in zip(seen_keys, await pipe.execute()) if found}
        except Exception as exc:
            log.warning("session %s: dedupe lookup failed: %s", sid, exc.__class__.__name__)
            return False
        in_context = {m.id for m in chat_contexts.get(sid, [])}
        done, delivered, rendered, dead, ok = [], [], set(), [], True
        for eid, fields, seen_key, body, rejected in checked:
            if rejected is not None:
                dead.append((fields, rejected.code, str(rejected)))
                done.append(eid)
                continue
            if seen_key in seen:  # rendered before (a replay), or twice in this batch
                metrics.WORKER_MESSAGES.labels("duplicate").inc()
                dead.append((fields, "duplicate", f"duplicate: entry {body.eid[:80]!r} was delivered before"))
                done.append(eid)
                continue
            if body.kind in ("message", "stream_end") and body.mid in in_context:
                # Re-rendering what a dead owner emitted but never marked seen: the UI upserts by id,
                # so it shows once; keep one copy in the chat context too.
                chat_contexts[sid] = [m for m in chat_contexts.get(sid, []) if m.id != body.mid]
            try:
                self.rt.hooks.deferred_commit.add(sid)
                await self._render(session, body)
            except Exception as exc:
                tries = await self._count_failure(sid, eid)
                log.warning("session %s: delivering %s failed (%d/%d): %s", sid, body.mid, tries,
                            self.max_attempts, exc.__class__.__name__)
                if tries >= self.max_attempts:
                    dead.append((fields, "delivery_failed",
                                 f"delivery failed {tries} times: {exc.__class__.__name__}: {str(exc)[:200]}"))
                    done.append(eid)
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
            done.append(eid)
        self.rt.hooks.deferred_commit.discard(sid)
        if delivered:
            await self.rt.hooks.save(session)  # the batch enters the stored chat context, then is acked
            if not self._connected(session):
                # The socket went away while the batch was rendered: what it emitted may never have
                # reached the browser. Those entries stay in the outbox; whoever holds the session
                # next renders them again, with the same ids (the UI upserts, the context dedupes).
                log.info("session %s disconnected during delivery: %d message(s) stay in its outbox",
                         sid, len(rendered))
                done, delivered = [e for e in done if e not in rendered], []
        await self._settle(key, sid, done, delivered, dead)
        return ok

    @staticmethod
    def _message(body: p.Body, content: str | None = None):
        from chainlit.element import Image, Text

        from cl_scale.runtime.chainlit_hooks import new_message

        elements = [Text(name=e.name, content=e.content or "", display=e.display) if e.type == "text"
                    else Image(name=e.name, url=e.url, display=e.display) for e in body.elements]
        return new_message(content=body.content if content is None else content, author=body.author, id=body.mid,
                           elements=elements)

    async def _render(self, session, body: p.Body) -> None:
        """Chainlit's own path: persisted by the data layer, added to the chat context."""
        handle = (session.id, body.mid)
        if body.kind == "message":
            await self._message(body).send()
        elif body.kind == "token":
            msg = self._streams.get(handle)
            if msg is None:
                msg = self._streams[handle] = self._message(body, content="")
                while len(self._streams) > MAX_OPEN_STREAMS:
                    (old_sid, old_mid), _ = self._streams.popitem(last=False)
                    log.warning("session %s: stream %s never ended; its partial message stays as shown",
                                old_sid, old_mid[:80])
            else:
                self._streams.move_to_end(handle)
            await msg.stream_token(body.content)
        elif body.kind == "stream_end":
            msg = self._streams.pop(handle, None) or self._message(body)
            msg.content = body.content
            await msg.send()
        elif body.kind in ("update", "remove"):
            # Chainlit's chat context matches messages by identity: act on the one it holds.
            msg = self._in_context(session.id, body.mid) or self._message(body, content="")
            if body.kind == "update":
                msg.content = body.content
                await msg.update()
            else:
                await msg.remove()

    @staticmethod
    def _in_context(session_id: str, mid: str):
        from chainlit.chat_context import chat_contexts

        return next((m for m in chat_contexts.get(session_id, []) if m.id == mid), None)

    async def _count_failure(self, sid: str, eid) -> int:
        try:
            k = f"{self.prefix}:wk:tries:{{{sid}}}"
            n = await self.redis.hincrby(k, eid, 1)
            await self.redis.expire(k, int(self.outbox_ttl) + 60)
            return n
        except Exception:
            return 1

    async def _settle(self, key: str, sid: str, done: list, delivered: list, dead: list) -> None:
        """Ack + delete handled entries, mark rendered ones seen, dead-letter rejects: one round trip."""
        if not done:
            return
        dedupe_ttl = int(max(self.max_age, self.outbox_ttl)) + 60
        keys = [key, f"{self.prefix}:wk:outboxes", p.dlq_key(self.prefix), *filter(None, delivered)]
        args = [sid, dedupe_ttl, f"{time.time():.3f}", len(done), *done]
        for fields, code, reason in dead:
            args += [fields.get(b"kid", b""), fields.get(b"body", b""), fields.get(b"sig", b""), code, reason]
        for attempt in range(3):
            try:
                async with asyncio.timeout(self.rt.settings.redis_timeout):
                    await self._settle_script(keys=keys, args=args)
                break
            except Exception as exc:  # unacked entries are re-read and skipped as seen / in context
                log.warning("session %s: ack failed (%s), attempt %d", sid, exc, attempt + 1)
                await asyncio.sleep(0.1 * 2 ** attempt)
        for _, _, reason in dead:
            metrics.WORKER_MESSAGES.labels("dead_letter").inc()
            log.warning("session %s: worker message dead-lettered: %s", sid, reason)

    # -- janitor -----------------------------------------------------------------------------------------
    async def janitor(self) -> None:
        """Dead-letter entries that waited past the outbox TTL (session offline or unknown)."""
        index = f"{self.prefix}:wk:outboxes"
        if not await self.redis.set(f"{self.prefix}:wk:janitor", self.rt.settings.instance_id, nx=True,
                                    ex=max(1, int(JANITOR_EVERY))):
            return
        cutoff = time.time() - self.outbox_ttl
        stale = await self.redis.zrangebyscore(index, "-inf", cutoff, start=0, num=100)
        metrics.OUTBOX_DEPTH.set(await self.redis.zcard(index))
        for raw_sid in stale:
            sid = raw_sid.decode()
            key = p.stream_key(self.prefix, sid)
            entries = await self.redis.xrange(key, count=1000)
            old = [(eid, f) for eid, f in entries if int(eid.split(b"-")[0]) / 1000 < cutoff]
            known = await self.redis.exists(f"{self.prefix}:session:{{{sid}}}")
            code = "expired" if known else "unknown_session"
            reason = (f"expired: session offline past the outbox TTL ({self.outbox_ttl:.0f}s)" if known
                      else f"unknown session after the outbox TTL ({self.outbox_ttl:.0f}s)")
            pipe = self.redis.pipeline(transaction=False)
            for eid, fields in old:
                pipe.xadd(p.dlq_key(self.prefix), {**fields, "code": code, "reason": reason, "session": sid,
                                                    "at": f"{time.time():.3f}"}, maxlen=100_000, approximate=True)
            if old:
                pipe.xack(key, p.GROUP, *[e for e, _ in old])
                pipe.xdel(key, *[e for e, _ in old])
            rest = entries[len(old):]
            if rest:
                pipe.zadd(index, {sid: int(rest[0][0].split(b"-")[0]) / 1000})
            else:
                pipe.zrem(index, sid)
            await pipe.execute()
            if old:
                metrics.WORKER_MESSAGES.labels("dead_letter").inc(len(old))
                log.warning("session %s: %d worker messages dead-lettered (%s)", sid, len(old), reason)
