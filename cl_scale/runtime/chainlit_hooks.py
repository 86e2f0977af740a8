"""The only module that touches Chainlit internals. Everything it needs is checked at start-up.

Chainlit keeps each session in process memory (``ws_sessions_id``, ``user_sessions``,
``chat_contexts``). These hooks mirror that state into the Redis session store as it changes and,
when a client reconnects to an instance that does not hold its session, rebuild the in-memory
session from Redis *before* Chainlit's own ``connect`` handler runs — so Chainlit takes its normal
"restore existing session" path (owner check included) and ``on_chat_start`` does not run again.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import re
import time
from datetime import datetime, timedelta, timezone
from dataclasses import dataclass, field
from importlib.metadata import version as dist_version

from cl_scale.errors import UserError
from cl_scale.runtime import metrics
from cl_scale.runtime.session_store import NotOwner, StoreUnavailable

log = logging.getLogger("cl_scale.hooks")

TESTED_CHAINLIT = (">=2.12.0", "<2.13")
# Keys Chainlit copies into user_session on every get(): rebuilt from the session, never stored.
_DERIVED_KEYS = {"id", "env", "chat_settings", "user", "chat_profile", "client_type"}
#: Chainlit session ids are uuid4s; accept that alphabet only, always with ``fullmatch`` ("$" would
#: accept a trailing newline, and ids end up in Redis keys and log lines).
SESSION_ID = re.compile(r"[A-Za-z0-9_-]{8,128}")
_OPTIONAL_STR = ("threadId", "userEnv", "chatProfile")

# (module, attribute) pairs cl-scale patches or reads.
REQUIRED = [
    ("chainlit.server", "sio"),
    ("chainlit.server", "app"),
    ("chainlit.socket", "process_message"),
    ("chainlit.socket", "restore_existing_session"),
    ("chainlit.session", "WebsocketSession"),
    ("chainlit.session", "ws_sessions_id"),
    ("chainlit.user_session", "user_sessions"),
    ("chainlit.user_session", "UserSession"),
    ("chainlit.chat_context", "chat_contexts"),
    ("chainlit.chat_context", "ChatContext"),
    ("chainlit.emitter", "ChainlitEmitter"),
    ("chainlit.context", "init_ws_context"),
    ("chainlit.config", "FILES_DIRECTORY"),
]
# Longest a change made inside a running message handler waits before it is written to Redis; the
# handler's end writes at once. Bounds what a SIGKILL during a long (streaming) reply can lose.
IN_HANDLER_SAVE_DELAY = 0.5
# Longest a handshake waits for Redis to answer whether its session exists (a stall, a failover).
# Past it the transport is dropped without a verdict, and the client reconnects by itself later.
HANDSHAKE_STORE_WAIT = 10.0
# Longest a reply waits for its session's state to be written (then it goes anyway; the write finishes
# in the background). Normal loopback writes take well under a millisecond.
COMMIT_WAIT_SECONDS = 0.05

REQUIRED_HANDLERS = ("connect", "connection_successful", "disconnect", "client_message")

# Chainlit 2.12's ``Message.__init__`` sleeps 1 ms (``time.sleep``) so that consecutive messages get
# distinct ``created_at`` stamps. That blocks the event loop once per message: worker delivery stamps
# ``created_at`` itself (strictly increasing) and skips the sleep through this flag.
_SKIP_MESSAGE_SLEEP: contextvars.ContextVar[bool] = contextvars.ContextVar("clscale_skip_sleep", default=False)


class _MessageClock:
    """``chainlit.message``'s view of the ``time`` module: the same, except a skippable ``sleep``."""

    def __getattr__(self, name):
        return getattr(time, name)

    @staticmethod
    def sleep(seconds: float) -> None:
        if not _SKIP_MESSAGE_SLEEP.get():
            time.sleep(seconds)


_last_stamp = datetime.min


def _unique_utc_now() -> str:
    """Chainlit's ``utc_now()`` format, strictly increasing within this process."""
    global _last_stamp
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    _last_stamp = now if now > _last_stamp else _last_stamp + timedelta(microseconds=1)
    return _last_stamp.isoformat() + "Z"


def new_message(**kwargs):
    """A ``chainlit.Message`` built without blocking the event loop (see ``_SKIP_MESSAGE_SLEEP``)."""
    from chainlit.message import Message

    token = _SKIP_MESSAGE_SLEEP.set(True)
    try:
        return Message(created_at=kwargs.pop("created_at", None) or _unique_utc_now(), **kwargs)
    finally:
        _SKIP_MESSAGE_SLEEP.reset(token)


