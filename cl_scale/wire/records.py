"""The session record (``Keyspace.session``) and chat context (``Keyspace.context``) formats.

The owning instance writes them (``wire.scripts.SESSION_SAVE``); peers restore a session from
them; gateways and publishers read ``owner``, ``user`` and ``thread`` to route and to check scopes
without parsing the snapshot. Written only here, parsed only here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

#: Fields of the session hash.
OWNER, RUN, VERSION, SOCKET, CONNECTED, USER, THREAD, DATA = ("owner", "run", "v", "socket", "connected", "user",
                                                             "thread", "data")


@dataclass
class SessionRecord:
    """One session as Redis holds it.

    :param owner: the owning instance's name (what peers and workers route by).
    :param run: the owning process (one per start): an instance restarted under the same name — a
        StatefulSet pod, ``cl-scale run`` — is a new owner: the owner's writes compare both.
    :param version: bumped by every write that changes the session (``SESSION_SAVE``): a claim
        succeeds only on the version it loaded, so a restore never overwrites a newer state.
    :param snapshot: the JSON-serialisable part of Chainlit's session (``runtime.chainlit.codec``).
    :param chat_context: chat-context messages in order (``_seq``), as Chainlit's ``to_dict``.
    """

    owner: str
    run: str = ""
    version: int = 0
    socket: str = ""
    connected: bool = False
    user: str | None = None
    thread: str | None = None
    snapshot: dict = field(default_factory=dict)
    chat_context: list[dict] = field(default_factory=list)

    @classmethod
    def from_redis(cls, raw: dict, context: dict | None = None) -> "SessionRecord | None":
        """Parse ``HGETALL session`` (+ ``HGETALL context``); None when there is no record.
        Raises ``ValueError`` when the record is unreadable."""
        if not raw or DATA.encode() not in raw:
            return None
        snapshot = json.loads(raw[DATA.encode()])
        if not isinstance(snapshot, dict):
            raise ValueError("snapshot is not an object")
        user = _text(raw.get(USER.encode()))
        thread = _text(raw.get(THREAD.encode()))
        if USER.encode() not in raw:  # written before these fields existed: read the snapshot
            user = ((snapshot.get("user") or {}).get("identifier")) or None
            thread = snapshot.get("thread_id") or None
        return cls(owner=_text(raw.get(OWNER.encode())) or "", run=_text(raw.get(RUN.encode())) or "",
                   version=int(raw.get(VERSION.encode()) or 0), socket=_text(raw.get(SOCKET.encode())) or "",
                   connected=raw.get(CONNECTED.encode()) == b"1", user=user, thread=thread, snapshot=snapshot,
                   chat_context=parse_context(context or {}))

    def fields(self) -> dict[str, str]:
        """What ``SESSION_SAVE`` writes (strings; empty = none)."""
        return {OWNER: self.owner, RUN: self.run, SOCKET: self.socket, CONNECTED: "1" if self.connected else "0",
                USER: self.user or "", THREAD: self.thread or "", DATA: json.dumps(self.snapshot, default=str)}


def parse_context(raw: dict) -> list[dict]:
    return sorted((json.loads(v) for v in raw.values()), key=lambda m: m.get("_seq", 0))


def context_entry(message: dict, seq: int) -> str:
    """One chat-context message as stored: Chainlit's dict plus its position."""
    return json.dumps({**message, "_seq": seq}, default=str)


def _text(value: bytes | None) -> str | None:
    return value.decode(errors="replace") if value else None


#: What ``read_identity`` asks for (``HMGET``); ``identity_from`` reads the answer.
IDENTITY_FIELDS = (OWNER, USER, THREAD)


def identity_from(row: list) -> tuple[bool, str | None, str | None] | None:
    """(exists, user, thread) from ``HMGET session IDENTITY_FIELDS``; None when the record predates
    the ``user``/``thread`` fields (then ``read_identity`` reads its snapshot)."""
    owner, user, thread = row
    if owner is None:
        return False, None, None
    if user is None and thread is None:
        return None
    return True, _text(user), _text(thread)


async def read_identity(redis, session_key: str) -> tuple[bool, str | None, str | None]:
    """(exists, user identifier, thread id) of a stored session, without its snapshot when the record
    has the ``user``/``thread`` fields (gateways and publishers check scopes with this)."""
    known = identity_from(await redis.hmget(session_key, *IDENTITY_FIELDS))
    if known is None:  # written before these fields existed
        raw = await redis.hget(session_key, DATA)
        snapshot = json.loads(raw) if raw else {}
        return True, ((snapshot.get("user") or {}).get("identifier")) or None, snapshot.get("thread_id") or None
    return known
