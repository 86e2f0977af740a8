"""The wrappers cl-scale installs around Chainlit's socket handlers and state mutators.

When a client reconnects to an instance that does not hold its session, :meth:`ChainlitHooks.connect`
rebuilds the in-memory session from Redis *before* Chainlit's own ``connect`` handler runs — so
Chainlit takes its normal "restore existing session" path (owner check included) and
``on_chat_start`` does not run again. Every later change (``user_session.set``, the chat context) is
reported to ``SessionSync``; every reply first commits the session's pending write.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging

from cl_scale.runtime import metrics
from cl_scale.runtime.chainlit import compat
from cl_scale.runtime.session_store import StoreUnavailable
from cl_scale.wire.keyspace import valid_session_id

log = logging.getLogger("cl_scale.hooks")

# Longest a handshake waits for Redis to answer whether its session exists (a stall, a failover).
# Past it the transport is dropped without a verdict, and the client reconnects by itself later.
HANDSHAKE_STORE_WAIT = 10.0
#: Seconds a user message's handler waits for its journal entry to be sent (not answered): bounded, so
#: an unreachable Redis delays a message at most this long before it runs unjournaled.
JOURNAL_SEND_WAIT = 1.0
_CLIENT_TYPES = ("webapp", "copilot", "teams", "slack", "discord")
_OPTIONAL_STR = ("threadId", "userEnv", "chatProfile")


def validate_auth(auth) -> str:
    """Refuse malformed handshakes before Chainlit sees them (it would raise KeyError/TypeError)."""
    if not isinstance(auth, dict):
        raise ConnectionRefusedError("invalid handshake: auth must be an object")
    session_id = auth.get("sessionId")
    if not valid_session_id(session_id):
        raise ConnectionRefusedError("invalid handshake: sessionId missing or malformed")
    if auth.get("clientType") not in _CLIENT_TYPES:
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


class ChainlitHooks:
    """Installed once per process, after the app module is loaded.

    :param sio: Chainlit's ``socketio.AsyncServer``.
    :param state: ``ChainlitState`` (snapshot, rehydrate, forget).
    :param store: the Redis session store.
    :param sync: ``SessionSync`` (writes).
    :param join_rooms: ``async (sid, session)``: the session's stable rooms.
    :param on_ready: ``async (session)``: after a session is connected (worker outbox delivery).
    :param closing: ``() -> bool``: the instance is shutting down (new messages are not started).
    :param restore_callbacks: ``@cl_scale.on_session_restore`` functions.
    :param on_request: ``async (session, payload)``: a user message arrived, before the app sees it
        (the requests stream for gRPC subscribers); None: nothing.
    :param journal: ``runtime.journal.Journal``: unfinished user messages, resumed where the session
        is restored; None: not kept.
    :param uploads: ``runtime.uploads.UploadStore``: where uploads live for other instances; None: local.
    """

    def __init__(self, sio, *, state, store, sync, join_rooms, on_ready, closing, restore_callbacks,
                 on_request=None, journal=None, uploads=None):
        self.sio, self.state, self.store, self.sync = sio, state, store, sync
        self.on_request, self.journal, self.uploads = on_request, journal, uploads
        self._running: dict[str, _Run] = {}  # session id -> the user message whose handler runs here
        self._closing_writes: set = set()  # messages being journaled as pending while the instance closes
        self.join_rooms, self.on_ready, self.closing = join_rooms, on_ready, closing
        self.restore_callbacks = restore_callbacks
        #: Called with a session id when the session leaves this process (delivery frees its streams).
        self.release_callbacks: list = [sync.release]
        self._handshakes: dict[str, list] = {}  # session id -> [lock, handshakes waiting]
        self._restored: set[str] = set()  # session ids rehydrated here, not yet announced to the app

    # -- installation -------------------------------------------------------------------------------
    def install(self) -> None:
        compat.install_message_clock()
        handlers = self.sio.handlers["/"]
        self._connect, handlers["connect"] = handlers["connect"], self.connect
        self._connected, handlers["connection_successful"] = handlers["connection_successful"], self.connection_successful
        self._disconnect, handlers["disconnect"] = handlers["disconnect"], self.disconnect
        if "chat_settings_change" in handlers:
            self._settings = handlers["chat_settings_change"]
            handlers["chat_settings_change"] = self.chat_settings_change
        cs = importlib.import_module("chainlit.socket")
        self._process_message, cs.process_message = cs.process_message, self.process_message
        self._patch_mutators()
        self._patch_replies()
        self._patch_delete()

    def _patch_mutators(self) -> None:
        """``user_session.set`` and chat-context changes of the current session: report them."""
        us = importlib.import_module("chainlit.user_session")
        cc = importlib.import_module("chainlit.chat_context")
        hooks = self

        def patch(cls, name):
            original = getattr(cls, name)

            def wrapper(self, *args, **kwargs):
                result = original(self, *args, **kwargs)
                session = hooks.state.current()
                if session is not None:
                    message = args[0] if name in ("add", "remove") and args else None
                    hooks.sync.changed(session.id, name, getattr(message, "id", None))
                return result

            wrapper.__wrapped__ = original
            setattr(cls, name, wrapper)

        patch(us.UserSession, "set")
        for name in ("add", "remove", "clear"):
            patch(cc.ChatContext, name)

    def _patch_replies(self) -> None:
        """What a reply shows the user is in Redis before the reply leaves (``SessionSync.commit``)."""
        from chainlit.emitter import ChainlitEmitter

        hooks = self

        def commit_first(name):
            original = getattr(ChainlitEmitter, name)

            async def wrapper(self, step_dict, *args, **kwargs):
                session = getattr(self, "session", None)
                # Chat messages only: the run/tool steps around a handler are not what the user
                # acts on, and committing for them would put one more write before every reply.
                kind = str((step_dict or {}).get("type", ""))
                if session is not None and getattr(session, "socket_id", None) and kind.endswith("_message"):
                    if name == "send_step" and kind != "user_message":
                        # the user's message is answered: off the journal in the same write as the
                        # reply's state, before the user can see it, so an instance dying right after
                        # never counts the reply as interrupted
                        await hooks.answered(session)
                    await hooks.sync.commit(session)
                return await original(self, step_dict, *args, **kwargs)

            wrapper.__wrapped__ = original
            setattr(ChainlitEmitter, name, wrapper)

        for name in ("send_step", "update_step", "delete_step", "stream_start"):
            commit_first(name)

        original_stream_start = ChainlitEmitter.stream_start

        async def stream_start(self, step_dict, *args, **kwargs):
            # the reply being streamed: what a re-run on another instance replaces if this one dies
            session = getattr(self, "session", None)
            run = hooks._running.get(getattr(session, "id", None))
            if hooks.journal is not None and run is not None and run.session is session and (step_dict or {}).get("id"):
                # recorded before the first token shows: a partial reply a re-run must remove is known
                await run.begun()  # (the entry exists before it is updated)
                await hooks._journal(hooks.journal.replying, session.id, run.message_id, str(step_dict["id"]))
            return await original_stream_start(self, step_dict, *args, **kwargs)

        stream_start.__wrapped__ = original_stream_start
        ChainlitEmitter.stream_start = stream_start

    def _patch_delete(self) -> None:
        """Chainlit clears a session (its timeout passed, or the user cleared it): release everything
        kept for it here too — and its chat context, which stock Chainlit never drops."""
        from chainlit.session import WebsocketSession

        original, hooks = WebsocketSession.delete, self

        async def delete(session_self):
            try:
                await original(session_self)
            finally:
                hooks.state.drop_context(session_self.id)
                hooks.release(session_self.id)
                if hooks.uploads is not None:
                    try:
                        await hooks.uploads.delete(session_self.id)
                    except Exception as exc:  # noqa: BLE001 - left to expire (Redis) / logged
                        log.warning("session %s: uploads not removed (%s)", session_self.id, exc.__class__.__name__)

        delete.__wrapped__ = original
        WebsocketSession.delete = delete

        persist = WebsocketSession.persist_file

        async def persist_file(session_self, *args, **kwargs):
            """An upload: kept where any instance can read it, and its metadata in the snapshot."""
            reference = await persist(session_self, *args, **kwargs)
            if hooks.uploads is not None:
                await hooks.uploads.saved(session_self, reference["id"])
            hooks.sync.changed(session_self.id, "files")
            return reference

        persist_file.__wrapped__ = persist
        WebsocketSession.persist_file = persist_file

    # -- socket handlers ----------------------------------------------------------------------------
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
        try:
            record = await self._load_for_handshake(sid, session_id)
        except StoreUnavailable:
            # Neither restore nor start fresh: a fresh session would be claimed over the stored one.
            log.warning("session %s: Redis unavailable during the handshake; client will retry", session_id)
            await compat.drop_transport(self.sio, sid)
            return False
        if not compat.transport_open(self.sio, sid):
            return False  # the client gave up on this handshake while it waited (it has retried)
        local = self.state.session(session_id)
        if local is not None and record and not self.store.owns(record):
            self.forget(local)  # a peer took the session over since: our copy is stale
            local = None
        restored = None
        if local is None and record:
            restored = self.state.rehydrate(record.snapshot, sid, environ, record.chat_context)
            self.sync.forget_context(session_id)  # rebuilt: the first save rewrites it whole
            if self.uploads is not None:
                try:
                    await self.uploads.restore(restored, record.snapshot.get("files"))
                except Exception as exc:  # noqa: BLE001 - the chat matters more than its old uploads
                    log.warning("session %s: uploads not restored (%s)", session_id, exc.__class__.__name__)
        try:
            accepted = await self._connect(sid, environ, auth)
        except BaseException:
            if restored is not None:
                self.forget(restored)
            raise
        session = self.state.session(session_id)
        if session is None or accepted is False:
            return accepted
        if not compat.transport_open(self.sio, sid):  # the client left while Chainlit connected it
            self.forget(session)
            return False
        # Take the session over, if it is still what we loaded (a compare-and-set on its version): of
        # two handshakes restoring one session at once, one wins; the other refuses its handshake.
        claimed = await self.sync.save(session, claim=True, connected=True, expected=record)
        if claimed == "lost":
            await compat.drop_transport(self.sio, sid)
            return False
        if restored is not None:
            self._restored.add(session_id)
            metrics.RESTORED.inc()
            log.info("session %s restored from Redis (was on %s)", session_id, record.owner)
            await self.store.announce_claim(session_id, record)
        await self.join_rooms(sid, session)
        return accepted

    async def _load_for_handshake(self, sid: str, session_id: str):
        """Load, retrying while Redis stalls, up to ``HANDSHAKE_STORE_WAIT`` or until the client
        goes away."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + HANDSHAKE_STORE_WAIT
        while True:
            try:
                return await self.store.load(session_id)
            except StoreUnavailable:
                if loop.time() + 0.2 >= deadline or not compat.transport_open(self.sio, sid):
                    raise
                await asyncio.sleep(0.2)

    async def connection_successful(self, sid, *args):
        await self._connected(sid, *args)
        session = self.state.session_by_sid(sid)
        if session is None:
            return
        restored = session.id in self._restored
        if restored:
            self._restored.discard(session.id)
            self.state.enter(session)
            for callback in self.restore_callbacks:
                try:
                    await callback()
                except Exception:
                    log.exception("on_session_restore callback failed for session %s", session.id)
        task = session.current_task
        if task is not None and not task.done():
            task.add_done_callback(lambda _t, s=session: self.sync.schedule(s.id))
        else:
            self.sync.schedule(session.id)
        await self.on_ready(session)
        if restored:
            await self.resume(session)

    async def disconnect(self, sid, *args):
        session = self.state.session_by_sid(sid)
        await self._disconnect(sid)
        if session is None:
            return
        if session.to_clear:
            await self.store.delete(session.id)
        else:
            await self.sync.save(session, connected=False)

    async def chat_settings_change(self, sid, settings):
        await self._settings(sid, settings)
        if session := self.state.session_by_sid(sid):
            await self.sync.save(session)

    async def process_message(self, session, payload, attempts: int = 0):
        message_id = str(((payload or {}).get("message") or {}).get("id") or "")
        if self.on_request is not None and not attempts:  # it reached an instance: published once
            await self.on_request(session, payload)
        if self.closing():
            metrics.REFUSED_WHILE_CLOSING.inc()
            task = asyncio.current_task()
            self._closing_writes.add(task)  # the shutdown waits for these: a cancelled write loses the message
            try:
                journaled = self.journal is not None and message_id and await self._journal(
                    self.journal.write, session.id, message_id, payload, "pending", attempts)
            finally:
                self._closing_writes.discard(task)
            if journaled:
                log.info("session %s: message not started, instance closing: journaled for the next owner",
                         session.id)
            else:
                log.warning("session %s: message not started, instance closing (not journaled)", session.id)
            return
        run = None
        if self.journal is not None and message_id:
            # In the socket before the handler runs (a handler may take its process down at once), its
            # answer not awaited (a round trip before every reply otherwise); the reply's settle waits
            # for the answer, so the two never land out of order.
            answer = await self.journal.begin(session.id, message_id, payload, attempts, wait=JOURNAL_SEND_WAIT)
            run = self._running[session.id] = _Run(session, message_id, answer)
        try:
            with self.sync.handler(session.id):
                await self._process_message(session, payload)
        finally:
            if run is not None and not run.settled:  # it sent nothing (or raised): settled all the same
                if self._running.get(session.id) is run:
                    self._running.pop(session.id)
                run.settled = True
                await run.begun()
                await self._journal(self.journal.done, session.id, message_id)

    async def journal_flush(self, timeout: float = 3.0) -> None:
        """Wait (bounded) for the pending-message writes of a closing instance (ASGI shutdown)."""
        if self._closing_writes:
            await asyncio.wait(set(self._closing_writes), timeout=timeout)

    async def answered(self, session) -> None:
        """The running message of this session copy is answered: off the journal with the session's
        next write (the reply's commit), once."""
        run = self._running.get(session.id)
        if run is not None and run.session is session:
            self._running.pop(session.id)
            run.settled = True
            await run.begun()
            self.sync.settle(session.id, run.message_id)

    async def _journal(self, call, session_id: str, *args) -> bool:
        """A journal write that never stands in the way of the user's message (logged if it fails)."""
        try:
            await call(session_id, *args)
            return True
        except Exception as exc:  # noqa: BLE001 - Redis trouble: the message runs unjournaled
            log.warning("session %s: journal write failed (%s)", session_id, exc.__class__.__name__)
            return False

    async def resume(self, session) -> None:
        """Messages the session's previous owner left unfinished (this instance just restored it)."""
        from cl_scale.runtime import interrupted

        if self.journal is None:
            return
        try:
            entries = await self.journal.take(session.id)
        except Exception as exc:  # noqa: BLE001 - Redis trouble: nothing resumed, logged
            log.warning("session %s: journal not read (%s)", session.id, exc.__class__.__name__)
            return
        for entry in entries:
            await interrupted.resume(self, session, entry)

    # -- leaving ------------------------------------------------------------------------------------
    def forget(self, session) -> None:
        """Drop a session from this process without running app callbacks (it lives elsewhere). If
        its socket is still connected here, that socket is dropped too: left in place it would be a
        socket without a session, and the client would never reconnect to where its session is.

        ``session`` may be a stale copy (a write or reply still in flight for it when a newer copy of the
        same session was restored here): then only that copy goes — its socket and its reply — and the
        newer one keeps its state, its running message and its rooms."""
        current = self.state.session(session.id)
        stale = current is not None and current is not session
        sid = getattr(session, "socket_id", None)
        if sid and self.state.connected(session):
            asyncio.get_running_loop().create_task(compat.drop_transport(self.sio, sid))
        task = getattr(session, "current_task", None)
        if task is not None and not task.done():
            # A reply still running here works on a copy that is no longer the session (Chainlit would
            # hand it an empty user_session); the peer that restored it took the journal entry and
            # finishes or re-runs the message. Stopped, and not settled: the entry is the peer's now.
            run = self._running.get(session.id)
            if run is not None and run.session is session:
                self._running.pop(session.id)
                run.settled = True  # not by this process: the peer owns the entry
            task.cancel()
            log.info("session %s: a peer owns it now; the reply running here was stopped", session.id)
        self.state.forget(session)
        if not stale:
            self.release(session.id)

    def taken(self, session_id: str) -> None:
        """A peer says it took this session over: check Redis (never the notice) and drop the local
        copy — stopping a reply still running on it — if this process is no longer the owner."""
        session = self.state.session(session_id)
        if session is None or session_id in self._handshakes:
            return  # not here, or being restored here right now (that handshake's claim decides)

        async def check():
            if await self.store.owned_here(session_id) is False and self.state.session(session_id) is session:
                log.info("session %s is owned by a peer now; dropping the local copy", session_id)
                self.forget(session)

        self.sync.spawn(check())

    def release(self, session_id: str) -> None:
        self._restored.discard(session_id)
        for callback in self.release_callbacks:
            callback(session_id)

    def busy(self) -> int:
        """Sessions with a reply or ``on_chat_start`` still running (what a drain waits for)."""
        running = self.sync.busy()
        for session in self.state.sessions():
            task = getattr(session, "current_task", None)
            if task is not None and not task.done():
                running.add(session.id)
        return len(running)

    def tracked(self) -> dict[str, int]:
        return {"handshakes": len(self._handshakes), "restored_pending": len(self._restored)}


class _Run:
    """A user message whose handler runs here: the session copy it runs on, its journal entry's write
    (issued, maybe not yet answered by Redis) and whether it was settled."""

    __slots__ = ("session", "message_id", "begin", "settled")

    def __init__(self, session, message_id: str, begin: asyncio.Task | None):
        self.session, self.message_id, self.begin, self.settled = session, message_id, begin, False

    async def begun(self) -> None:
        """The entry's write has landed (a settle issued before it would be undone by it). No task: the
        entry could not be sent (Redis unreachable; the handler ran unjournaled)."""
        if self.begin is not None and not self.begin.done():
            await asyncio.shield(self.begin)
