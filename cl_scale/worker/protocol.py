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
    if not hmac.compare_digest(sign(key.secret, raw), sig):
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
