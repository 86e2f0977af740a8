"""The worker message format: what is signed, how, by which keys, and how it is checked.

A worker message is one entry of the target session's outbox stream (``Keyspace.outbox``) with
three fields: ``kid`` (key id), ``body`` (canonical JSON of :class:`Body`, exactly the signed bytes)
and ``sig`` (hex HMAC-SHA256 of ``body``). The body names its session, so an entry copied into
another session's stream fails verification. Shared by the SDK, gateways and the delivering
instance; no Chainlit, no Redis here.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
import uuid
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

MAX_BYTES = 64 * 1024
#: Room for the JSON framing of a body around its ``MAX_BYTES`` of content.
FRAMING_BYTES = 4096


#: Ids that reach Redis keys and logs. Message ids (idempotency keys): letters, digits and ``._:@-``.
#: User identifiers and thread ids: any printable text without braces (they name Redis keys; a brace
#: would change a Redis Cluster hash tag) — Chainlit identifiers are often e-mail addresses.
MESSAGE_ID_PATTERN = r"^[A-Za-z0-9._:@-]{1,200}$"
NAME_PATTERN = r"^[^\x00-\x1f\x7f{}]{1,200}$"
SESSION_ID_PATTERN = r"^[A-Za-z0-9_-]{8,128}$"  # = wire.keyspace.SESSION_ID
#: The ``session`` of a dead-lettered fan-out message that found no live session.
NO_SESSION = "no-live-session"
MessageId = Annotated[str, StringConstraints(pattern=MESSAGE_ID_PATTERN)]
EntryId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._:@-]{1,300}$")]
Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
SessionId = Annotated[str, StringConstraints(pattern=SESSION_ID_PATTERN)]
Author = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]*$")]


_PATTERN_WHY = {
    MESSAGE_ID_PATTERN: "must be 1-200 of letters, digits and ._:@-",
    NAME_PATTERN: "must be 1-200 printable characters without { or }",
    SESSION_ID_PATTERN: "must be a session id: 8-128 of letters, digits, _ and -",
    r"^[A-Za-z0-9._:@-]{1,300}$": "must be 1-300 of letters, digits and ._:@-",
    r"^[^\x00-\x1f\x7f]*$": "must not contain control characters",
}


def reason(err: dict) -> str:
    """Why one pydantic error happened, in words (never the input value)."""
    return _PATTERN_WHY.get((err.get("ctx") or {}).get("pattern"), err["msg"])


def first_error(exc: ValidationError) -> str:
    """A pydantic error as one line: ``field: why``."""
    err = exc.errors()[0]
    return f"{'.'.join(map(str, err['loc'])) or 'body'}: {reason(err)}"


class Element(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text", "image"]
    name: str = Field(min_length=1, max_length=200)
    content: str | None = Field(default=None, max_length=MAX_BYTES)
    url: str | None = Field(default=None, max_length=2048, pattern=r"^https?://")
    display: Literal["inline", "side", "page"] = "inline"


class Target(BaseModel):
    model_config = ConfigDict(extra="forbid")
    session: SessionId | None = None
    user: Name | None = None
    thread: Name | None = None


class Body(BaseModel):
    """What is signed. ``eid`` is unique per entry (dedupe key); ``mid`` is the chat message id."""

    model_config = ConfigDict(extra="forbid")
    v: Literal[1] = 1
    eid: EntryId
    mid: MessageId
    kind: Literal["message", "token", "stream_end", "update", "remove", "step"]
    session: SessionId
    target: Target
    ts: float = Field(allow_inf_nan=False)
    author: Author = "Worker"
    content: str = Field(default="", max_length=MAX_BYTES)
    elements: list[Element] = Field(default_factory=list, max_length=20)
    #: ``step`` only: what the tool was called with (``content`` is what it returned). None is left out of
    #: the canonical JSON, so bodies without it sign exactly as before.
    input: str | None = Field(default=None, max_length=MAX_BYTES)


def new_id() -> str:
    return str(uuid.uuid4())


def canonical(body: Body) -> bytes:
    return json.dumps(body.model_dump(exclude_none=True), sort_keys=True, separators=(",", ":")).encode()


def sign(key: bytes, data: bytes) -> str:
    return hmac.new(key, data, hashlib.sha256).hexdigest()


def signature_ok(key: bytes, data: bytes, sig: str) -> bool:
    return hmac.compare_digest(sign(key, data).encode(), (sig or "").encode())


def parse_wake(data: bytes) -> tuple[str, tuple | None]:
    """A wake-up on an owner's channel (``Keyspace.wake_channel``), as the publish script sends it:
    the session id alone, or (fast path: the outbox was empty) the one entry with it,
    ``session\nentry id\nkid\nsig\nbody``. Returns (session id, (entry id, fields) or None)."""
    parts = data.split(b"\n", 4)
    sid = parts[0].decode(errors="replace")
    if len(parts) < 5:
        return sid, None
    return sid, (parts[1], {b"kid": parts[2], b"sig": parts[3], b"body": parts[4]})


#: Prefix of a takeover notice on an owner's wake channel (session ids never start with it).
TAKEN = b"!taken\n"


def taken_notice(session_id: str) -> bytes:
    """What an instance that just claimed a session publishes on the previous owner's wake channel:
    its copy is stale, and a reply still running there must stop. The receiver trusts nothing in it
    but the session id: it reads the owner from Redis before acting (workers may publish here too)."""
    return TAKEN + session_id.encode()


def parse_taken(data: bytes) -> str | None:
    """The session id of a takeover notice, or None for a delivery wake-up (``parse_wake``)."""
    return data[len(TAKEN):].decode(errors="replace") if data.startswith(TAKEN) else None


def to_bytes(secret: str | bytes) -> bytes:
    return secret if isinstance(secret, bytes) else secret.encode()


SCOPE_KINDS = ("users", "sessions", "threads")


class WorkerKey(BaseModel):
    """A signing key (or gateway token) and, optionally, what it may reach (no scope = anywhere).

    A scope names users, sessions and/or threads; a key may reach a session when any of them
    matches what *Redis holds* for that session: its id, its authenticated user, its thread.
    Never the target fields of a message: the signer writes those."""

    kid: str
    secret: bytes
    sessions: frozenset[str] = frozenset()
    users: frozenset[str] = frozenset()
    threads: frozenset[str] = frozenset()

    def __repr__(self) -> str:  # never print the secret
        return (f"WorkerKey(kid={self.kid!r}, sessions={sorted(self.sessions)}, users={sorted(self.users)}, "
                f"threads={sorted(self.threads)})")

    __str__ = __repr__

    @property
    def scoped(self) -> bool:
        return bool(self.sessions or self.users or self.threads)

    def allows(self, session_id: str, session_user: str | None, session_thread: str | None) -> bool:
        """May this key reach the session? Arguments are the session's *stored* id, user identifier
        and thread id (``None`` when it has none)."""
        if not self.scoped:
            return True
        return (session_id in self.sessions
                or (session_user is not None and session_user in self.users)
                or (session_thread is not None and session_thread in self.threads))


def parse_keys(spec: str | None, what: str = "CL_SCALE_WORKER_KEYS") -> dict[str, WorkerKey]:
    """``k1:secret1,k2:secret2;users=alice|bob;sessions=s1;threads=t1`` -> {kid: WorkerKey}.

    Errors name the entry by position (and its id once it parsed), never its text: an entry that
    lacks its colon may be nothing but the secret. A scope with no values is refused (it would
    otherwise read as "unscoped", i.e. full access)."""
    from cl_scale.errors import UserError

    keys: dict[str, WorkerKey] = {}
    for n, item in enumerate(filter(None, (x.strip() for x in (spec or "").split(","))), start=1):
        head, *scopes = item.split(";")
        kid, sep, secret = head.partition(":")
        kid = kid.strip()
        if not sep or not kid or not secret:
            raise UserError(f"{what}: entry #{n} must look like id:secret[;users=a|b][;sessions=s1][;threads=t1]")
        if not _KID.fullmatch(kid):
            raise UserError(f"{what}: entry #{n}: the id must be 1-64 of [A-Za-z0-9._-]")
        if kid in keys:
            raise UserError(f"{what}: entry #{n}: id {kid!r} given twice")
        scope: dict[str, set[str]] = {k: set() for k in SCOPE_KINDS}
        for s in scopes:
            name, eq, values = s.strip().partition("=")
            if name not in scope:
                raise UserError(f"{what}: key {kid!r}: unknown scope (use {', '.join(SCOPE_KINDS)})")
            found = {v.strip() for v in values.split("|") if v.strip()}
            if not eq or not found:
                raise UserError(f"{what}: key {kid!r}: scope {name} names nothing (an empty scope would "
                                "grant full access; drop it for an unscoped key)")
            scope[name] |= found
        keys[kid] = WorkerKey(kid=kid, secret=secret.encode(), sessions=frozenset(scope["sessions"]),
                              users=frozenset(scope["users"]), threads=frozenset(scope["threads"]))
    return keys


_KID = re.compile(r"[A-Za-z0-9._-]{1,64}")


class Rejected(Exception):
    """An entry that must be dead-lettered: ``code`` (machine-readable) and ``str()``, the reason."""

    def __init__(self, code: str, reason: str):
        super().__init__(reason)
        self.code = code


#: Dead-letter codes whose letters may be re-signed by ``cl-scale dlq replay --resign``: refusals
#: that say nothing against the message's origin. Every other code (bad signature, unknown key,
#: out of scope, malformed, duplicate...) questions who wrote it: re-signing would launder it.
RESIGNABLE = frozenset({"too_old", "expired", "outbox_full"})


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
        raise Rejected("malformed", "malformed: no body")
    if len(raw) > max_bytes + FRAMING_BYTES:
        raise Rejected("oversized", f"oversized: {len(raw)} bytes (max {max_bytes})")
    if not kid or not sig:
        raise Rejected("unsigned", "unsigned: kid/sig missing")
    key = keys.get(kid)
    if key is None:
        raise Rejected("unknown_key", f"unknown key id {kid[:64]!r}")
    if not signature_ok(key.secret, raw, sig):
        raise Rejected("bad_signature", f"bad signature (key {kid!r})")
    try:
        body = Body.model_validate_json(raw)
    except ValidationError as exc:
        raise Rejected("malformed", f"malformed: {first_error(exc)}") from None
    if body.session != session_id:
        raise Rejected("session_mismatch", "session mismatch: entry signed for another session")
    age = (now or time.time()) - body.ts
    if age > max_age:
        raise Rejected("too_old", f"too old: signed {age:.0f}s ago (max {max_age:.0f}s)")
    if age < -60:
        raise Rejected("future", "timestamp in the future")
    return body, key
