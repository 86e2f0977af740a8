"""Dead-letter operations: list, replay (optionally re-signed), purge.

Every refused worker message lands in the dead-letter stream with its original ``kid``/``body``/
``sig``, a ``code`` and a human ``reason``. Replaying puts the original entry back into its
session's outbox, where the owner verifies it again like any other. Re-signing (fresh timestamp,
your key) is for letters refused for reasons that say nothing against their origin
(``protocol.RESIGNABLE``: too old, expired, outbox full) *and* whose original signature still
verifies with a key known here; anything else — bad signature, unknown key, out of scope,
malformed, duplicate — is refused: re-signing it would launder a forged message.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field

from cl_scale.worker import protocol as p

_STREAM_ID = re.compile(r"([0-9]{1,20})(?:-([0-9]{1,20}))?")
_MAX_ID = 2**64 - 1
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def check_ids(ids: list[str]) -> list[str]:
    """Stream ids as Redis accepts them (``ms`` or ``ms-seq``, each below 2**64); ValueError otherwise."""
    for i in ids:
        m = _STREAM_ID.fullmatch(i)
        if not m or int(m.group(1)) > _MAX_ID or (m.group(2) and int(m.group(2)) > _MAX_ID):
            raise ValueError(f"id={printable(i)!r}: not a stream id (like 1700000000000-0)")
    return ids


def printable(text: str, limit: int = 200) -> str:
    """Stored letters are attacker-controlled: escape control characters (newlines, ANSI escapes)."""
    text = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
    return text if len(text) <= limit else text[:limit] + "..."


@dataclass
class Letter:
    id: str
    code: str
    reason: str
    session: str
    kid: str
    body: bytes
    sig: str
    at: str

    @classmethod
    def from_entry(cls, entry_id: bytes, fields: dict) -> "Letter":
        text = {k.decode(): v.decode(errors="replace") for k, v in fields.items() if k != b"body"}
        reason = text.get("reason", "")
        return cls(id=entry_id.decode(), code=text.get("code") or _legacy_code(reason), reason=reason,
                   session=text.get("session", ""), kid=text.get("kid", ""), body=fields.get(b"body", b""),
                   sig=text.get("sig", ""), at=text.get("at", ""))

    @property
    def message_id(self) -> str | None:
        try:
            body = json.loads(self.body)
        except ValueError:
            return None
        mid = body.get("mid") if isinstance(body, dict) else None
        return mid if isinstance(mid, str) else None

    def summary(self) -> dict:
        return {"id": self.id, "code": self.code, "reason": printable(self.reason), "session": printable(self.session),
                "mid": printable(self.message_id or ""), "kid": printable(self.kid), "at": printable(self.at)}


def _legacy_code(reason: str) -> str:
    """Letters written before codes existed: recover the code from the reason's first words."""
    for prefix, code in (("too old", "too_old"), ("expired", "expired"), ("outbox full", "outbox_full")):
        if reason.startswith(prefix):
            return code
    return "unknown"


async def list_letters(redis, prefix: str, limit: int) -> list[Letter]:
    return [Letter.from_entry(i, f) for i, f in await redis.xrange(p.dlq_key(prefix), count=limit)]


@dataclass
class ReplayResult:
    replayed: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (letter id, why)


async def replay(redis, prefix: str, ids: list[str] | None, *, outbox_max: int, outbox_ttl: float,
                 resign_with: p.WorkerKey | None = None, verify_keys: dict[str, p.WorkerKey] | None = None,
                 limit: int = 100_000) -> ReplayResult:
    """Put letters back into their sessions' outboxes (``ids`` None = all, oldest first).

    ``resign_with``: re-sign with this key and a fresh timestamp — only letters whose code is in
    ``RESIGNABLE`` and whose original signature verifies with ``verify_keys``. A replayed letter
    leaves the dead-letter stream; a skipped one stays."""
    key = p.dlq_key(prefix)
    if ids is None:
        entries = await redis.xrange(key, count=limit)
    else:
        entries = [e for i in check_ids(ids) for e in await redis.xrange(key, i, i)]
    script = redis.register_script(p.OUTBOX_APPEND)
    result = ReplayResult()
    for entry_id, fields in entries:
        letter = Letter.from_entry(entry_id, fields)
        if not letter.session:
            result.skipped.append((letter.id, "no session to replay into"))
            continue
        kid, body, sig = letter.kid, letter.body, letter.sig
        if resign_with is not None:
            why = _why_not_resign(letter, verify_keys or {})
            if why:
                result.skipped.append((letter.id, why))
                continue
            parsed = p.Body.model_validate_json(body)
            parsed.ts = time.time()
            kid, body = resign_with.kid, p.canonical(parsed)
            sig = p.sign(resign_with.secret, body)
        keys, args = p.outbox_append_call(prefix, letter.session, _entry_id(body), kid, body, sig,
                                          outbox_max=outbox_max, ttl=outbox_ttl)
        outcome = await script(keys=keys, args=args)
        if outcome == 0:
            result.skipped.append((letter.id, "the session's outbox is full"))
            continue
        await redis.xdel(key, letter.id)
        result.replayed += 1
    return result


def _why_not_resign(letter: Letter, keys: dict[str, p.WorkerKey]) -> str | None:
    if letter.code not in p.RESIGNABLE:
        return (f"refused to re-sign a letter dead-lettered as {letter.code!r}: only "
                f"{', '.join(sorted(p.RESIGNABLE))} letters are re-signed (re-signing others would launder them)")
    original = keys.get(letter.kid)
    if original is None:
        return f"cannot verify its original signature: key {printable(letter.kid)!r} is not known here"
    if not p.signature_ok(original.secret, letter.body, letter.sig):
        return "its original signature does not verify: not re-signed"
    try:
        p.Body.model_validate_json(letter.body)
    except Exception:
        return "its body is not a valid message"
    return None


def _entry_id(body: bytes) -> str:
    """The (unverified) entry id of a body: the publish script's shortcut; the owner verifies again."""
    try:
        eid = json.loads(body).get("eid")
    except (ValueError, AttributeError):
        return ""
    return eid if isinstance(eid, str) else ""


async def purge(redis, prefix: str, ids: list[str] | None) -> int:
    key = p.dlq_key(prefix)
    if ids is None:
        n = await redis.xlen(key)
        await redis.delete(key)
        return n
    return await redis.xdel(key, *check_ids(ids)) if ids else 0
