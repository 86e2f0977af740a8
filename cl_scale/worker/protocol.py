"""Wire format shared by the SDK, the gateway and the delivering instance (no Chainlit here).

A worker message is one entry of the target session's Redis stream ``<prefix>:wk:s:{<session>}``
with three fields: ``kid`` (key id), ``body`` (canonical JSON, exactly the signed bytes) and
``sig`` (hex HMAC-SHA256 of ``body``). The body names its session, so an entry copied into another
session's stream fails verification.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

MAX_BYTES = 64 * 1024
GROUP = "deliver"
CONSUMER = "owner"  # one owner at a time: its pending entries survive a move to another instance
KINDS = ("message", "token", "stream_end", "update", "remove")


class Element(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text", "image"]
    name: str = Field(min_length=1, max_length=200)
    content: str | None = Field(default=None, max_length=MAX_BYTES)
    url: str | None = Field(default=None, max_length=2048, pattern=r"^https?://")
    display: Literal["inline", "side", "page"] = "inline"


class Target(BaseModel):
    model_config = ConfigDict(extra="forbid")
    session: str | None = None
    user: str | None = None
    thread: str | None = None


class Body(BaseModel):
    """What is signed. ``eid`` is unique per entry (dedupe key); ``mid`` is the chat message id."""

    model_config = ConfigDict(extra="forbid")
    v: Literal[1] = 1
    eid: str = Field(min_length=1, max_length=200)
    mid: str = Field(min_length=1, max_length=200)
    kind: Literal["message", "token", "stream_end", "update", "remove"]
    session: str = Field(min_length=1, max_length=200)
    target: Target
    ts: float
    author: str = Field(default="Worker", max_length=200)
    content: str = Field(default="", max_length=MAX_BYTES)
    elements: list[Element] = Field(default_factory=list, max_length=20)


def new_id() -> str:
    return str(uuid.uuid4())


def canonical(body: Body) -> bytes:
    return json.dumps(body.model_dump(exclude_none=True), sort_keys=True, separators=(",", ":")).encode()


def sign(key: bytes, data: bytes) -> str:
    return hmac.new(key, data, hashlib.sha256).hexdigest()


def stream_key(prefix: str, session_id: str) -> str:
    return f"{prefix}:wk:s:{{{session_id}}}"


def dlq_key(prefix: str) -> str:
    return f"{prefix}:wk:dlq"


def seen_key(prefix: str, session_id: str, eid: str) -> str:
    """Set once an entry was rendered: redelivery of the same ``eid`` is skipped (idempotency)."""
    return f"{prefix}:wk:seen:{{{session_id}}}:{eid}"


def wake_channel(prefix: str, instance_id: str) -> str:
    """Each instance hears only about the sessions it owns (no fan-out to every instance)."""
    return f"{prefix}:wk:wake:{instance_id}"


# Append one signed entry to a session's outbox, atomically with its bookkeeping, and wake its owner.
# KEYS: stream, dlq, outbox index, session record, seen key.
# ARGV: kid, body, sig, max entries, ttl, now, session, wake channel prefix.
# Returns 1 (queued), 0 (outbox full: dead-lettered), 2 (already rendered: nothing to do).
# When the outbox was empty, the wake-up carries the entry itself (``session\nid\nkid\nsig\nbody``), so
# the owner renders it without reading the stream first. With one entry ahead (maybe being rendered
# by that fast path, which reads nothing after it) the wake-up is the session id alone. With more, a
# drain is already reading: it reads until the stream is empty, so no wake-up is sent (the owner's
# one-second sweep is the safety net).
OUTBOX_APPEND = """
if redis.call('EXISTS', KEYS[5]) == 1 then return 2 end
local n = redis.call('XLEN', KEYS[1])
if n >= tonumber(ARGV[4]) then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', 100000, '*', 'reason',
             'outbox full: ' .. n .. ' waiting (max ' .. ARGV[4] .. ')', 'session', ARGV[7],
             'kid', ARGV[1], 'body', ARGV[2], 'sig', ARGV[3], 'at', ARGV[6])
  return 0
end
local id = redis.call('XADD', KEYS[1], '*', 'kid', ARGV[1], 'body', ARGV[2], 'sig', ARGV[3])
pcall(redis.call, 'XGROUP', 'CREATE', KEYS[1], 'deliver', '0')
redis.call('EXPIRE', KEYS[1], math.floor(tonumber(ARGV[5]) * 2 + 60))
redis.call('ZADD', KEYS[3], 'NX', ARGV[6], ARGV[7])
local owner = redis.call('HGET', KEYS[4], 'owner')
if owner then
  -- kid and session are the only free-form fields before the body: a newline would shift the split
  if n == 0 and not string.find(ARGV[1] .. ARGV[7], '\\n', 1, true) then
    redis.call('PUBLISH', ARGV[8] .. owner, ARGV[7] .. '\\n' .. id .. '\\n' .. ARGV[1] .. '\\n' .. ARGV[3] .. '\\n' .. ARGV[2])
  elseif n <= 1 then
    redis.call('PUBLISH', ARGV[8] .. owner, ARGV[7])
  end
