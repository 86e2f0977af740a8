"""The Redis keyspace: every key and channel cl-scale reads or writes, and who may touch what.

No heavy imports: the render commands read the ACL roles from here.
"""

from __future__ import annotations

#: Commands each role runs (redis-py also tries CLIENT SETINFO, Redis >= 7.2, and ignores a refusal).
_CONNECTION = ["+ping", "+client|setname", "+hello", "+select"]
_SCRIPTS = ["+evalsha", "+eval", "+script|load", "+script|exists"]


def acl_rules(prefix: str, role: str) -> list[str]:
    """Redis ACL rules (``ACL SETUSER name on >password <rules>``) for a cl-scale role.

    ``worker``: what the SDK, ``cl-scale send`` and the gateway need to append to outboxes and wake
    owners — read the session record (owner, user, thread) and the fan-out indexes, append to
    outbox streams and the dead-letter stream, publish on wake-up channels. Not the Socket.IO
    channels (a raw emit bypasses signing), not the chat contexts, no deletes.
    ``instance``: every key and channel under the prefix, no admin or dangerous commands.
    Anyone with the ``default`` user (or any user with write access to these keys) bypasses
    signing entirely: give workers their own user."""
    if role == "worker":
        return ["resetkeys", "resetchannels", "-@all", *_CONNECTION, *_SCRIPTS,
                "+xadd", "+xlen", "+xgroup|create", "+expire", "+zadd", "+hget", "+exists", "+smembers",
                "+publish",
                f"~{prefix}:wk:s:*", f"~{prefix}:wk:dlq", f"~{prefix}:wk:outboxes",
                f"%R~{prefix}:session:*", f"%R~{prefix}:wk:seen:*", f"%R~{prefix}:wk:user:*",
                f"%R~{prefix}:wk:thread:*", f"&{prefix}:wk:wake:*"]
    if role == "instance":
        return ["resetkeys", "resetchannels", "+@all", "-@admin", "-@dangerous",
                "+client|setname", "+info", f"~{prefix}:*", f"&{prefix}:*"]
    raise ValueError(f"unknown role {role!r} (worker, instance)")
