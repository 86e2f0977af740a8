"""The broker-independent half of a bridge: a batch of broker messages in, outbox entries out.

A source (``bridge.kafka``, ``bridge.amqp``) hands ``Bridge.forward`` a batch of ``Incoming``
messages and acknowledges them on the broker only after it returned: every message was then either
appended to its session's outbox (the same owner-routed path as the SDK, so ordering, idempotency,
offline outboxes and failover hold unchanged) or refused into cl-scale's dead-letter stream with a
code and reason. A Redis error raises instead, and the source retries the batch unacknowledged:
at-least-once end to end, duplicates removed by message id (the instances' seen marks).

Round trips per batch: one to read the sessions named (existence, scope, outbox room), one to
append (plus one per user/thread target to list its live sessions, and one for any refusals).

Backpressure: the broker is the buffer. While a connected session's outbox is at its bound (its
owner renders more slowly than the broker delivers, e.g. a backlog after a bridge outage), the batch
waits on the broker instead of being dead-lettered as ``outbox_full``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field

from pydantic import ValidationError

from cl_scale.bridge import metrics
from cl_scale.wire import dead_letters
from cl_scale.wire import messages as m
from cl_scale.wire.records import CONNECTED, IDENTITY_FIELDS, identity_from
from cl_scale.worker.publisher import MessageTooLarge, Publisher
from cl_scale.worker.requests import Envelope, why_invalid

log = logging.getLogger("cl_scale.bridge")

#: Broker headers of a signed message: the key id and the HMAC-SHA256 (hex) of the exact payload bytes.
KID_HEADER, SIG_HEADER = "cl-scale-kid", "cl-scale-sig"
#: Content types a payload may declare (none declared is JSON too).
JSON_TYPES = {"application/json", "text/json"}


def signature_headers(key_id: str, secret: str | bytes, payload: bytes) -> dict[str, str]:
    """The headers a worker adds so a bridge run with ``--require-signature`` accepts ``payload``."""
    return {KID_HEADER: key_id, SIG_HEADER: m.sign(m.to_bytes(secret), payload)}


@dataclass
class Incoming:
    """One broker message, as a source hands it over.

    :param payload: the message bytes (a UTF-8 JSON ``Envelope``).
    :param headers: broker headers, names lower-cased, values bytes or str.
    :param content_type: the declared content type, if any.
    :param broker_id: the broker's own id of this message, used as the message id when the payload
        names none (so a redelivery is the same message).
    :param ref: the source's handle for acknowledging it.
    """

    payload: bytes
    headers: dict = field(default_factory=dict)
    content_type: str | None = None
    broker_id: str | None = None
    ref: object = None

    def header(self, name: str) -> str | None:
        value = self.headers.get(name)
        if isinstance(value, bytes):
            return value.decode(errors="replace")
        return value if isinstance(value, str) else None


@dataclass
class Refused:
    """Why one message went to the dead-letter stream (``wire.dead_letters.CODES``)."""

    incoming: Incoming
    code: str
    reason: str
    session: str = ""
    kid: str = ""


@dataclass
class Outcome:
    forwarded: int = 0
    duplicates: int = 0
    refused: list[Refused] = field(default_factory=list)


class Bridge:
    """Forward batches of broker messages into outboxes.

    :param publisher: appends to outboxes.
    :param key: the bridge's own key (``WorkerSettings.signing_key()``, with its scope): it signs what
        arrives unsigned.
    :param known_keys: every key the instances accept (``CL_SCALE_WORKER_KEYS``): a signed message
        is verified with the key it names and forwarded signed with that key, so its scope holds.
    :param require_signature: refuse messages without a valid ``cl-scale-kid``/``cl-scale-sig``.
    :param max_bytes: payloads above this (plus framing) are refused as ``oversized``.
    """

    def __init__(self, publisher: Publisher, key: m.WorkerKey, *, known_keys: dict[str, m.WorkerKey],
                 require_signature: bool = False, max_bytes: int = m.MAX_BYTES, kind: str = "bridge"):
        self.pub, self.own_key, self.known_keys = publisher, key, known_keys
        self.require_signature, self.max_bytes, self.kind = require_signature, max_bytes, kind

    async def forward(self, batch: list[Incoming], wait=None) -> Outcome:
        """Append or refuse every message of ``batch``, in order; raises on Redis errors (nothing is
        acknowledged then). ``wait(seconds) -> bool`` pauses while a connected session's outbox is full
        (False: the bridge is stopping, ``Backpressure`` is raised)."""
        out = Outcome()
        parsed: list[tuple[Incoming, Envelope, m.WorkerKey]] = []
        for item in batch:
            try:
                parsed.append((item, *self._parse(item)))
            except _Refuse as r:
                out.refused.append(Refused(item, r.code, r.reason, kid=r.kid))
        identities, room = await self._read_sessions([env.session_id for _, env, _ in parsed if env.session_id])
        work: list[tuple[m.WorkerKey, m.Body]] = []
        for item, env, key in parsed:
            try:
                sessions = await self._sessions(env, key, identities)
                work += [(key, body) for body in self.pub.bodies(env, sessions, message_id=item.broker_id)]
            except _Refuse as r:
                out.refused.append(Refused(item, r.code, r.reason, session=env.session_id or "", kid=key.kid))
            except ValueError as exc:  # too large once framed, bad element...
                code = "oversized" if isinstance(exc, MessageTooLarge) else "malformed"
                out.refused.append(Refused(item, code, f"{code}: {exc}", session=env.session_id or "", kid=key.kid))
        if out.refused:  # before appending: a refusal is recorded even if the append waits or fails
            await self.dead_letter(out.refused)
        await self._append_in_order(work, out, wait or _sleep, room)
        metrics.FORWARDED.inc(out.forwarded)
        metrics.DUPLICATES.inc(out.duplicates)
        for r in out.refused:
            metrics.REFUSED.labels(r.code).inc()
        return out

    async def _append_in_order(self, work: list[tuple[m.WorkerKey, m.Body]], out: Outcome, wait,
                               known: dict | None = None) -> None:
        """Append the longest prefix of ``work`` that fits, wait while the next entry's connected session
        has no room, repeat. The broker is the buffer: a backlog (e.g. after a bridge outage) waits there
        instead of overflowing into dead letters while its session's owner is rendering. An offline
        session's outbox fills to its bound and then dead-letters (``outbox_full``), as with the SDK."""
        i, delay = 0, 0.02
        while i < len(work):
            sessions = list(dict.fromkeys(body.session for _, body in work[i:]))
            if known is not None and all(sid in known for sid in sessions):
                room = known  # read with the identities, in the same round trip
            else:
                room = (await self._read_sessions(sessions))[1]
            known = None
            used: dict[str, int] = {}
            j = i
            while j < len(work):
                sid = work[j][1].session
                if room[sid] is not None and used.get(sid, 0) >= room[sid]:
                    break
                used[sid] = used.get(sid, 0) + 1
                j += 1
            if j == i:
                metrics.BACKPRESSURE.inc()
                if not await wait(delay):
                    raise Backpressure("stopping while a session's outbox is full")
                delay = min(delay * 2, 1.0)
                continue
            delay = 0.02
            chunk = work[i:j]
            for result in await self.pub.append([body for _, body in chunk], [key for key, _ in chunk]):
                if result == 2:
                    out.duplicates += 1
                elif result == 1:
                    out.forwarded += 1
                else:  # full (an offline session): the publish script dead-lettered it as outbox_full
                    metrics.REFUSED.labels("outbox_full").inc()
            i = j

    async def _read_sessions(self, session_ids: list[str]) -> tuple[dict, dict]:
        """Identity (exists, stored user, thread) and outbox room of each named session, one round trip.
        Room: free places in the outbox of a connected session; None for an offline one (its outbox
        fills to the bound, then dead-letters, as with the SDK)."""
        unique = list(dict.fromkeys(session_ids))
        if not unique:
            return {}, {}
        pipe = self.pub.redis.pipeline(transaction=False)
        for sid in unique:
            pipe.hmget(self.pub.keys.session(sid), *IDENTITY_FIELDS, CONNECTED)
            pipe.xlen(self.pub.keys.outbox(sid))
        rows = await pipe.execute()
        identities, room = {}, {}
        for k, sid in enumerate(unique):
            row, depth = rows[2 * k], rows[2 * k + 1]
            identities[sid] = identity_from(row[:3]) or await self.pub.session_identity(sid)  # old records
            room[sid] = max(0, self.pub.outbox_max - depth) if row[3] == b"1" else None
        return identities, room

    # -- checks ------------------------------------------------------------------------------------
    def _parse(self, item: Incoming) -> tuple[Envelope, m.WorkerKey]:
        limit = self.max_bytes + m.FRAMING_BYTES
        if len(item.payload) > limit:
            raise _Refuse("oversized", f"oversized: {len(item.payload)} bytes (max {limit})")
        ctype = (item.content_type or "").split(";")[0].strip().lower()
        if ctype and ctype not in JSON_TYPES:
            raise _Refuse("content_type", f"content type {ctype[:80]!r}: expected application/json")
        key = self._key(item)
        try:
            data = json.loads(item.payload.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise _Refuse("malformed", "malformed: not UTF-8 JSON", key.kid) from None
        if not isinstance(data, dict):
            raise _Refuse("malformed", "malformed: expected a JSON object", key.kid)
        try:
            return Envelope.model_validate(data), key
        except ValidationError as exc:
            raise _Refuse("malformed", f"malformed: {why_invalid(exc)}", key.kid) from None

    def _key(self, item: Incoming) -> m.WorkerKey:
        """The key the message is forwarded under: the one it was signed with (verified), else ours."""
        kid, sig = item.header(KID_HEADER), item.header(SIG_HEADER)
        if not self.require_signature and not (kid or sig):
            return self.own_key
        if not kid or not sig:
            raise _Refuse("unsigned", f"unsigned: {KID_HEADER}/{SIG_HEADER} headers missing")
        key = self.known_keys.get(kid)
        if key is None:
            raise _Refuse("unknown_key", f"unknown key id {kid[:64]!r}")
        if not m.signature_ok(key.secret, item.payload, sig):
            raise _Refuse("bad_signature", f"bad signature (key {kid!r})", kid)
        return key

    async def _sessions(self, env: Envelope, key: m.WorkerKey, identities: dict) -> list[str]:
        """The sessions a request reaches, checked against what Redis holds (never the message)."""
        if env.session_id:
            exists, user, thread = identities[env.session_id]
            if not exists:
                raise _Refuse("unknown_session", f"no session {env.session_id!r} (never created, or expired)")
            if not key.allows(env.session_id, user, thread):
                raise _Refuse("out_of_scope", f"key {key.kid!r} may not reach this session")
            return [env.session_id]
        if key.scoped and not (env.user in key.users if env.user else env.thread in key.threads):
            raise _Refuse("out_of_scope", f"key {key.kid!r} may not reach this {'user' if env.user else 'thread'}")
        live = await self.pub.live_sessions(env.target)
        if not live:
            what = f"user {env.user!r}" if env.user else f"thread {env.thread!r}"
            raise _Refuse("no_live_session", f"no live session for {what}")
        return live

    async def dead_letter(self, refused: list[Refused]) -> None:
        """Write ``refused`` to cl-scale's dead-letter stream (one round trip)."""
        pipe = self.pub.redis.pipeline(transaction=False)
        for r in refused:
            body = r.incoming.payload[: self.max_bytes + m.FRAMING_BYTES]
            await dead_letters.add(pipe, self.pub.keys.dead_letters, kid=r.kid, body=body,
                                   sig=r.incoming.header(SIG_HEADER) or "", code=r.code,
                                   reason=f"{self.kind}: {r.reason}", session=r.session)
        await pipe.execute()
        for r in refused:
            log.info("%s: refused a message (%s): %s", self.kind, r.code, r.reason)


async def _sleep(seconds: float) -> bool:
    """The default ``wait`` of ``Bridge.forward``: sleep, never stop."""
    await asyncio.sleep(seconds)
    return True


class Backpressure(Exception):
    """A connected session's outbox is full: retry the batch later, unacknowledged."""


class _Refuse(Exception):
    def __init__(self, code: str, reason: str, kid: str = ""):
        super().__init__(reason)
        self.code, self.reason, self.kid = code, reason, kid
