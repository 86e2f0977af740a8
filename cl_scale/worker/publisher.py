"""The worker SDK: put messages into users' chats from any process, without Chainlit.

``Publisher`` appends signed entries to the target session's outbox (``wire.scripts.OUTBOX_APPEND``);
the instance that owns the session delivers them through Chainlit's ``Message.send()``. While Redis
is unreachable, accepted messages wait in a bounded in-process buffer and are retried in order with
backoff; ``BufferFull`` is raised, never a silent drop. Gateways (HTTP, and later gRPC and broker
bridges) publish through the same public methods.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time

import redis.exceptions
from pydantic import ValidationError

from cl_scale.contract import DEFAULT_PREFIX
from cl_scale.wire import dead_letters, scripts
from cl_scale.wire import messages as m
from cl_scale.wire.connect import connect
from cl_scale.wire.keyspace import Keyspace
from cl_scale.wire.records import read_identity
from cl_scale.worker import registry
from cl_scale.worker.requests import Envelope

log = logging.getLogger("cl_scale.worker")

_TRANSIENT = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError, asyncio.TimeoutError)


class DeliveryError(Exception):
    """Base of every error the SDK raises."""


class MessageTooLarge(DeliveryError, ValueError):
    pass


class NotReplicated(DeliveryError):
    """The primary accepted the write but not enough replicas confirmed it (``replicas``)."""


class BufferFull(DeliveryError):
    """Redis has been unreachable long enough that the bounded retry buffer is full."""


class OutboxFull(DeliveryError):
    """The session's outbox is at its bound; the message went to the dead-letter stream."""


