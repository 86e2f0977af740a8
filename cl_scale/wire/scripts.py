"""The Lua scripts of the wire contract, each with the one function that builds its KEYS/ARGV.

Each script does one atomic step of the protocol; a worker in another language runs the same
script text with the same arguments (``docs/keyspace.md``). Names come from the keyspace,
dead-letter fields from ``wire.dead_letters``, the group name from ``keyspace.GROUP``.
"""

from __future__ import annotations

import time

from cl_scale.wire import dead_letters
from cl_scale.wire.keyspace import GROUP, Keyspace
from cl_scale.wire.records import SessionRecord


def _lua(text: str) -> str:
    return text.replace("$GROUP", GROUP).replace("$MAXLEN", str(dead_letters.MAXLEN))


# --------------------------------------------------------------------------- sessions
# Write a session if this process owns it, or claim it. KEYS: session, context, journal.
# ARGV: owner, claim (0/1), ttl, reset context (0/1), expected version, run, bump (0/1), live (0/1: the
# session's socket is connected to this process), k, then k user
# message ids answered by this write (deleted from the journal: settled in the same write as the reply's
# state, no round trip of their own), n fields, then n (field, value) pairs of the record, m upserts,
# then m (message id, json) pairs, then message ids to delete. The owner is a name *and* a run (the process): an instance restarted under its old name is a
# new owner, and the old process's late writes are refused. A claim is a compare-and-set on the
# record's version (``v``, bumped by every write that changes the session): it succeeds only if nobody
# wrote since the claimer loaded it (``expected version``; empty: there was no record). So of two
# instances restoring one session at once (a client that retried its handshake) exactly one wins and
# the other refuses its handshake; and a restore that loaded an older state than the owner has since
# written never overwrites it. With no record at all, the owner's write recreates it only while the
# session's socket is live here (Redis lost it; the owner still serves the session): a late write of a
# session whose client is gone never brings back a record that expired or was cleared (workers would
# queue messages for it instead of refusing an unknown session). Returns 0 when refused (a peer owns it /
# the claim is stale), 1 when written, 2 when there was nothing to write (no record, no live socket).
SESSION_SAVE = """
local cur = redis.call('HMGET', KEYS[1], 'owner', 'run', 'v')
if cur[1] then
  if ARGV[2] == '1' then
    if ARGV[5] ~= (cur[3] or '0') then return 0 end
  elseif cur[1] ~= ARGV[1] or (cur[2] or '') ~= ARGV[6] then
    return 0
  end
elseif ARGV[2] ~= '1' and ARGV[8] ~= '1' then
  return 2
end
local k = tonumber(ARGV[9])
for i = 10, 9 + k do redis.call('HDEL', KEYS[3], ARGV[i]) end
local nf = tonumber(ARGV[10 + k])
local at = 11 + k
for i = 0, nf - 1 do redis.call('HSET', KEYS[1], ARGV[at + 2 * i], ARGV[at + 2 * i + 1]) end
at = at + 2 * nf
if ARGV[7] == '1' then redis.call('HINCRBY', KEYS[1], 'v', 1) end
redis.call('EXPIRE', KEYS[1], ARGV[3])
if ARGV[4] == '1' then redis.call('DEL', KEYS[2]) end
local n = tonumber(ARGV[at])
at = at + 1
for i = 0, n - 1 do redis.call('HSET', KEYS[2], ARGV[at + 2 * i], ARGV[at + 2 * i + 1]) end
for i = at + 2 * n, #ARGV do redis.call('HDEL', KEYS[2], ARGV[i]) end
redis.call('EXPIRE', KEYS[2], ARGV[3])
return 1
"""


def session_save(ks: Keyspace, session_id: str, record: SessionRecord, *, ttl: int, claim: bool,
                 reset_context: bool, upserts: dict[str, str], removed, expected: SessionRecord | None = None,
                 bump: bool = True, settle=()) -> tuple[list, list]:
    """:param expected: the record a claim loaded (None: there was none).
    :param settle: user message ids this write answers (off ``Keyspace.journal``).
    :param bump: the write changes the session (False only for a bare connected-flag update, so a
        disconnect does not fail the claim of a peer the client is already reconnecting to)."""
    record_fields = record.fields()
    args: list = [record.owner, "1" if claim else "0", int(ttl), "1" if reset_context else "0",
                  str(expected.version) if expected else "", record.run, "1" if bump or claim else "0",
                  "1" if record.connected else "0", len(settle), *settle, len(record_fields)]
    for name, value in record_fields.items():
        args += [name, value]
    args.append(len(upserts))
    for message_id, stored in upserts.items():
        args += [message_id, stored]
    args += list(removed or ())
    return [ks.session(session_id), ks.context(session_id), ks.journal(session_id)], args


# Delete a session this instance owns. KEYS: session, context. ARGV: owner, run.
SESSION_DELETE = """
local cur = redis.call('HMGET', KEYS[1], 'owner', 'run')
if cur[1] == ARGV[1] and (cur[2] or '') == ARGV[2] then return redis.call('DEL', KEYS[1], KEYS[2]) end
return 0
"""


def session_delete(ks: Keyspace, session_id: str, owner: str, run: str = "") -> tuple[list, list]:
    return [ks.session(session_id), ks.context(session_id)], [owner, run]