end
return 1
"""


def outbox_append_call(prefix: str, session_id: str, eid: str, kid: str, body: bytes, sig: str, *,
                       outbox_max: int, ttl: float) -> tuple[list, list]:
    """(keys, args) of ``OUTBOX_APPEND`` for one entry (SDK, gateway, ``cl-scale dlq replay``)."""
    keys = [stream_key(prefix, session_id), dlq_key(prefix), f"{prefix}:wk:outboxes",
            f"{prefix}:session:{{{session_id}}}", seen_key(prefix, session_id, eid)]
    args = [kid, body, sig, outbox_max, int(ttl), f"{time.time():.3f}", session_id, wake_channel(prefix, "")]
    return keys, args


def parse_wake(data: bytes) -> tuple[str, tuple | None]:
    """A wake-up: (session id, (entry id, fields) or None)."""
    parts = data.split(b"\n", 4)
    sid = parts[0].decode(errors="replace")
    if len(parts) < 5:
        return sid, None
    return sid, (parts[1], {b"kid": parts[2], b"sig": parts[3], b"body": parts[4]})


def to_bytes(secret: str | bytes) -> bytes:
    return secret if isinstance(secret, bytes) else secret.encode()


class WorkerKey(BaseModel):
    """A signing key and, optionally, the sessions/users it may reach (empty = anywhere)."""

    kid: str
    secret: bytes
    sessions: frozenset[str] = frozenset()
    users: frozenset[str] = frozenset()

    def __repr__(self) -> str:  # never print the secret
        return f"WorkerKey(kid={self.kid!r}, sessions={sorted(self.sessions)}, users={sorted(self.users)})"

    __str__ = __repr__

    @property
    def scoped(self) -> bool:
        return bool(self.sessions or self.users)

    def allows(self, target: Target, session_id: str | None = None, session_user: str | None = None) -> bool:
        if not self.scoped:
            return True
        if session_id and session_id in self.sessions:
            return True
        return any(u in self.users for u in (target.user, session_user) if u)


def parse_keys(spec: str | None, what: str = "CL_SCALE_WORKER_KEYS") -> dict[str, WorkerKey]:
    """``k1:secret1,k2:secret2;users=alice|bob;sessions=s1`` -> {kid: WorkerKey}.

    Errors name the key id, never the secret."""
    from cl_scale.errors import UserError

    keys: dict[str, WorkerKey] = {}
    for item in filter(None, (p.strip() for p in (spec or "").split(","))):
        head, *scopes = item.split(";")
        kid, sep, secret = head.partition(":")
        if not sep or not kid or not secret:
            raise UserError(f"{what}: entry {kid or '?'!r} must look like id:secret[;users=a|b][;sessions=s1|s2]")
        scope = {"users": set(), "sessions": set()}
        for s in scopes:
            name, _, values = s.partition("=")
            if name not in scope:
                raise UserError(f"{what}: key {kid!r}: unknown scope {name!r} (users, sessions)")
            scope[name] |= {v for v in values.split("|") if v}
        keys[kid] = WorkerKey(kid=kid, secret=secret.encode(), sessions=frozenset(scope["sessions"]),
                              users=frozenset(scope["users"]))
    return keys


class Rejected(Exception):
    """An entry that must be dead-lettered; ``str()`` is the reason."""


def verify(fields: dict, keys: dict[str, WorkerKey], session_id: str, *, max_age: float,
           max_bytes: int = MAX_BYTES, now: float | None = None) -> tuple[Body, WorkerKey]:
    """Check one stream entry; raises Rejected(reason). Signature first: nothing unsigned is parsed."""
    def text(name):
        value = fields.get(name.encode(), fields.get(name))
        return value.decode(errors="replace") if isinstance(value, bytes) else value

    raw = fields.get(b"body", fields.get("body"))
    if isinstance(raw, str):
        raw = raw.encode()
    kid, sig = text("kid"), text("sig")
    if not raw or not isinstance(raw, bytes):
        raise Rejected("malformed: no body")
    if len(raw) > max_bytes + 4096:
        raise Rejected(f"oversized: {len(raw)} bytes (max {max_bytes})")
    if not kid or not sig:
        raise Rejected("unsigned: kid/sig missing")
    key = keys.get(kid)
    if key is None:
        raise Rejected(f"unknown key id {kid!r}")
    if not hmac.compare_digest(sign(key.secret, raw).encode(), sig.encode()):
        raise Rejected(f"bad signature (key {kid!r})")
    try:
        body = Body.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise Rejected(f"malformed: {'.'.join(map(str, first['loc'])) or 'body'}: {first['msg']}") from None
    if body.session != session_id:
        raise Rejected("session mismatch: entry signed for another session")
    age = (now or time.time()) - body.ts
    if age > max_age:
        raise Rejected(f"too old: signed {age:.0f}s ago (max {max_age:.0f}s)")
    if age < -60:
        raise Rejected("timestamp in the future")
    return body, key
