"""The dead-letter stream (``Keyspace.dead_letters``): what a refused worker message looks like.

Every refusal — by the publish script (outbox full), the owner (bad signature, out of scope,
duplicate, render failures...), the janitor (expired) or a publisher (no live session) — writes one
entry with the same fields: the original ``kid``/``body``/``sig`` (so it can be replayed), a
machine-readable ``code``, a human ``reason``, the ``session`` it was for and ``at`` (unix time).
The Lua writers in ``wire.scripts`` use exactly these names.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

#: The stream is capped (approximately) at this many letters; older ones are trimmed.
MAXLEN = 100_000

#: Codes, and what each means. ``RESIGNABLE`` (wire.messages) lists those that say nothing against
#: the message's origin.
CODES = {
    "unsigned": "kid or sig missing",
    "unknown_key": "no instance accepts this key id",
    "bad_signature": "the signature does not verify",
    "malformed": "not a valid message body",
    "oversized": "body over the size limit",
    "session_mismatch": "signed for another session",
    "too_old": "signed before the replay window",
    "future": "timestamp in the future",
    "out_of_scope": "the key may not reach this session (checked against the stored session)",
    "duplicate": "an entry with this id was delivered before (a replay or a repeat)",
    "delivery_failed": "rendering failed CL_SCALE_WORKER_MAX_ATTEMPTS times",
    "outbox_full": "the session's outbox was at its bound",
    "expired": "the session stayed offline past the outbox TTL",
    "unknown_session": "no such session (never created, or expired)",
    "content_type": "a broker message declared a content type other than JSON",
    "no_live_session": "a user/thread target had no live session",
    "bridge_error": "forwarding this broker message failed inside the bridge (a bug: see its log)",
}


def fields(*, kid: str | bytes, body: bytes, sig: str | bytes, code: str, reason: str, session: str,
           at: float | None = None) -> dict:
    """One letter, ready for ``XADD``."""
    return {"kid": kid, "body": body, "sig": sig, "code": code, "reason": reason, "session": session,
            "at": f"{time.time() if at is None else at:.3f}"}


async def add(redis, stream: str, **letter) -> None:
    """Append one letter (``redis`` may be a pipeline: then it is queued)."""
    result = redis.xadd(stream, fields(**letter), maxlen=MAXLEN, approximate=True)
    if hasattr(result, "__await__"):
        await result


@dataclass
class Letter:
    """A letter read back (``cl-scale dlq``)."""

    id: str
    code: str
    reason: str
    session: str
    kid: str
    body: bytes
    sig: str
    at: str

    @classmethod
    def from_entry(cls, entry_id: bytes, raw: dict) -> "Letter":
        text = {k.decode(): v.decode(errors="replace") for k, v in raw.items() if k != b"body"}
        reason = text.get("reason", "")
        return cls(id=entry_id.decode(), code=text.get("code") or _legacy_code(reason), reason=reason,
                   session=text.get("session", ""), kid=text.get("kid", ""), body=raw.get(b"body", b""),
                   sig=text.get("sig", ""), at=text.get("at", ""))

    @property
    def message_id(self) -> str | None:
        try:
            body = json.loads(self.body)
        except ValueError:
            return None
        mid = body.get("mid") if isinstance(body, dict) else None
        return mid if isinstance(mid, str) else None


def _legacy_code(reason: str) -> str:
    """Letters written before codes existed: recover the code from the reason's first words."""
    for prefix, code in (("too old", "too_old"), ("expired", "expired"), ("outbox full", "outbox_full")):
        if reason.startswith(prefix):
            return code
    return "unknown"
