"""The journal of user messages whose handler has not finished, per session (``Keyspace.journal``).

Why: a reply being generated on an instance that dies is otherwise lost without a trace — the user sees
half a message and nobody answers; and a message that reaches an instance while it shuts down cannot be
started there (its socket is about to close) while Chainlit's browser client never sends it again.
Both are written here, in Redis, with the session:

- ``running``: the handler started on ``owner``; removed when it returns (or raises).
- ``pending``: not started, because the instance was closing.

The instance that restores the session (``take``, an atomic claim: of two instances, one gets each
entry) runs ``pending`` messages, and for ``running`` ones whose owner is gone either re-runs the
handler (``cl_scale.rerun_interrupted = True``) or finishes the reply visibly as interrupted and tells
the app (``@cl_scale.on_reply_interrupted``). ``attempts`` bounds re-runs: a message whose handler
kills its instance every time ends as interrupted, never in a loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass

import redis.exceptions

from cl_scale.wire.keyspace import Keyspace

log = logging.getLogger("cl_scale.journal")

#: Runs of one message at most (the first included) before it is declared interrupted.
MAX_ATTEMPTS = 2

# KEYS: journal. ARGV: this instance. Every entry not owned by this instance is claimed (owner = this
# one, attempts + 1) and returned; entries this instance owns are its own running handlers.
_TAKE = """
local out = {}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local ok, entry = pcall(cjson.decode, all[i + 1])
  if not ok then
    redis.call('HDEL', KEYS[1], all[i])
  elseif entry['owner'] ~= ARGV[1] then
    entry['owner'] = ARGV[1]
    entry['attempts'] = (entry['attempts'] or 0) + 1
    local raw = cjson.encode(entry)
    redis.call('HSET', KEYS[1], all[i], raw)
    table.insert(out, all[i])
    table.insert(out, raw)
  end
end
return out
"""


# KEYS: journal. ARGV: message id, entry JSON, ttl. One command (not a pipeline of two): it runs before
# every user message's handler.
_WRITE = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
"""


@dataclass
class Entry:
    message_id: str
    payload: dict
    state: str  # running | pending
    attempts: int  # runs so far, this claim included
    reply: str | None  # id of the message being streamed when the owner died, if any
    at: float


class Journal:
    """One instance's view of the journals.

    :param redis: asyncio client.
    :param instance_id: this instance (the owner written in entries).
    :param ttl: seconds an entry may outlive its session's last write (the session TTL).
    """

    def __init__(self, redis, keys: Keyspace, instance_id: str, ttl: int):
        self.redis, self.keys, self.instance_id, self.ttl = redis, keys, instance_id, ttl
        self._take = redis.register_script(_TAKE)
        self._write = redis.register_script(_WRITE)
        self._answers: set[asyncio.Task] = set()

    def _entry(self, payload: dict, state: str, attempts: int, reply: str | None = None) -> str:
        return json.dumps({"payload": payload, "state": state, "owner": self.instance_id, "at": round(time.time(), 3),
                           "attempts": attempts, "reply": reply}, separators=(",", ":"), default=str)

    async def write(self, session_id: str, message_id: str, payload: dict, state: str, attempts: int = 0,
                    reply: str | None = None) -> None:
        await self._write(keys=[self.keys.journal(session_id)],
                          args=[message_id, self._entry(payload, state, attempts, reply), self.ttl])

    async def begin(self, session_id: str, message_id: str, payload: dict, attempts: int, *,
                    wait: float) -> asyncio.Task | None:
        """``write`` of a ``running`` entry for a handler about to start, returned as soon as the command
        is in this process's socket — the kernel delivers it to Redis even if the process is SIGKILLed
        the next instant — so the handler need not wait for Redis's answer. (A client call can hold the
        command back for a round trip first: a health-check PING on a connection idle for a while.)

        Returns the task that reads the answer (it logs a failure, never raises), or None when the
        command could not be sent within ``wait`` seconds: Redis is unreachable and the handler runs
        unjournaled (logged)."""
        args = ("EVAL", _WRITE, 1, self.keys.journal(session_id), message_id, self._entry(payload, "running", attempts),
                self.ttl)
        pool, conn = self.redis.connection_pool, None
        try:
            async with asyncio.timeout(wait):
                for attempt in (1, 2):
                    conn = await pool.get_connection()
                    try:
                        await conn.send_command(*args)
                        break
                    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
                        # a connection that went stale in the pool: one more on a fresh one
                        await self._drop(pool, conn)
                        conn = None
                        if attempt == 2:
                            raise
        except BaseException as exc:
            if conn is not None:
                await self._drop(pool, conn)  # a command may be half sent: never hand this connection on
            if not isinstance(exc, Exception):
                raise
            log.warning("session %s: journal entry not written (%s)", session_id, exc.__class__.__name__)
            return None
        task = asyncio.get_running_loop().create_task(self._answer(pool, conn, session_id))
        self._answers.add(task)  # (an unreferenced task may be collected)
        task.add_done_callback(self._answers.discard)
        return task

    async def _answer(self, pool, conn, session_id: str) -> None:
        try:
            await conn.read_response()
        except redis.exceptions.ResponseError as exc:  # answered, the connection is clean
            log.warning("session %s: journal entry refused (%s)", session_id, exc.__class__.__name__)
        except BaseException as exc:
            await conn.disconnect()  # an answer may be unread: never hand this connection on
            if not isinstance(exc, Exception):
                raise
            log.warning("session %s: journal entry not confirmed (%s)", session_id, exc.__class__.__name__)
        finally:
            await pool.release(conn)

    @staticmethod
    async def _drop(pool, conn) -> None:
        try:
            await conn.disconnect()
        finally:
            await pool.release(conn)

    async def replying(self, session_id: str, message_id: str, reply_id: str) -> None:
        """Record which message the handler is streaming (a re-run replaces it)."""
        key = self.keys.journal(session_id)
        raw = await self.redis.hget(key, message_id)
        if raw is None:
            return
        entry = json.loads(raw)
        if entry.get("reply") != reply_id and entry.get("owner") == self.instance_id:
            entry["reply"] = reply_id
            await self.redis.hset(key, message_id, json.dumps(entry, separators=(",", ":"), default=str))

    async def done(self, session_id: str, message_id: str) -> None:
        await self.redis.hdel(self.keys.journal(session_id), message_id)

    async def take(self, session_id: str) -> list[Entry]:
        """Claim every entry another instance left (oldest first)."""
        raw = await self._take(keys=[self.keys.journal(session_id)], args=[self.instance_id])
        entries = []
        for i in range(0, len(raw), 2):
            e = json.loads(raw[i + 1])
            entries.append(Entry(message_id=raw[i].decode(), payload=e.get("payload") or {}, state=e.get("state", ""),
                                 attempts=int(e.get("attempts") or 0), reply=e.get("reply"), at=float(e.get("at") or 0)))
        return sorted(entries, key=lambda e: e.at)
