"""The Redis keyspace: every key and channel cl-scale reads or writes, in one place.

This is the wire contract every process implements — instances, the worker SDK, gateways, the CLI,
and workers written in other languages (``docs/keyspace.md`` is this module as a table). Nothing
outside this module spells a key. No heavy imports: the render commands read the ACL roles here.

Keys that belong to one session carry the session id as a hash tag (``{sid}``), so a session's
record, chat context, outbox, seen marks and attempt counters live in one Redis Cluster slot.
"""

from __future__ import annotations

import re

from cl_scale.contract import DEFAULT_PREFIX

#: Chainlit session ids (uuid4s): ids used in keys, channels and log lines match this, in full.
SESSION_ID = re.compile(r"[A-Za-z0-9_-]{8,128}")
#: Prefixes and instance ids end up in every key / channel name.
SAFE_PREFIX = re.compile(r"[A-Za-z0-9._-]{1,64}")

#: The outbox streams' consumer group and its one consumer: one owner at a time, so entries a dead
#: owner left pending are read first by the next one (order holds across a move).
GROUP = "deliver"
CONSUMER = "owner"

#: How many users' messages the requests stream keeps (approximately; oldest trimmed first).
REQUESTS_MAXLEN = 10_000

#: Room names Socket.IO sessions join (stable across reconnects; the socket id is not).
ROOM_KINDS = ("session", "user", "thread")


def room_name(kind: str, ident: str) -> str:
    """``session:<id>``, ``user:<identifier>``, ``thread:<id>``."""
    if kind not in ROOM_KINDS:
        raise ValueError(f"unknown room kind {kind!r}")
    return f"{kind}:{ident}"


def valid_session_id(value: object) -> bool:
    return isinstance(value, str) and SESSION_ID.fullmatch(value) is not None


