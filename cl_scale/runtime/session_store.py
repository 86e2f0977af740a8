"""Redis session store: one hash per Chainlit session, written only by its current owner.

Layout: ``<prefix>:session:<id>`` -> {owner, socket, connected, data (JSON snapshot)}, TTL = Chainlit's
session timeout, refreshed on every write. Writes are conditional on ownership (Lua), so an instance
that lost a session to a peer (failover, rebalance) can never overwrite the newer state.
"""

from __future__ import annotations

import asyncio
import json
import logging

from cl_scale.runtime import metrics

log = logging.getLogger("cl_scale.store")

# KEYS[1]=session key; ARGV: owner, data, force(0/1), ttl, socket, connected
_SAVE = """
local cur = redis.call('HGET', KEYS[1], 'owner')
if cur and cur ~= ARGV[1] and ARGV[3] ~= '1' then return 0 end
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'data', ARGV[2], 'socket', ARGV[5], 'connected', ARGV[6])
redis.call('EXPIRE', KEYS[1], ARGV[4])
return 1
"""
_DELETE = """
if redis.call('HGET', KEYS[1], 'owner') == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class NotOwner(Exception):
    """A peer owns the session now; the local copy is stale."""


class SessionStore:
    def __init__(self, redis, *, prefix: str, instance_id: str, ttl: int, timeout: float = 2.0):
        self.redis, self.prefix, self.instance_id, self.ttl, self.timeout = redis, prefix, instance_id, ttl, timeout
        self._save = redis.register_script(_SAVE)
        self._delete = redis.register_script(_DELETE)

    def key(self, session_id: str) -> str:
        return f"{self.prefix}:session:{session_id}"

    async def load(self, session_id: str) -> dict | None:
        """The stored record (owner, socket, connected, snapshot) or None. Redis errors read as None:
        the client then gets a fresh session, exactly as without cl-scale."""
        try:
            async with asyncio.timeout(self.timeout):
                raw = await self.redis.hgetall(self.key(session_id))
        except Exception as exc:
            metrics.STORE_ERRORS.inc()
            log.warning("session %s: load failed: %s", session_id, exc)
            return None
        if not raw or b"data" not in raw:
            return None
        try:
            return {
                "owner": raw.get(b"owner", b"").decode(),
                "socket": raw.get(b"socket", b"").decode(),
                "connected": raw.get(b"connected") == b"1",
                "snapshot": json.loads(raw[b"data"]),
            }
        except ValueError as exc:
            log.error("session %s: unreadable snapshot ignored: %s", session_id, exc)
            return None

    async def save(self, snapshot: dict, *, socket: str = "", connected: bool = True, claim: bool = False) -> bool:
        """Write the snapshot if this instance owns the session (or ``claim``s it). Raises NotOwner when
        a peer owns it; returns False when Redis could not be reached."""
        data = json.dumps(snapshot, default=str)
        try:
            async with asyncio.timeout(self.timeout):
                ok = await self._save(keys=[self.key(snapshot["id"])],
                                      args=[self.instance_id, data, "1" if claim else "0", self.ttl, socket,
                                            "1" if connected else "0"])
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
                await self._delete(keys=[self.key(session_id)], args=[self.instance_id])
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