# --------------------------------------------------------------------------- worker outboxes
# Append one signed entry to a session's outbox, atomically with its bookkeeping, and wake its owner.
# KEYS: outbox stream, dead letters, outbox index (the keys it writes).
# ARGV: kid, body, sig, max entries, ttl, now, session, wake channel prefix, session record key,
#       seen key. The last two are only read, and are passed as names rather than KEYS so that the
#       least-privilege worker ACL (Keyspace.acl_rules) needs read access to them only: Redis asks
#       read+write access for every key declared to EVALSHA. Both share the stream's hash tag.
# Returns 1 (queued), 0 (outbox full: dead-lettered), 2 (already rendered: nothing to do). That last
# check only saves work: the owner checks the id inside the verified body again, on every path.
# When the outbox was empty, the wake-up carries the entry itself (``session\nid\nkid\nsig\nbody``), so
# the owner renders it without reading the stream first. With one entry ahead (maybe being rendered
# by that fast path, which reads nothing after it) the wake-up is the session id alone. With more, a
# drain is already reading: it reads until the stream is empty, so no wake-up is sent (the owner's
# outbox sweep is the safety net).
OUTBOX_APPEND = _lua("""
if ARGV[11] == '1' and redis.call('EXISTS', ARGV[9]) == 0 then return 3 end
if redis.call('EXISTS', ARGV[10]) == 1 then return 2 end
local n = redis.call('XLEN', KEYS[1])
if n >= tonumber(ARGV[4]) then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', $MAXLEN, '*', 'kid', ARGV[1], 'body', ARGV[2], 'sig', ARGV[3],
             'code', 'outbox_full', 'reason', 'outbox full: ' .. n .. ' waiting (max ' .. ARGV[4] .. ')',
             'session', ARGV[7], 'at', ARGV[6])
  return 0
end
local id = redis.call('XADD', KEYS[1], '*', 'kid', ARGV[1], 'body', ARGV[2], 'sig', ARGV[3])
pcall(redis.call, 'XGROUP', 'CREATE', KEYS[1], '$GROUP', '0')
redis.call('EXPIRE', KEYS[1], math.floor(tonumber(ARGV[5]) * 2 + 60))
redis.call('ZADD', KEYS[3], 'NX', ARGV[6], ARGV[7])
local owner = redis.call('HGET', ARGV[9], 'owner')
if owner then
  -- kid and session are the only free-form fields before the body: a newline would shift the split
  if n == 0 and not string.find(ARGV[1] .. ARGV[7], '\\n', 1, true) then
    redis.call('PUBLISH', ARGV[8] .. owner, ARGV[7] .. '\\n' .. id .. '\\n' .. ARGV[1] .. '\\n' .. ARGV[3] .. '\\n' .. ARGV[2])
  elseif n <= 1 then
    redis.call('PUBLISH', ARGV[8] .. owner, ARGV[7])
  end
end
return 1
""")


def outbox_append(ks: Keyspace, session_id: str, entry_id: str, kid: str, body: bytes, sig: str, *,
                  outbox_max: int, ttl: float, require_session: bool = False) -> tuple[list, list]:
    """(KEYS, ARGV) of ``OUTBOX_APPEND`` for one entry (SDK, gateways, ``cl-scale dlq replay``). With
    ``require_session``, an entry for a session Redis does not hold is not appended (result 3): the
    existence check rides in the append's own round trip."""
    keys = [ks.outbox(session_id), ks.dead_letters, ks.outbox_index]
    args = [kid, body, sig, outbox_max, int(ttl), f"{time.time():.3f}", session_id, ks.wake_channel_prefix,
            ks.session(session_id), ks.seen(session_id, entry_id), "1" if require_session else "0"]
    return keys, args


# Settle one delivered batch in one round trip: ack and delete the handled entries, mark the rendered
# ones seen, dead-letter the refused ones, and drop the session from the outbox index if its stream is
# really empty (a publish may have raced in). KEYS: outbox, outbox index, dead letters, then the seen
# keys to set. ARGV: session, dedupe ttl, now, n handled entry ids, the ids, then
# (kid, body, sig, code, reason) per dead letter.
SETTLE = _lua("""
local sid, ttl, now, n = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
if n > 0 then
  local ids = {unpack(ARGV, 5, 4 + n)}
  pcall(redis.call, 'XACK', KEYS[1], '$GROUP', unpack(ids))
  redis.call('XDEL', KEYS[1], unpack(ids))
end
for k = 4, #KEYS do redis.call('SET', KEYS[k], 1, 'EX', ttl) end
for i = 5 + n, #ARGV, 5 do
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', $MAXLEN, '*', 'kid', ARGV[i], 'body', ARGV[i + 1],
             'sig', ARGV[i + 2], 'code', ARGV[i + 3], 'reason', ARGV[i + 4], 'session', sid, 'at', now)
end
if redis.call('XLEN', KEYS[1]) == 0 then redis.call('ZREM', KEYS[2], sid) end
return 1
""")


def settle(ks: Keyspace, session_id: str, handled: list, seen_keys: list[str], dead: list[tuple], *,
           dedupe_ttl: int) -> tuple[list, list]:
    """``dead``: (stream fields, code, reason) per refused entry."""
    keys = [ks.outbox(session_id), ks.outbox_index, ks.dead_letters, *seen_keys]
    args = [session_id, int(dedupe_ttl), f"{time.time():.3f}", len(handled), *handled]
    for raw, code, reason in dead:
        args += [raw.get(b"kid", b""), raw.get(b"body", b""), raw.get(b"sig", b""), code, reason]
    return keys, args