class Keyspace:
    """Key and channel names under one prefix (``CL_SCALE_PREFIX``, default ``clscale``).

    :param prefix: what every key and channel starts with, so several apps can share one Redis.
    """

    def __init__(self, prefix: str = DEFAULT_PREFIX):
        if not SAFE_PREFIX.fullmatch(prefix or ""):
            raise ValueError("prefix must be 1-64 of [A-Za-z0-9._-]")
        self.prefix = prefix

    def __repr__(self) -> str:
        return f"Keyspace({self.prefix!r})"

    # -- sessions (written by the owning instance) -----------------------------------------------
    def session(self, session_id: str) -> str:
        """Hash: ``owner``, ``run``, ``v``, ``socket``, ``connected``, ``user``, ``thread``, ``data`` (JSON snapshot)."""
        return f"{self.prefix}:session:{{{session_id}}}"

    def context(self, session_id: str) -> str:
        """Hash: chat-context message id -> message JSON (with its ``_seq``)."""
        return f"{self.prefix}:ctx:{{{session_id}}}"

    def journal(self, session_id: str) -> str:
        """Hash: user message id -> JSON (``payload``, ``state`` running|pending, ``owner``, ``at``,
        ``attempts``, ``reply``): the session's messages whose handler has not finished
        (``runtime.journal``). Same TTL as the session."""
        return f"{self.prefix}:journal:{{{session_id}}}"

    def uploads(self, session_id: str) -> str:
        """Hash: file id -> bytes, and ``__bytes`` -> their total: a session's uploads when
        ``CL_SCALE_UPLOADS=redis`` (``runtime.uploads``). TTL: the session's."""
        return f"{self.prefix}:uploads:{{{session_id}}}"

    def instance(self, instance_id: str) -> str:
        """Hash: ``url`` (advertised address for HTTP forwarding), ``pid``, ``started``; short TTL."""
        return f"{self.prefix}:instance:{instance_id}"

    @property
    def live_instances(self) -> str:
        """Sorted set: instance id -> unix time its registration expires (refreshed every few seconds)."""
        return f"{self.prefix}:instances"

    def key_accepted_by(self, kid: str) -> str:
        """Sorted set: ids of the instances accepting worker key ``kid`` -> expiry (as above). Lets a
        sender refuse a message no instance would accept, instead of seeing it dead-lettered."""
        return f"{self.prefix}:wk:kid:{kid}"

    # -- Socket.IO routing (instances only) --------------------------------------------------------
    def room(self, namespace: str, room: str) -> str:
        """Set: ids of the instances holding a member of the room (TTL, refreshed by holders)."""
        return f"{self.prefix}:room:{namespace}:{room}"

    def sio_channel(self, instance_id: str) -> str:
        """Pub/sub: python-socketio messages for one instance (emits to rooms it holds, callbacks)."""
        return f"{self.prefix}:sio:inst:{instance_id}"

    @property
    def sio_broadcast(self) -> str:
        """Pub/sub: room-less emits, heard by every instance."""
        return f"{self.prefix}:sio:all"

    # -- worker delivery -----------------------------------------------------------------------------
    def outbox(self, session_id: str) -> str:
        """Stream: the session's signed worker entries (``kid``, ``body``, ``sig``); group ``GROUP``."""
        return f"{self.prefix}:wk:s:{{{session_id}}}"

    @property
    def outbox_index(self) -> str:
        """Sorted set: session id -> time its oldest waiting entry was written (the janitor's list)."""
        return f"{self.prefix}:wk:outboxes"

    @property
    def dead_letters(self) -> str:
        """Stream: refused entries with ``code`` and ``reason`` (``wire.dead_letters``), capped."""
        return f"{self.prefix}:wk:dlq"

    def seen(self, session_id: str, entry_id: str) -> str:
        """String: set once the entry was rendered; a later entry with this id is a duplicate."""
        return f"{self.prefix}:wk:seen:{{{session_id}}}:{entry_id}"

    def attempts(self, session_id: str) -> str:
        """Hash: stream entry id -> failed render attempts."""
        return f"{self.prefix}:wk:tries:{{{session_id}}}"

    def wake_channel(self, instance_id: str) -> str:
        """Pub/sub: wake-ups for the sessions one instance owns (``wire.messages.format_wake``)."""
        return f"{self.wake_channel_prefix}{instance_id}"

    @property
    def wake_channel_prefix(self) -> str:
        return f"{self.prefix}:wk:wake:"

    def user_sessions(self, identifier: str) -> str:
        """Set: live session ids of a user (fan-out target ``user``)."""
        return f"{self.prefix}:wk:user:{identifier}"

    def thread_sessions(self, thread_id: str) -> str:
        """Set: live session ids of a thread (fan-out target ``thread``)."""
        return f"{self.prefix}:wk:thread:{thread_id}"

    @property
    def workers(self) -> str:
        """Hash: worker id -> JSON heartbeat (``worker.registry``: kind, version, interval, ``at``,
        counts, rate; a bridge's broker, lag and connection), written by SDK publishers, gateways (for
        themselves and for the workers announcing through them) and bridges; read by ``cl-scale
        status`` and the instances' ``/metrics``."""
        return f"{self.prefix}:wk:workers"

    @property
    def requests(self) -> str:
        """Stream: users' messages (``session``, ``thread``, ``user``, ``message_id``, ``text``,
        ``author``, ``at``), written by the instances when ``CL_SCALE_PUBLISH_REQUESTS`` is on, capped
        at ``REQUESTS_MAXLEN``; read by the gRPC gateway's ``Subscribe`` (workers without Redis)."""
        return f"{self.prefix}:wk:requests"

    @property
    def janitor_lock(self) -> str:
        """String: which instance sweeps expired outboxes this round (short TTL)."""
        return f"{self.prefix}:wk:janitor"

    #: Keys that never expire: the outbox index (entries removed by the janitor), the dead-letter
    #: stream (capped at ``dead_letters.MAXLEN``; purge with ``cl-scale dlq purge``), the worker
    #: registry (one field per worker, removed when it stops cleanly; stale ones shown as such) and the requests
    #: stream (capped at ``REQUESTS_MAXLEN``).
    def permanent(self) -> set[str]:
        return {self.outbox_index, self.dead_letters, self.workers, self.requests}

    # -- Redis ACL ---------------------------------------------------------------------------------
    def acl_rules(self, role: str) -> list[str]:
        """Redis ACL rules (``ACL SETUSER name on >password <rules>``) of a cl-scale role.

        ``worker``: what the SDK, ``cl-scale send`` and gateways need to append to outboxes and wake
        owners — read session records and the fan-out indexes, append to outbox streams and the
        dead-letter stream, publish on wake-up channels, and write their heartbeat in the registry. Not the Socket.IO channels (a raw emit
        bypasses signing), not chat contexts, no deletes. Redis requires read+write access to every
        key declared to EVALSHA, so the publish script reads the session record and seen key by
        name instead of declaring them (``wire.scripts.OUTBOX_APPEND``).
        ``instance``: every key and channel under the prefix, no admin or dangerous commands."""
        p = self.prefix
        if role == "worker":
            return ["resetkeys", "resetchannels", "-@all", *_CONNECTION, *_SCRIPTS,
                    "+xadd", "+xlen", "+xgroup|create", "+expire", "+zadd", "+hget", "+hmget", "+exists",
                    "+smembers", "+publish", "+hset", "+hdel", "+xread", "+xrevrange", "+wait",
                    f"~{p}:wk:s:*", f"~{p}:wk:dlq", f"~{p}:wk:outboxes", f"~{p}:wk:workers",
                    "+zcount", f"%R~{p}:session:*", f"%R~{p}:wk:seen:*", f"%R~{p}:wk:user:*",
                    f"%R~{p}:wk:thread:*", f"%R~{p}:instances", f"%R~{p}:wk:kid:*", f"%R~{p}:wk:requests",
                    f"&{p}:wk:wake:*"]
        if role == "instance":
            return ["resetkeys", "resetchannels", "+@all", "-@admin", "-@dangerous", f"~{p}:*", f"&{p}:*"]
        raise ValueError(f"unknown role {role!r} (worker, instance)")


#: Commands every role runs on connect (redis-py also tries CLIENT SETINFO, Redis >= 7.2, and
#: ignores a refusal) and for scripts.
_CONNECTION = ["+ping", "+client|setname", "+hello", "+select"]
_SCRIPTS = ["+evalsha", "+eval", "+script|load", "+script|exists"]


def acl_rules(prefix: str, role: str) -> list[str]:
    return Keyspace(prefix).acl_rules(role)