class ChainlitIncompatible(UserError):
    pass


def check_chainlit() -> str:
    """Fail fast, naming the Chainlit version, if a hook point moved."""
    import importlib

    installed = dist_version("chainlit")
    problems = []
    for module_name, attr in REQUIRED:
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:
            problems.append(f"{module_name} ({exc.__class__.__name__})")
            continue
        if not hasattr(module, attr):
            problems.append(f"{module_name}.{attr}")
    if not problems:
        handlers = importlib.import_module("chainlit.server").sio.handlers.get("/", {})
        problems += [f"socket handler '{h}'" for h in REQUIRED_HANDLERS if h not in handlers]
    if problems:
        raise ChainlitIncompatible(
            f"Chainlit {installed} lacks what cl-scale hooks ({', '.join(problems)}); "
            f"cl-scale is tested with chainlit{','.join(TESTED_CHAINLIT)}")
    major_minor = tuple(int(x) for x in installed.split(".")[:2])
    if major_minor != (2, 12):
        log.warning("Chainlit %s is outside the tested range %s", installed, ",".join(TESTED_CHAINLIT))
    return installed


def validate_auth(auth) -> str:
    """Refuse malformed handshakes before Chainlit sees them (it would raise KeyError/TypeError)."""
    if not isinstance(auth, dict):
        raise ConnectionRefusedError("invalid handshake: auth must be an object")
    session_id = auth.get("sessionId")
    if not isinstance(session_id, str) or not SESSION_ID.fullmatch(session_id):
        raise ConnectionRefusedError("invalid handshake: sessionId missing or malformed")
    if auth.get("clientType") not in ("webapp", "copilot", "teams", "slack", "discord"):
        raise ConnectionRefusedError("invalid handshake: unknown clientType")
    for key in _OPTIONAL_STR:
        if auth.get(key) is not None and not isinstance(auth.get(key), str):
            raise ConnectionRefusedError(f"invalid handshake: {key} must be a string")
    if auth.get("userEnv"):
        try:
            if not isinstance(json.loads(auth["userEnv"]), dict):
                raise ValueError
        except ValueError:
            raise ConnectionRefusedError("invalid handshake: userEnv must be a JSON object") from None
    return session_id


@dataclass
class _ContextChanges:
    """Chat-context changes of one session since its last save (saves send only these)."""

    seq: dict[str, int] = field(default_factory=dict)  # message id -> position, stable across removals
    next_seq: int = 0
    dirty: set[str] = field(default_factory=set)
    removed: set[str] = field(default_factory=set)
    reset: bool = True  # rewrite the whole context (first save, after clear, after a failed save)

    def touch(self, message_id: str) -> None:
        if message_id not in self.seq:
            self.seq[message_id] = self.next_seq
            self.next_seq += 1
        self.dirty.add(message_id)
        self.removed.discard(message_id)

    def drop(self, message_id: str) -> None:
        self.seq.pop(message_id, None)
        self.dirty.discard(message_id)
        self.removed.add(message_id)

    def take(self) -> tuple[set[str], set[str], bool]:
        taken = (self.dirty, self.removed, self.reset)
        self.dirty, self.removed, self.reset = set(), set(), False
        return taken


