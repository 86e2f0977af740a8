"""Redis session store: one record per Chainlit session, written only by its current owner.

Layout and formats: ``wire.keyspace`` (``session``, ``context``) and ``wire.records``. The chat
context is written incrementally (only messages added/changed since the last save). TTL = the
session timeout, refreshed on every write. Writes are conditional on ownership (``SESSION_SAVE``),
so an instance that lost a session to a peer (failover, rebalance) can never overwrite the newer
state. A read that Redis did not answer raises :class:`StoreUnavailable` — never "no session".
"""

from __future__ import annotations

import asyncio
import logging

from cl_scale.runtime import metrics
from cl_scale.wire import messages, scripts
from cl_scale.wire.keyspace import Keyspace
from cl_scale.wire.records import OWNER, RUN, SessionRecord

log = logging.getLogger("cl_scale.store")


class NotOwner(Exception):
    """A peer owns the session now; the local copy is stale."""


class StoreUnavailable(Exception):
    """Redis did not answer: whether the session exists is unknown (never the same as "no session")."""


class SessionStore:
    """:param instance_id: the owner name written into records this store saves.
    :param run: this process (one per start; ``SessionRecord.run``): with the name, the owner.
    :param ttl: seconds a record lives after its last write (the session timeout)."""

    def __init__(self, redis, keyspace: Keyspace, *, instance_id: str, ttl: int, run: str = "", timeout: float = 2.0):
        self.redis, self.keys, self.instance_id, self.ttl, self.timeout = redis, keyspace, instance_id, ttl, timeout
        self.run = run
        self._save = redis.register_script(scripts.SESSION_SAVE)
        self._delete = redis.register_script(scripts.SESSION_DELETE)

    async def load(self, session_id: str) -> SessionRecord | None:
        """The stored record, or None when Redis holds none (or an unreadable one).

        Raises :class:`StoreUnavailable` when Redis does not answer: a caller that took that for "no
        session" would start a fresh one and, claiming it, overwrite the stored session."""
        try:
            async with asyncio.timeout(self.timeout):
                pipe = self.redis.pipeline(transaction=False)
                pipe.hgetall(self.keys.session(session_id))
                pipe.hgetall(self.keys.context(session_id))
                raw, ctx = await pipe.execute()
        except Exception as exc:
            metrics.STORE_ERRORS.inc()
            log.warning("session %s: load failed: %s", session_id, exc.__class__.__name__)
            raise StoreUnavailable(session_id) from None
        try:
            return SessionRecord.from_redis(raw, ctx)
        except ValueError as exc:
            log.error("session %s: unreadable record ignored: %s", session_id, exc)
            return None

    def owns(self, record: SessionRecord) -> bool:
        """This process (name and run) is the record's owner."""
        return (record.owner, record.run) == (self.instance_id, self.run)

    async def save(self, session_id: str, record: SessionRecord, *, claim: bool = False,
                   expected: SessionRecord | None = None, upserts: dict[str, str] | None = None, removed=None,
                   reset_context: bool = False, bump: bool = True, settle=()) -> bool:
        """Write the record and the changed chat-context entries if this process owns the session, or
        ``claim`` it if it is still what ``expected`` holds (the record it loaded, by version; None =
        there was none). ``bump``: the write changes the session; ``settle``: user messages it answers
        (``scripts.session_save``). Raises NotOwner
        when a peer owns it (or won the claim); returns False when Redis is unreachable."""
        keys, args = scripts.session_save(self.keys, session_id, record, ttl=self.ttl, claim=claim,
                                          reset_context=reset_context, upserts=upserts or {}, removed=removed,
                                          expected=expected, bump=bump, settle=settle)
        try:
            async with asyncio.timeout(self.timeout):
                ok = await self._save(keys=keys, args=args)
        except Exception as exc:
            metrics.STORE_ERRORS.inc()
            log.warning("session %s: save failed: %s", session_id, exc.__class__.__name__)
            return False
        if not ok:
            raise NotOwner(session_id)
        return True

    async def delete(self, session_id: str) -> None:
        keys, args = scripts.session_delete(self.keys, session_id, self.instance_id, self.run)
        try:
            async with asyncio.timeout(self.timeout):
                await self._delete(keys=keys, args=args)
        except Exception as exc:
            metrics.STORE_ERRORS.inc()
            log.warning("session %s: delete failed: %s", session_id, exc.__class__.__name__)

    async def announce_claim(self, session_id: str, previous: SessionRecord) -> None:
        """Tell the previous owner (its wake channel) that this process took the session over, so it
        drops its copy now rather than at its next write. Best effort: that write would learn it too."""
        if not previous.owner:
            return
        try:
            async with asyncio.timeout(self.timeout):
                await self.redis.publish(self.keys.wake_channel(previous.owner), messages.taken_notice(session_id))
        except Exception as exc:
            log.warning("session %s: takeover not announced: %s", session_id, exc.__class__.__name__)

    async def owned_here(self, session_id: str) -> bool | None:
        """Does this process own the session in Redis? None when Redis did not answer."""
        try:
            async with asyncio.timeout(self.timeout):
                owner, run = await self.redis.hmget(self.keys.session(session_id), OWNER, RUN)
        except Exception:
            return None
        return (owner or b"").decode() == self.instance_id and (run or b"").decode() == self.run

    async def owner(self, session_id: str) -> str | None:
        try:
            async with asyncio.timeout(self.timeout):
                owner = await self.redis.hget(self.keys.session(session_id), OWNER)
        except Exception:
            return None
        return owner.decode() if owner else None
