"""Dead-letter operations: list, replay (optionally re-signed), purge.

Every refused worker message lands in the dead-letter stream with its original ``kid``/``body``/
``sig``, a ``code`` and a human ``reason``. Replaying puts the original entry back into its
session's outbox, where the owner verifies it again like any other. Re-signing (fresh timestamp,
your key) is for letters refused for reasons that say nothing against their origin
(``wire.messages.RESIGNABLE``: too old, expired, outbox full) *and* whose original signature still
verifies with a key known here; anything else — bad signature, unknown key, out of scope,
malformed, duplicate — is refused: re-signing it would launder a forged message.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field

from cl_scale.wire import messages as m
from cl_scale.wire import scripts
from cl_scale.wire.dead_letters import Letter
from cl_scale.wire.keyspace import Keyspace

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


def summary(letter: Letter) -> dict:
    """A letter as ``cl-scale dlq list`` shows it (control characters escaped)."""
    return {"id": letter.id, "code": letter.code, "reason": printable(letter.reason),
            "session": printable(letter.session), "mid": printable(letter.message_id or ""),
            "kid": printable(letter.kid), "at": printable(letter.at)}


async def list_letters(redis, keys: Keyspace, limit: int) -> list[Letter]:
    return [Letter.from_entry(i, f) for i, f in await redis.xrange(keys.dead_letters, count=limit)]


@dataclass
class ReplayResult:
    replayed: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (letter id, why)


async def replay(redis, keys: Keyspace, ids: list[str] | None, *, outbox_max: int, outbox_ttl: float,
                 resign_with: m.WorkerKey | None = None, verify_keys: dict[str, m.WorkerKey] | None = None,
                 limit: int = 100_000) -> ReplayResult:
    """Put letters back into their sessions' outboxes (``ids`` None = all, oldest first).

    ``resign_with``: re-sign with this key and a fresh timestamp — only letters whose code is in
    ``RESIGNABLE`` and whose original signature verifies with ``verify_keys``. A replayed letter
    leaves the dead-letter stream; a skipped one stays."""
    key = keys.dead_letters
    if ids is None:
        entries = await redis.xrange(key, count=limit)
    else:
        entries = [e for i in check_ids(ids) for e in await redis.xrange(key, i, i)]
    script = redis.register_script(scripts.OUTBOX_APPEND)
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
            parsed = m.Body.model_validate_json(body)
            parsed.ts = time.time()
            kid, body = resign_with.kid, m.canonical(parsed)
            sig = m.sign(resign_with.secret, body)
        script_keys, args = scripts.outbox_append(keys, letter.session, _entry_id(body), kid, body, sig,
                                                  outbox_max=outbox_max, ttl=outbox_ttl)
        outcome = await script(keys=script_keys, args=args)
        if outcome == 0:
            result.skipped.append((letter.id, "the session's outbox is full"))
            continue
        await redis.xdel(key, letter.id)
        result.replayed += 1
    return result


def _why_not_resign(letter: Letter, keys: dict[str, m.WorkerKey]) -> str | None:
    if letter.code not in m.RESIGNABLE:
        return (f"refused to re-sign a letter dead-lettered as {printable(letter.code)!r}: only "
                f"{', '.join(sorted(m.RESIGNABLE))} letters are re-signed (re-signing others would launder them)")
    original = keys.get(letter.kid)
    if original is None:
        return f"cannot verify its original signature: key {printable(letter.kid)!r} is not known here"
    if not m.signature_ok(original.secret, letter.body, letter.sig):
        return "its original signature does not verify: not re-signed"
    try:
        m.Body.model_validate_json(letter.body)
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


async def purge(redis, keys: Keyspace, ids: list[str] | None) -> int:
    key = keys.dead_letters
    if ids is None:
        n = await redis.xlen(key)
        await redis.delete(key)
        return n
    return await redis.xdel(key, *check_ids(ids)) if ids else 0