class ChainlitHooks:
    """Installs the wrappers; holds no state Chainlit does not already hold, except save bookkeeping."""

    def __init__(self, runtime):
        self.rt = runtime
        self._pending: dict[str, tuple[asyncio.TimerHandle, float]] = {}  # a write is queued (handle, delay)
        self._in_handler: dict[str, int] = {}  # sessions with a message handler running
        self._dirty: set[str] = set()  # changed since the last write started
        self._flushing: set[str] = set()  # a write is in flight
        self._again: set[str] = set()  # changed while in flight: write once more after
        self._locks: dict[str, asyncio.Lock] = {}
        self._warned_keys: set[str] = set()
        self._changes: dict[str, _ContextChanges] = {}
        self._handshakes: dict[str, list] = {}  # session id -> [lock, handshakes waiting]
        self._tasks: set[asyncio.Task] = set()
        self.restore_callbacks: list = []
        #: Called with a session id when the session leaves this process (delivery frees its streams).
        self.release_callbacks: list = []
        #: Sessions whose messages are being rendered from the worker outbox: their entries stay
        #: pending in Redis until the batch is saved, so per-message commits are skipped (delivery.py).
        self.deferred_commit: set[str] = set()

    # -- installation ---------------------------------------------------------------------
    def install(self) -> None:
        import importlib

        from chainlit.server import sio

        # ``chainlit.user_session`` / ``chainlit.chat_context`` are shadowed by instances on the
        # package: fetch the modules themselves.
        cc = importlib.import_module("chainlit.chat_context")
        cs = importlib.import_module("chainlit.socket")
        us = importlib.import_module("chainlit.user_session")
        cm = importlib.import_module("chainlit.message")
        if getattr(cm, "time", None) is time:  # optional: a Chainlit without the sleep needs nothing
            cm.time = _MessageClock()

        handlers = sio.handlers["/"]
        self._connect, handlers["connect"] = handlers["connect"], self.connect
        self._connected, handlers["connection_successful"] = handlers["connection_successful"], self.connection_successful
        self._disconnect, handlers["disconnect"] = handlers["disconnect"], self.disconnect
        if "chat_settings_change" in handlers:
            self._settings = handlers["chat_settings_change"]
            handlers["chat_settings_change"] = self.chat_settings_change
        self._process_message, cs.process_message = cs.process_message, self.process_message

        hooks = self

        def patch(cls, name):
            original = getattr(cls, name)

            def wrapper(self, *args, **kwargs):
                result = original(self, *args, **kwargs)
                hooks.on_change(name, args)
                return result

            wrapper.__wrapped__ = original
            setattr(cls, name, wrapper)

        patch(us.UserSession, "set")
        for name in ("add", "remove", "clear"):
            patch(cc.ChatContext, name)

        from chainlit.session import WebsocketSession

        original_delete = WebsocketSession.delete

        async def delete(session_self):
            """Chainlit clears a session (its timeout passed, or the user cleared it): release
            everything kept for it here too. (Chainlit itself never drops its chat context.)"""
            try:
                await original_delete(session_self)
            finally:
                from chainlit.chat_context import chat_contexts

                chat_contexts.pop(session_self.id, None)
                hooks.release(session_self.id)

        delete.__wrapped__ = original_delete
        WebsocketSession.delete = delete

        from chainlit.emitter import ChainlitEmitter

        def commit_first(name):
            original = getattr(ChainlitEmitter, name)

            async def wrapper(self, step_dict, *args, **kwargs):
                session = getattr(self, "session", None)
                # Chat messages only: the run/tool steps around a handler are not what the user
                # acts on, and committing for them would put one more write before every reply.
                if (session is not None and getattr(session, "socket_id", None)
                        and str((step_dict or {}).get("type", "")).endswith("_message")):
                    await hooks.commit(session)
                return await original(self, step_dict, *args, **kwargs)

            wrapper.__wrapped__ = original
            setattr(ChainlitEmitter, name, wrapper)

        # What a reply shows the user is in Redis before the reply leaves (see ``commit``).
        for name in ("send_step", "update_step", "delete_step", "stream_start"):
            commit_first(name)

    # -- socket handlers ------------------------------------------------------------------------
    async def connect(self, sid, environ, auth=None):
        """Restore the session from Redis if it lives elsewhere, then let Chainlit connect it.

        Handshakes of one session run one at a time: a client that retried while Redis stalled
        may have several waiting, and only one may rehydrate (the rest find it local)."""
        session_id = validate_auth(auth)
        waiting = self._handshakes.get(session_id)
        if waiting is None:
            waiting = self._handshakes[session_id] = [asyncio.Lock(), 0]
        waiting[1] += 1
        try:
            async with waiting[0]:
                return await self._connect_one(sid, environ, auth, session_id)
        finally:
            waiting[1] -= 1
            if not waiting[1]:
                self._handshakes.pop(session_id, None)

    async def _connect_one(self, sid, environ, auth, session_id: str):
        from chainlit.session import WebsocketSession

        try:
            record = await self._load_for_handshake(sid, session_id)
        except StoreUnavailable:
            # Neither restore nor start fresh: a fresh session would be claimed over the stored one.
            log.warning("session %s: Redis unavailable during the handshake; client will retry", session_id)
            await self.rt.drop_transport(sid)
            return False
        if not self.rt.transport_open(sid):
            return False  # the client gave up on this handshake while it waited (it has retried)
        local = WebsocketSession.get_by_id(session_id)
        if local is not None and record and record["owner"] != self.rt.settings.instance_id:
            self.forget(local)  # a peer took the session over since: our copy is stale
            local = None
        restored = None
        if local is None and record:
            restored = self.rehydrate(record["snapshot"], sid, environ, record["chat_context"])
        try:
            accepted = await self._connect(sid, environ, auth)
        except BaseException:
            if restored is not None:
                self.forget(restored)
            raise
        session = WebsocketSession.get_by_id(session_id)
        if session is None or accepted is False:
            return accepted
        if restored is not None:
            session._clscale_restored = True
            metrics.RESTORED.inc()
            log.info("session %s restored from Redis (was on %s)", session_id, record["owner"])
        await self.rt.join_rooms(sid, session)
        await self.save(session, claim=True, connected=True)  # accepted; python-socketio still calls it pending
        return accepted

    async def _load_for_handshake(self, sid: str, session_id: str) -> dict | None:
        """Load, retrying while Redis stalls, up to ``HANDSHAKE_STORE_WAIT`` or until the client
        goes away."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + HANDSHAKE_STORE_WAIT
        while True:
            try:
                return await self.rt.store.load(session_id)
            except StoreUnavailable:
                if loop.time() + 0.2 >= deadline or not self.rt.transport_open(sid):
                    raise
                await asyncio.sleep(0.2)

    async def connection_successful(self, sid, *args):
        from chainlit.context import init_ws_context
        from chainlit.session import WebsocketSession

        await self._connected(sid, *args)
        session = WebsocketSession.get(sid)
        if session is None:
            return
        if getattr(session, "_clscale_restored", False):
            session._clscale_restored = False
            init_ws_context(session)
            for callback in self.restore_callbacks:
                try:
                    await callback()
                except Exception:
                    log.exception("on_session_restore callback failed for session %s", session.id)
        task = session.current_task
        if task is not None and not task.done():
            task.add_done_callback(lambda _t, s=session: self.schedule_save(s.id))
        else:
            self.schedule_save(session.id)
        await self.rt.on_session_ready(session)

    async def disconnect(self, sid, *args):
        from chainlit.session import WebsocketSession

        session = WebsocketSession.get(sid)
        await self._disconnect(sid)
        if session is None:
            return
        if session.to_clear:
            await self.rt.store.delete(session.id)
        else:
            await self.save(session, connected=False)

    async def chat_settings_change(self, sid, settings):
        from chainlit.session import WebsocketSession

        await self._settings(sid, settings)
        if session := WebsocketSession.get(sid):
            await self.save(session)

    async def process_message(self, session, payload):
        if self.rt.closing:
            metrics.REFUSED_WHILE_CLOSING.inc()
            log.info("session %s: message not started, instance closing (client re-sends)", session.id)
            return
        self._in_handler[session.id] = self._in_handler.get(session.id, 0) + 1
        try:
            await self._process_message(session, payload)
        finally:
            left = self._in_handler.get(session.id, 1) - 1
            if left > 0:
                self._in_handler[session.id] = left
            else:
                self._in_handler.pop(session.id, None)
            if session.id in self._dirty:
                self.schedule_save(session.id)

    # -- snapshot / restore ---------------------------------------------------------------------
    def snapshot(self, session) -> dict:
        from chainlit.chat_context import chat_contexts
        from chainlit.user_session import user_sessions

        values = {}
        for key, value in user_sessions.get(session.id, {}).items():
            if key in _DERIVED_KEYS:
                continue
            try:
                json.dumps(value)
            except (TypeError, ValueError):
                metrics.SNAPSHOT_SKIPPED.inc()
                if key not in self._warned_keys and len(self._warned_keys) < 1000:
                    self._warned_keys.add(key)
                    log.warning("user_session[%r] (%s) is not JSON-serialisable: not shared across "
                                "instances; rebuild it in an @on_session_restore hook",
                                key, type(value).__name__)
                continue
            values[key] = value
        user = session.user
        return {
            "id": session.id,
            "thread_id": session.thread_id,
            "user": user.to_dict() if user is not None else None,
            "client_type": session.client_type,
            "chat_profile": session.chat_profile,
            "chat_settings": session.chat_settings,
            "user_env": session.user_env,
            "chat_started": session.chat_started,
            "has_first_interaction": session.has_first_interaction,
            "user_session": values,
        }

    def context_changes(self, session_id: str) -> _ContextChanges:
        changes = self._changes.get(session_id)
        if changes is None:
            changes = self._changes[session_id] = _ContextChanges()
            from chainlit.chat_context import chat_contexts

            for message in chat_contexts.get(session_id, []):
                changes.touch(message.id)
        return changes

    def rehydrate(self, snap: dict, sid: str, environ: dict, messages: list[dict] | None = None):
        """Rebuild Chainlit's in-memory session from a snapshot, as if it had never left."""
        from chainlit.chat_context import chat_contexts
        from chainlit.context import init_ws_context
        from chainlit.message import Message
        from chainlit.session import WebsocketSession
        from chainlit.user import PersistedUser, User
        from chainlit.user_session import user_sessions

        user = None
        if snap.get("user"):
            data = dict(snap["user"])
            user = PersistedUser(**data) if "id" in data and "createdAt" in data else User(
                identifier=data["identifier"], display_name=data.get("display_name"),
                metadata=data.get("metadata") or {})

        async def not_connected(*_a, **_k):  # replaced by Chainlit's restore path right after
            return None

        session = WebsocketSession(
            id=snap["id"], socket_id=sid, emit=not_connected, emit_call=not_connected,
            user_env=snap.get("user_env") or {}, client_type=snap.get("client_type") or "webapp",
            environ=environ, user=user, chat_profile=snap.get("chat_profile"))
        session.thread_id = snap["thread_id"]
        session.chat_settings = snap.get("chat_settings") or {}
        session.chat_started = bool(snap.get("chat_started"))
        session.has_first_interaction = bool(snap.get("has_first_interaction"))
        user_sessions[session.id] = dict(snap.get("user_session") or {})
        init_ws_context(session)
        chat_contexts[session.id] = [Message.from_dict(m) for m in messages or []]
        self._changes.pop(session.id, None)  # rebuilt (all messages, full rewrite) on first save
        return session

    def forget(self, session) -> None:
        """Drop a session from this process without running app callbacks (it lives elsewhere)."""
        from chainlit.chat_context import chat_contexts
        from chainlit.session import ws_sessions_id, ws_sessions_sid
        from chainlit.user_session import user_sessions

        if ws_sessions_id.get(session.id) is session:
            ws_sessions_id.pop(session.id, None)
        if ws_sessions_sid.get(session.socket_id) is session:
            ws_sessions_sid.pop(session.socket_id, None)
        user_sessions.pop(session.id, None)
        chat_contexts.pop(session.id, None)
        self.release(session.id)

    def release(self, session_id: str) -> None:
        """Forget every piece of bookkeeping kept for a session (it left this process)."""
        queued = self._pending.pop(session_id, None)
        if queued is not None:
            queued[0].cancel()
        for container in (self._in_handler, self._locks, self._changes):
            container.pop(session_id, None)
        for container in (self._dirty, self._flushing, self._again, self.deferred_commit):
            container.discard(session_id)
        for callback in self.release_callbacks:
            callback(session_id)

    def tracked(self) -> dict[str, int]:
        """Sizes of the per-session bookkeeping (``/metrics``: a leak shows as a number that only grows)."""
        return {"save_pending": len(self._pending), "save_in_handler": len(self._in_handler),
                "save_dirty": len(self._dirty), "save_flushing": len(self._flushing), "save_again": len(self._again),
                "save_locks": len(self._locks), "context_changes": len(self._changes),
                "handshakes": len(self._handshakes), "tasks": len(self._tasks)}

    def _spawn(self, coro) -> asyncio.Task:
        """A background task that is kept until it ends (an unreferenced task may be collected)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- saving ---------------------------------------------------------------------------------
    def on_change(self, what: str, args: tuple) -> None:
        """A user_session value or the chat context changed in the current session: save soon."""
        from chainlit.context import context

        try:
            session = context.session
        except Exception:
            return
        if session is None or not hasattr(session, "socket_id"):
            return
        changes = self.context_changes(session.id)
        self._dirty.add(session.id)
        delay = IN_HANDLER_SAVE_DELAY if self._in_handler.get(session.id) else 0.0
        if what == "add" and args:
            changes.touch(args[0].id)
        elif what == "remove" and args:
            changes.drop(args[0].id)
        elif what == "clear":
            changes.seq.clear()
            changes.reset = True
        if session.id not in self.deferred_commit:  # worker delivery saves once per batch itself
            self.schedule_save(session.id, delay)

    def busy(self) -> int:
        """Sessions with a reply or ``on_chat_start`` still running (what a drain waits for)."""
        from chainlit.session import ws_sessions_id

        running = {sid for sid, n in self._in_handler.items() if n > 0}
        for session in ws_sessions_id.values():
            task = getattr(session, "current_task", None)
            if task is not None and not task.done():
                running.add(session.id)
        return len(running)

    async def commit(self, session) -> None:
        """Issue the session's pending changes to Redis before a reply reaches the user, so a reply the
        user has seen never outlives the state that produced it (a SIGKILL right after loses nothing).

        The write is put on the wire, not awaited: Redis applies it long before the client can act on
        the reply, and the reply does not wait a round trip. Only when another write of the same
        session is still in flight do we wait for it, at most ``COMMIT_WAIT_SECONDS``."""
        if session.id not in self._dirty or session.id in self.deferred_commit:
            return
        queued = self._pending.pop(session.id, None)
        if queued is not None:
            queued[0].cancel()
        self._again.discard(session.id)
        lock = self._locks.get(session.id)
        write = self._spawn(self.save(session))
        if lock is not None and lock.locked():
            try:
                await asyncio.wait_for(asyncio.shield(write), COMMIT_WAIT_SECONDS)
            except asyncio.TimeoutError:
                metrics.COMMIT_TIMEOUTS.inc()
        else:
            await asyncio.sleep(0)  # let the write run up to its first wait: the command is sent

    def schedule_save(self, session_id: str, delay: float = 0.0) -> None:
        """Write soon, coalesced: at most one write in flight and one queued per session. While a
        message handler runs its changes wait up to ``IN_HANDLER_SAVE_DELAY`` (the handler's end
        writes them at once), so one reply costs about one Redis write, yet a long streaming
        handler's state still reaches Redis while it runs."""
        if session_id in self._flushing:
            self._again.add(session_id)
            return
        queued = self._pending.get(session_id)
        if queued is not None:
            handle, queued_delay = queued
            if delay > 0 or queued_delay == 0:
                return
            handle.cancel()  # an immediate write supersedes a delayed one
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        handle = loop.call_later(delay, lambda: self._spawn(self._flush(session_id)))
        self._pending[session_id] = (handle, delay)

    async def _flush(self, session_id: str) -> None:
        from chainlit.session import WebsocketSession

        self._pending.pop(session_id, None)
        self._flushing.add(session_id)
        try:
            if session := WebsocketSession.get_by_id(session_id):
                await self.save(session)
        finally:
            self._flushing.discard(session_id)
        if session_id in self._again:
            self._again.discard(session_id)
            self.schedule_save(session_id)

    async def save(self, session, *, connected: bool | None = None, claim: bool = False) -> None:
        """``connected`` defaults to the socket's real state: a write that lands after a disconnect
        (a scheduled save, a worker batch) must not mark the session connected again."""
        from chainlit.chat_context import chat_contexts

        if connected is None:
            connected = self.rt.socket_connected(session)

        lock = self._locks.setdefault(session.id, asyncio.Lock())
        async with lock:
            self._dirty.discard(session.id)
            changes = self.context_changes(session.id)
            if claim:
                changes.reset = True  # a new owner rewrites the context once
            dirty, removed, reset = changes.take()
            messages = chat_contexts.get(session.id, [])
            if reset:
                changes.seq = {}
                changes.next_seq = 0
                for message in messages:
                    changes.touch(message.id)
                changes.dirty.clear()
                dirty = set(changes.seq)
            upserts = {}
            remaining = set(dirty)
            for m in reversed(messages):  # changes are almost always at the end of a long context
                if not remaining:
                    break
                if m.id in remaining:
                    remaining.discard(m.id)
                    upserts[m.id] = {**m.to_dict(), "_seq": changes.seq.get(m.id, 0)}
            try:
                saved = await self.rt.store.save(self.snapshot(session), socket=session.socket_id,
                                                 connected=connected, claim=claim, upserts=upserts,
                                                 removed=removed, reset_context=reset)
                if not saved:
                    changes.reset = True  # Redis was unreachable: rewrite everything next time
                    self._dirty.add(session.id)
            except NotOwner:
                log.info("session %s is owned by a peer now; dropping the local copy", session.id)
                self.forget(session)
            except Exception:
                metrics.STORE_ERRORS.inc()
                log.exception("session %s: snapshot failed", session.id)
        if not connected:
            self._locks.pop(session.id, None)
            self._changes.pop(session.id, None)