class Publisher:
    """Async SDK.

    :param redis_url: the instances' Redis (a least-privilege ``clscale-worker`` user is enough).
    :param key_id: id of the signing key, as listed in the instances' ``CL_SCALE_WORKER_KEYS``.
    :param key: its secret.
    :param max_buffer: messages held in memory while Redis is down (then ``BufferFull``).
    :param outbox_max: a session's outbox bound (then the message is dead-lettered, ``OutboxFull``).
    :param announce: the kind this publisher announces itself as in the worker registry
        (``worker.registry``: ``sdk``; a gateway: ``gateway``), beating every ``heartbeat`` seconds
        from its first message until ``aclose``; None: not announced (bridges announce themselves).
    :param worker_id: its id there (default: ``kind-host-pid-xxxx``).
    :param replicas: with Redis replication (Sentinel), confirm each write reached this many replicas
        (``WAIT``, in the same round trip) or raise ``NotReplicated``: Redis replicates asynchronously,
        so without it a message the primary accepted just before a failover can vanish silently.
    :param replica_timeout_ms: how long ``WAIT`` waits for them.
    """

    def __init__(self, redis_url: str, key_id: str, key: str | bytes, *, prefix: str = DEFAULT_PREFIX,
                 author: str = "Worker", max_buffer: int = 10_000, outbox_max: int = 1000,
                 outbox_ttl: float = 3600, max_bytes: int = m.MAX_BYTES, timeout: float = 2.0,
                 announce: str | None = "sdk", worker_id: str | None = None,
                 heartbeat: float = registry.INTERVAL, replicas: int = 0, replica_timeout_ms: int = 1000):
        self.redis = connect(redis_url, timeout=timeout)
        self.keys = Keyspace(prefix)
        self.kid, self._secret = key_id, m.to_bytes(key)
        self.author = author
        self.max_buffer, self.outbox_max, self.outbox_ttl, self.max_bytes = max_buffer, outbox_max, outbox_ttl, max_bytes
        self._script = self.redis.register_script(scripts.OUTBOX_APPEND)
        self.replicas, self.replica_timeout_ms = replicas, replica_timeout_ms
        self._buffer: collections.deque[tuple] = collections.deque()
        self._flusher: asyncio.Task | None = None
        self.last_error: Exception | None = None
        self.beat = registry.Beat(announce or "sdk", worker_id or registry.default_id(announce or "sdk"),
                                  interval=heartbeat)
        self._heartbeat = registry.Heartbeat(self.redis, self.keys, self.beat) if announce else None

    def __repr__(self) -> str:
        return f"Publisher(kid={self.kid!r}, prefix={self.keys.prefix!r})"

    async def __aenter__(self) -> "Publisher":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    # -- public API -------------------------------------------------------------------------------
    def start_heartbeat(self) -> None:
        """Announce now (a long-running worker is listed before its first message); no-op unannounced."""
        if self._heartbeat is not None:
            self._heartbeat.start()

    async def send(self, session_id: str, text: str, message_id: str | None = None, author: str | None = None,
                   elements: list[dict] | None = None) -> str:
        mid = message_id or m.new_id()
        await self._publish(self.body(session_id, "message", mid, mid, text, author, elements))
        return mid

    async def update(self, session_id: str, message_id: str, text: str, author: str | None = None) -> str:
        await self._publish(self._update_body(session_id, message_id, text, author))
        return message_id

    async def remove(self, session_id: str, message_id: str) -> str:
        await self._publish(self._remove_body(session_id, message_id))
        return message_id

    async def send_many(self, items: list[dict]) -> list[str]:
        """Batch: ``[{"session_id", "text", "message_id"?, "author"?, "elements"?}]`` in one pipeline."""
        bodies, mids = [], []
        for item in items:
            mid = item.get("message_id") or m.new_id()
            mids.append(mid)
            bodies.append(self.body(item["session_id"], "message", mid, mid, item["text"], item.get("author"),
                                     item.get("elements")))
        await self._publish(*bodies)
        return mids

    async def send_to_user(self, identifier: str, text: str, message_id: str | None = None,
                           author: str | None = None, elements: list[dict] | None = None) -> str:
        return await self._fan_out(m.Target(user=identifier), text, message_id, author, elements)

    async def send_to_thread(self, thread_id: str, text: str, message_id: str | None = None,
                             author: str | None = None, elements: list[dict] | None = None) -> str:
        return await self._fan_out(m.Target(thread=thread_id), text, message_id, author, elements)

    def stream(self, session_id: str, author: str | None = None, message_id: str | None = None) -> "Stream":
        return Stream(self, session_id, author, message_id or m.new_id())

    async def stream_part(self, session_id: str, message_id: str, tokens: list[str], *, offset: int = 0,
                            end: bool = False, text: str | None = None, author: str | None = None) -> str:
        """Part of one streamed message, in one round trip: ``tokens`` are tokens ``offset+1``… of
        message ``message_id``; with ``end``, the message is finished with ``text`` (default: these
        tokens joined). Several calls may extend one stream (the gateway's ``offset``)."""
        bodies = self.stream_bodies(session_id, message_id, tokens, offset=offset, end=end, text=text, author=author)
        if bodies:
            await self._publish(*bodies)
        return message_id

    def _update_body(self, session_id: str, message_id: str, text: str, author: str | None) -> m.Body:
        """Every update is its own entry (a later update of one message is not a duplicate)."""
        return self.body(session_id, "update", f"{message_id}:u:{m.new_id()}", message_id, text, author)

    def _remove_body(self, session_id: str, message_id: str) -> m.Body:
        return self.body(session_id, "remove", f"{message_id}:rm", message_id, "")

    def stream_bodies(self, session_id, message_id, tokens, *, offset, end, text, author) -> list[m.Body]:
        bodies = [self.body(session_id, "token", f"{message_id}:{offset + i + 1}", message_id, tok, author)
                  for i, tok in enumerate(tokens) if tok]
        if end:
            full = text if text is not None else "".join(tokens)
            bodies.append(self.body(session_id, "stream_end", f"{message_id}:end", message_id, full, author))
        return bodies

    async def session_identity(self, session_id: str) -> tuple[bool, str | None, str | None]:
        """(exists, user, thread) as Redis holds them for the session (scope checks, CLI checks)."""
        return await read_identity(self.redis, self.keys.session(session_id))

    async def live_sessions(self, target: m.Target) -> list[str]:
        """The live sessions of a user or thread target (the instances keep the index; reads only)."""
        index = self.keys.user_sessions(target.user) if target.user else self.keys.thread_sessions(target.thread)
        members = [x.decode() for x in await self.redis.smembers(index)]
        if not members:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for sid in members:
            pipe.exists(self.keys.session(sid))
        return [sid for sid, ok in zip(members, await pipe.execute()) if ok]

    def bodies(self, request: Envelope, session_ids: list[str], message_id: str | None = None) -> list[m.Body]:
        """The outbox entries of one ``Envelope`` (``worker.requests``) for the given sessions: what the
        gateway's endpoints and the bridges publish. ``message_id`` is used when the request has none."""
        mid = request.id or message_id or m.new_id()
        target = request.target
        if request.kind == "message":
            return [self.body(sid, "message", mid, mid, request.text, request.author,
                               [e.model_dump() for e in request.elements], target) for sid in session_ids]
        (sid,) = session_ids
        if request.kind == "update":
            return [self._update_body(sid, mid, request.text, request.author)]
        if request.kind == "remove":
            return [self._remove_body(sid, mid)]
        return self.stream_bodies(sid, mid, request.tokens, offset=request.offset, end=request.end,
                                   text=request.text, author=request.author)

    async def append(self, bodies: list[m.Body], key: m.WorkerKey | list[m.WorkerKey] | None = None,
                     require_session: bool = False) -> list[int]:
        """Append entries in one round trip, signed with ``key`` (default: this publisher's; a list: one
        per entry), with no retry buffer: a transient Redis error is raised, so a bridge leaves its batch
        unacknowledged on the broker and tries again. Per entry: 1 appended, 0 outbox full
        (dead-lettered), 2 a duplicate of an entry already delivered (skipped), 3 (``require_session``
        only) no such session: nothing appended."""
        if not bodies:
            return []
        keys = key if isinstance(key, list) else [key] * len(bodies)
        return [int(r) for r in await self._run([self._args(b, k, require_session) for b, k in zip(bodies, keys)])]

    async def flush(self, timeout: float = 10.0) -> None:
        """Wait until every buffered message reached Redis (raises DeliveryError on timeout)."""
        deadline = time.monotonic() + timeout
        while self._buffer:
            if self._flusher is None or self._flusher.done():
                self._flusher = asyncio.get_running_loop().create_task(self._flush_loop())
            if time.monotonic() > deadline:
                raise DeliveryError(f"{len(self._buffer)} messages still buffered after {timeout}s: "
                                    f"Redis unreachable ({self.last_error.__class__.__name__})")
            await asyncio.sleep(0.05)

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    async def aclose(self, timeout: float = 10.0) -> None:
        try:
            await self.flush(timeout)
        finally:
            if self._flusher is not None:
                self._flusher.cancel()
            if self._heartbeat is not None:
                await self._heartbeat.stop()
            await self.redis.aclose()

    # -- internals ----------------------------------------------------------------------------------
    def body(self, session_id: str, kind: str, eid: str, mid: str, text: str, author: str | None = None,
              elements: list[dict] | None = None, target: m.Target | None = None, input: str | None = None) -> m.Body:
        """One checked outbox entry (``kind``: message, token, stream_end, update, remove) for ``append``;
        ``eid`` is its dedupe id; ``step`` entries carry the tool's ``input``. Raises ValueError (invalid
        ids/text) or MessageTooLarge."""
        if not isinstance(text, str):
            raise ValueError("text must be a string")
        try:
            size = len(text.encode())
        except UnicodeEncodeError:
            raise ValueError("text: not valid UTF-8") from None
        size += len((input or "").encode(errors="replace"))
        if size > self.max_bytes:
            raise MessageTooLarge(f"message {mid[:80]}: {size} bytes (max {self.max_bytes})")
        try:
            return m.Body(eid=eid, mid=mid, kind=kind, session=session_id,
                          target=target or m.Target(session=session_id), ts=time.time(),
                          author=author or self.author, content=text, elements=[m.Element(**e) for e in elements or []],
                          input=input)
        except ValidationError as exc:
            raise ValueError(m.first_error(exc)) from None

    def _args(self, body: m.Body, key: m.WorkerKey | None = None, require_session: bool = False) -> tuple[list, list]:
        raw = m.canonical(body)
        if len(raw) > self.max_bytes + m.FRAMING_BYTES:
            raise MessageTooLarge(f"message {body.mid}: {len(raw)} bytes with elements (max {self.max_bytes})")
        kid, secret = (key.kid, key.secret) if key is not None else (self.kid, self._secret)
        return scripts.outbox_append(self.keys, body.session, body.eid, kid, raw, m.sign(secret, raw),
                                     outbox_max=self.outbox_max, ttl=self.outbox_ttl, require_session=require_session)

    async def _publish(self, *bodies: m.Body) -> None:
        prepared = [self._args(b) for b in bodies]  # validation errors before anything is sent
        if self._buffer:
            return self._enqueue(prepared)
        try:
            results = await self._run(prepared)
        except _TRANSIENT as exc:
            self.last_error = exc
            log.warning("Redis unreachable (%s): buffering %d messages", exc.__class__.__name__, len(prepared))
            return self._enqueue(prepared)
        self._check(results, bodies)

    async def _run(self, prepared) -> list:
        if self._heartbeat is not None:
            self._heartbeat.start()
        try:
            if len(prepared) == 1 and not self.replicas:
                keys, args = prepared[0]
                results = [await self._script(keys=keys, args=args)]
            else:
                pipe = self.redis.pipeline(transaction=False)
                for keys, args in prepared:
                    await self._script(keys=keys, args=args, client=pipe)
                if self.replicas:  # in the same round trip: how many replicas have these writes
                    pipe.execute_command("WAIT", self.replicas, self.replica_timeout_ms)
                results = await pipe.execute()
                if self.replicas:
                    acked = int(results.pop())
                    if acked < self.replicas:
                        raise NotReplicated(f"{len(prepared)} message(s) written to the Redis primary but copied to "
                                            f"{acked}/{self.replicas} replicas within {self.replica_timeout_ms} ms: "
                                            "a failover now could lose them; send them again (same ids are "
                                            "shown once)")
        except Exception:
            self.beat.errors += 1
            raise
        self.beat.sent += sum(1 for r in results if int(r) == 1)
        self.beat.errors += sum(1 for r in results if int(r) == 0)
        return results

    def _check(self, results, bodies) -> None:
        full = [b.mid for r, b in zip(results, bodies) if r == 0]
        if full:
            raise OutboxFull(f"outbox of session {bodies[0].session} is full: {len(full)} message(s) dead-lettered "
                             f"(replay with `cl-scale dlq replay`)")

    def _enqueue(self, prepared) -> None:
        if len(self._buffer) + len(prepared) > self.max_buffer:
            raise BufferFull(f"Redis unreachable ({self.last_error.__class__.__name__}) and the retry buffer is "
                             f"full ({len(self._buffer)}/{self.max_buffer} messages): message not accepted")
        self._buffer.extend(prepared)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush_loop())

    async def _flush_loop(self) -> None:
        """Retry the head of the buffer with exponential backoff (50 ms .. 2 s), in order."""
        delay = 0.05
        while self._buffer:
            batch = [self._buffer[i] for i in range(min(100, len(self._buffer)))]
            try:
                results = await self._run(batch)
            except (*_TRANSIENT, NotReplicated) as exc:  # not replicated: write again (ids dedupe)
                self.last_error = exc
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            for _ in batch:
                self._buffer.popleft()
            delay = 0.05
            full = sum(1 for r in results if r == 0)
            if full:
                log.warning("%d buffered messages hit a full outbox: dead-lettered", full)

    async def _fan_out(self, target: m.Target, text, message_id, author, elements) -> str:
        """One entry per live session of the user/thread. Reads only: the index is kept by the
        instances (and expires), so a worker needs no write access to it."""
        mid = message_id or m.new_id()
        live = await self.live_sessions(target)
        if not live:
            body = self.body(m.NO_SESSION, "message", mid, mid, text, author, elements, target)
            raw = m.canonical(body)
            await dead_letters.add(self.redis, self.keys.dead_letters, kid=self.kid, body=raw,
                                   sig=m.sign(self._secret, raw), code="no_live_session", session="",
                                   reason=f"no live session for {'user' if target.user else 'thread'} "
                                          f"{target.user or target.thread!r}")
            return mid
        await self._publish(*[self.body(sid, "message", mid, mid, text, author, elements, target) for sid in live])
        return mid


