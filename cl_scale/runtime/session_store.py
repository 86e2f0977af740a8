"""Redis session store: one hash per Chainlit session, written only by its current owner.

Layout: ``<prefix>:session:<id>`` -> {owner, socket, connected, data (JSON snapshot, small)} and
``<prefix>:ctx:<id>`` -> {message id: message JSON with its ``_seq``}: the chat context is written
incrementally (only messages added/changed since the last save), so a save costs the same in a long
chat as in a short one. TTL = Chainlit's session timeout, refreshed on every write. Writes are conditional on ownership (Lua), so an instance
that lost a session to a peer (failover, rebalance) can never overwrite the newer state.
"""

from __future__ import annotations

import asyncio
import json
import logging

from cl_scale.runtime import metrics

log = logging.getLogger("cl_scale.store")

# KEYS: session key, ctx key. ARGV: owner, data, force(0/1), ttl, socket, connected, reset ctx (0/1),
# n upserts, then n (id, json) pairs, then ids to delete.
_SAVE = """
local cur = redis.call('HGET', KEYS[1], 'owner')
if cur and cur ~= ARGV[1] and ARGV[3] ~= '1' then return 0 end
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'data', ARGV[2], 'socket', ARGV[5], 'connected', ARGV[6])
redis.call('EXPIRE', KEYS[1], ARGV[4])
if ARGV[7] == '1' then redis.call('DEL', KEYS[2]) end
local n = tonumber(ARGV[8])
for i = 0, n - 1 do redis.call('HSET', KEYS[2], ARGV[9 + 2 * i], ARGV[10 + 2 * i]) end
for i = 9 + 2 * n, #ARGV do redis.call('HDEL', KEYS[2], ARGV[i]) end
redis.call('EXPIRE', KEYS[2], ARGV[4])
return 1
"""
_DELETE = """
if redis.call('HGET', KEYS[1], 'owner') == ARGV[1] then return redis.call('DEL', KEYS[1], KEYS[2]) end
return 0
"""


class NotOwner(Exception):
    """A peer owns the session now; the local copy is stale."""


class StoreUnavailable(Exception):
    """Redis did not answer: whether the session exists is unknown (never the same as "no session")."""


class SessionStore:
    def __init__(self, redis, *, prefix: str, instance_id: str, ttl: int, timeout: float = 2.0):
        self.redis, self.prefix, self.instance_id, self.ttl, self.timeout = redis, prefix, instance_id, ttl, timeout
        self._save = redis.register_script(_SAVE)
        self._delete = redis.register_script(_DELETE)

    def key(self, session_id: str) -> str:
        return f"{self.prefix}:session:{{{session_id}}}"  # hash tag: both keys in one cluster slot

    def ctx_key(self, session_id: str) -> str:
        return f"{self.prefix}:ctx:{{{session_id}}}"

    async def load(self, session_id: str) -> dict | None:
        """The stored record (owner, socket, connected, snapshot), or None when Redis holds none.

        Raises :class:`StoreUnavailable` when Redis does not answer: a caller that took that for "no
        session" would start a fresh one and, claiming it, overwrite the stored session."""
        try:
            async with asyncio.timeout(self.timeout):
                pipe = self.redis.pipeline(transaction=False)
                pipe.hgetall(self.key(session_id))
                pipe.hgetall(self.ctx_key(session_id))
                raw, ctx = await pipe.execute()
        except Exception as exc:
            metrics.STORE_ERRORS.inc()
            log.warning("session %s: load failed: %s", session_id, exc.__class__.__name__)
            raise StoreUnavailable(session_id) from None
        if not raw or b"data" not in raw:
            return None
        try:
            messages = sorted((json.loads(v) for v in ctx.values()), key=lambda m: m.get("_seq", 0))
            return {
                "owner": raw.get(b"owner", b"").decode(),
                "socket": raw.get(b"socket", b"").decode(),
                "connected": raw.get(b"connected") == b"1",
                "snapshot": json.loads(raw[b"data"]),
                "chat_context": messages,
            }
        except ValueError as exc:
            log.error("session %s: unreadable snapshot ignored: %s", session_id, exc)
            return None

    async def save(self, snapshot: dict, *, socket: str = "", connected: bool = True, claim: bool = False,
                   upserts: dict[str, dict] | None = None, removed: set[str] | None = None,
                   reset_context: bool = False) -> bool:
        """Write the snapshot and the changed chat-context messages if this instance owns the session
        (or ``claim``s it). Raises NotOwner when a peer owns it; returns False when Redis is unreachable."""
        data = json.dumps(snapshot, default=str)
        upserts = upserts or {}
        args = [self.instance_id, data, "1" if claim else "0", self.ttl, socket, "1" if connected else "0",
                "1" if reset_context else "0", len(upserts)]
        for message_id, message in upserts.items():
            args += [message_id, json.dumps(message, default=str)]
        args += list(removed or ())
        try:
            async with asyncio.timeout(self.timeout):
                ok = await self._save(keys=[self.key(snapshot["id"]), self.ctx_key(snapshot["id"])], args=args)
        except Exception as exc:
            metrics.STORE_ERRORS.inc()
            log.warning("session %s: save failed: %s", snapshot.get("id"), exc)
            return False
        if not ok:
            raise NotOwner(snapshot["id"])
        return True

    async def delete(self, session_id: str) -> None:
        try:
            async with asyncio.timeout(self.timeout):
                await self._delete(keys=[self.key(session_id), self.ctx_key(session_id)], args=[self.instance_id])
        except Exception as exc:
            metrics.STORE_ERRORS.inc()
            log.warning("session %s: delete failed: %s", session_id, exc)

    async def owner(self, session_id: str) -> str | None:
        try:
            async with asyncio.timeout(self.timeout):
                owner = await self.redis.hget(self.key(session_id), "owner")
        except Exception:
            return None
        return owner.decode() if owner else None
