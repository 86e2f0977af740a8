"""Keep each session's Redis copy up to date: coalesced writes, incremental chat context.

Chainlit changes a session in memory (``user_session.set``, chat-context adds); the hooks report each
change here. Writes are coalesced — at most one in flight and one queued per session — and send only
the chat-context messages that changed, so a save costs the same in a long chat as in a short one.
While a message handler runs its changes wait up to ``IN_HANDLER_SAVE_DELAY`` (the handler's end
writes them at once); before a reply reaches the browser, :meth:`commit` puts the pending write on
the wire, so a reply the user has seen never outlives the state that produced it.

A :meth:`batch` scope (worker delivery) suspends per-change writes for one session; whoever opened
it saves once at the end. Nothing here imports Chainlit: the session state comes through ``state``
(``runtime.chainlit.codec.ChainlitState`` in an instance).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

from cl_scale.runtime import metrics
from cl_scale.runtime.session_store import NotOwner, SessionStore
from cl_scale.wire.records import SessionRecord, context_entry

log = logging.getLogger("cl_scale.sync")

# Longest a change made inside a running message handler waits before it is written to Redis; the
# handler's end writes at once. Bounds what a SIGKILL during a long (streaming) reply can lose.
IN_HANDLER_SAVE_DELAY = 0.5
# Longest a reply waits for its session's state to be written (then it goes anyway; the write finishes
# in the background). Normal loopback writes take well under a millisecond.
COMMIT_WAIT_SECONDS = 0.05


@dataclass
class ContextChanges:
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

    def rebuild(self, message_ids: list[str]) -> None:
        self.seq, self.next_seq = {}, 0
        for mid in message_ids:
            self.touch(mid)
        self.dirty.clear()


class SessionSync:
    """Writes sessions to the store.

    :param store: the Redis session store (ownership-checked writes).
    :param state: the session state (``session(id)``, ``snapshot(session)``, ``messages(id)``,
                  ``connected(session)``, ``identity(session)``).
    :param on_lost: called with a session a peer owns now (its local copy must go).
    """

    def __init__(self, store: SessionStore, state, on_lost=None):
        self.store, self.state = store, state
        self.on_lost = on_lost or (lambda session: None)
        self._pending: dict[str, tuple[asyncio.TimerHandle, float]] = {}  # a write is queued (handle, delay)
        self._in_handler: dict[str, int] = {}  # sessions with a message handler running
        self._dirty: set[str] = set()  # changed since the last write started
        self._flushing: set[str] = set()  # a write is in flight
        self._again: set[str] = set()  # changed while in flight: write once more after
        self._locks: dict[str, asyncio.Lock] = {}
        self._changes: dict[str, ContextChanges] = {}
        self._batches: dict[str, int] = {}  # sessions inside a batch() scope
        self._settles: dict[str, list[str]] = {}  # user messages answered: off the journal with the next write
        self._tasks: set[asyncio.Task] = set()

    # -- what the hooks report -------------------------------------------------------------------
    def changed(self, session_id: str, what: str, message_id: str | None = None) -> None:
        """A ``user_session`` value (``what="set"``) or the chat context (``add``/``remove``/``clear``)
        changed: save soon (unless a batch scope is open)."""
        changes = self._context_changes(session_id)
        self._dirty.add(session_id)
        if what == "add" and message_id:
            changes.touch(message_id)
        elif what == "remove" and message_id:
            changes.drop(message_id)
        elif what == "clear":
            changes.seq.clear()
            changes.reset = True
        if session_id not in self._batches:
            self.schedule(session_id, IN_HANDLER_SAVE_DELAY if self._in_handler.get(session_id) else 0.0)

    @contextlib.contextmanager
    def handler(self, session_id: str):
        """A message handler runs for the session (its changes wait; the end writes them)."""
        self._in_handler[session_id] = self._in_handler.get(session_id, 0) + 1
        try:
            yield
        finally:
            left = self._in_handler.get(session_id, 1) - 1
            if left > 0:
                self._in_handler[session_id] = left
            else:
                self._in_handler.pop(session_id, None)
            if session_id in self._dirty:
                self.schedule(session_id)

    @contextlib.contextmanager
    def batch(self, session_id: str):
        """Changes inside do not schedule writes; the caller saves once, at the end."""
        self._batches[session_id] = self._batches.get(session_id, 0) + 1
        try:
            yield
        finally:
            left = self._batches.get(session_id, 1) - 1
            if left > 0:
                self._batches[session_id] = left
            else:
                self._batches.pop(session_id, None)

    def busy(self) -> set[str]:
        """Sessions with a message handler running."""
        return {sid for sid, n in self._in_handler.items() if n > 0}

    def settle(self, session_id: str, message_id: str) -> None:
        """``message_id`` (a user message) is answered: the next write of the session takes it off the
        journal, in the same script — the reply's ``commit`` is that write."""
        self._settles.setdefault(session_id, []).append(message_id)

    # -- writing ---------------------------------------------------------------------------------------
    async def commit(self, session) -> None:
        """Issue the session's pending changes before a reply reaches the user, so a reply the user has
        seen never outlives the state that produced it (a SIGKILL right after loses nothing).

        The write is put on the wire, not awaited: Redis applies it long before the client can act on
        the reply. Only when another write of the same session is still in flight do we wait for it,
        at most ``COMMIT_WAIT_SECONDS``."""
        if (session.id not in self._dirty and session.id not in self._settles) or session.id in self._batches:
            return
        queued = self._pending.pop(session.id, None)
        if queued is not None:
            queued[0].cancel()
        self._again.discard(session.id)
        lock = self._locks.get(session.id)
        write = self.spawn(self.save(session))
        if lock is not None and lock.locked():
            try:
                await asyncio.wait_for(asyncio.shield(write), COMMIT_WAIT_SECONDS)
            except asyncio.TimeoutError:
                metrics.COMMIT_TIMEOUTS.inc()
        else:
            await asyncio.sleep(0)  # let the write run up to its first wait: the command is sent

    def schedule(self, session_id: str, delay: float = 0.0) -> None:
        """Write soon, coalesced: at most one write in flight and one queued per session; an
        immediate write supersedes a delayed one."""
        if session_id in self._flushing:
            self._again.add(session_id)
            return
        queued = self._pending.get(session_id)
        if queued is not None:
            handle, queued_delay = queued
            if delay > 0 or queued_delay == 0:
                return
            handle.cancel()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        handle = loop.call_later(delay, lambda: self.spawn(self._flush(session_id)))
        self._pending[session_id] = (handle, delay)

    async def _flush(self, session_id: str) -> None:
        self._pending.pop(session_id, None)
        self._flushing.add(session_id)
        try:
            if (session := self.state.session(session_id)) is not None:
                await self.save(session)
        finally:
            self._flushing.discard(session_id)
        if session_id in self._again:
            self._again.discard(session_id)
            self.schedule(session_id)

    async def save(self, session, *, connected: bool | None = None, claim: bool = False,
                   expected=None) -> str:
        """Write the session now: ``"saved"``, ``"unavailable"`` (Redis did not answer; rewritten next
        time) or ``"lost"`` (a peer owns it: ``on_lost`` ran). ``connected`` defaults to the socket's real
        state: a write that lands after a disconnect (a scheduled save, a worker batch) must not mark
        the session connected again. ``claim`` takes the session over if it is still what ``expected`` (the record the
        restore loaded, None if there was none) holds: a compare-and-set on its version. ``"stale"``: a
        newer copy of the session was restored in this process since (the session came back here), and
        only that copy writes — the old one's socket field and state are history."""
        if connected is None:
            connected = self.state.connected(session)
        lock = self._locks.setdefault(session.id, asyncio.Lock())
        async with lock:
            current = self.state.session(session.id)
            if current is not None and current is not session:
                return "stale"
            changed = session.id in self._dirty or claim or connected  # else: a bare disconnect mark
            self._dirty.discard(session.id)
            changes = self._context_changes(session.id)
            if claim:
                changes.reset = True  # a new owner rewrites the context once
            dirty, removed, reset = changes.take()
            messages = self.state.messages(session.id)
            if reset:
                changes.rebuild([m.id for m in messages])
                dirty = set(changes.seq)
            upserts = {}
            remaining = set(dirty)
            for m in reversed(messages):  # changes are almost always at the end of a long context
                if not remaining:
                    break
                if m.id in remaining:
                    remaining.discard(m.id)
                    upserts[m.id] = context_entry(m.to_dict(), changes.seq.get(m.id, 0))
            user, thread = self.state.identity(session)
            record = SessionRecord(owner=self.store.instance_id, run=self.store.run, socket=session.socket_id or "", connected=connected,
                                   user=user, thread=thread, snapshot=self.state.snapshot(session))
            outcome = "saved"
            settles = self._settles.pop(session.id, ())
            try:
                if not await self.store.save(session.id, record, claim=claim, expected=expected,
                                             bump=changed or bool(upserts or removed or reset),
                                             upserts=upserts, removed=removed, reset_context=reset, settle=settles):
                    outcome = "unavailable"
                    changes.reset = True  # Redis was unreachable: rewrite everything next time
                    self._dirty.add(session.id)
            except NotOwner:
                log.info("session %s is owned by a peer now; dropping the local copy", session.id)
                outcome = "lost"  # its journal entries are the peer's now: not settled here
                self.on_lost(session)
            except Exception:
                outcome = "unavailable"
                metrics.STORE_ERRORS.inc()
                log.exception("session %s: snapshot failed", session.id)
            if outcome == "unavailable" and settles:  # settled by the next write that lands
                self._settles[session.id] = [*settles, *self._settles.get(session.id, ())]
        if not connected:
            self._locks.pop(session.id, None)
            self._changes.pop(session.id, None)
        return outcome

    # -- bookkeeping ---------------------------------------------------------------------------------
    def _context_changes(self, session_id: str) -> ContextChanges:
        changes = self._changes.get(session_id)
        if changes is None:
            changes = self._changes[session_id] = ContextChanges()
            for message in self.state.messages(session_id):
                changes.touch(message.id)
        return changes

    def forget_context(self, session_id: str) -> None:
        """The in-memory context was rebuilt (a restore): the next save rewrites it whole."""
        self._changes.pop(session_id, None)

    def release(self, session_id: str) -> None:
        """Forget everything kept for a session (it left this process)."""
        queued = self._pending.pop(session_id, None)
        if queued is not None:
            queued[0].cancel()
        for container in (self._in_handler, self._locks, self._changes, self._batches, self._settles):
            container.pop(session_id, None)
        for container in (self._dirty, self._flushing, self._again):
            container.discard(session_id)

    def tracked(self) -> dict[str, int]:
        """Sizes of the per-session bookkeeping (``/metrics``: a leak shows as a number that only grows)."""
        return {"save_pending": len(self._pending), "save_in_handler": len(self._in_handler),
                "save_dirty": len(self._dirty), "save_flushing": len(self._flushing), "save_again": len(self._again),
                "save_locks": len(self._locks), "context_changes": len(self._changes),
                "save_batches": len(self._batches), "save_settles": len(self._settles), "save_tasks": len(self._tasks)}

    def spawn(self, coro) -> asyncio.Task:
        """A background task kept until it ends (an unreferenced task may be collected)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task