class Stream:
    """Tokens of one message; the end carries the full text, so a partial stream is always completed."""

    def __init__(self, pub: Publisher, session_id: str, author: str | None, message_id: str):
        self.pub, self.session_id, self.author, self.id = pub, session_id, author, message_id
        self._parts: list[str] = []
        self._ended = False

    async def __aenter__(self) -> "Stream":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.end()

    async def token(self, text: str) -> None:
        if self._ended:
            raise DeliveryError(f"stream {self.id} already ended")
        offset = len(self._parts)
        self._parts.append(text)
        await self.pub.stream_part(self.session_id, self.id, [text], offset=offset, author=self.author)

    async def end(self) -> str:
        if not self._ended:
            self._ended = True
            await self.pub.stream_part(self.session_id, self.id, [], offset=len(self._parts), end=True,
                                         text="".join(self._parts), author=self.author)
        return self.id


class SyncPublisher:
    """Blocking wrapper (scripts, threads): runs a Publisher on its own event loop thread."""

    def __init__(self, redis_url: str, key_id: str, key: str | bytes, **options):
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="cl-scale-publisher", daemon=True)
        self._thread.start()
        self._pub = self._call(self._make(redis_url, key_id, key, options))

    @staticmethod
    async def _make(redis_url, key_id, key, options) -> Publisher:
        return Publisher(redis_url, key_id, key, **options)

    def _call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def __enter__(self) -> "SyncPublisher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def send(self, session_id: str, text: str, **kw) -> str:
        return self._call(self._pub.send(session_id, text, **kw))

    def send_to_user(self, identifier: str, text: str, **kw) -> str:
        return self._call(self._pub.send_to_user(identifier, text, **kw))

    def send_to_thread(self, thread_id: str, text: str, **kw) -> str:
        return self._call(self._pub.send_to_thread(thread_id, text, **kw))

    def update(self, session_id: str, message_id: str, text: str, **kw) -> str:
        return self._call(self._pub.update(session_id, message_id, text, **kw))

    def remove(self, session_id: str, message_id: str) -> str:
        return self._call(self._pub.remove(session_id, message_id))

    def send_many(self, items: list[dict]) -> list[str]:
        return self._call(self._pub.send_many(items))

    def stream_tokens(self, session_id: str, tokens, author: str | None = None, message_id: str | None = None) -> str:
        async def run():
            async with self._pub.stream(session_id, author=author, message_id=message_id) as s:
                for tok in tokens:
                    await s.token(tok)
            return s.id

        return self._call(run())

    def close(self) -> None:
        try:
            self._call(self._pub.aclose())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
