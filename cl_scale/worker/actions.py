"""What the worker-side commands do (``cl-scale send``, ``cl-scale dlq``), as plain functions: the
CLI parses and prints, these act. Errors a user can cause are ``UserError`` (one line)."""

from __future__ import annotations

import asyncio
import re
import time
from contextlib import asynccontextmanager

import redis.exceptions as redis_errors

from cl_scale.errors import UserError, shown
from cl_scale.wire import messages as m
from cl_scale.wire.connect import connect, why_unreachable
from cl_scale.wire.redis_url import redacted
from cl_scale.worker import dlq
from cl_scale.worker.publisher import DeliveryError, Publisher
from cl_scale.worker.settings import WorkerSettings


async def ping(redis, url: str) -> None:
    try:
        await asyncio.wait_for(redis.ping(), 3)
    except redis_errors.AuthenticationError:
        raise UserError(f"--redis-url={redacted(url)}: authentication failed (wrong user or password; "
                        "the password may come from REDIS_PASSWORD)") from None
    except Exception as exc:
        raise UserError(f"--redis-url={redacted(url)}: {why_unreachable(exc)}") from None


@asynccontextmanager
async def redis_for(settings: WorkerSettings):
    redis = connect(settings.redis_url)
    try:
        await ping(redis, settings.redis_url)
        yield redis
    finally:
        await redis.aclose()


async def key_accepted(redis, settings: WorkerSettings, kid: str) -> bool | None:
    """Does a live instance accept key ``kid``? None when no instance is live (nothing to ask)."""
    now = time.time()
    if not await redis.zcount(settings.keys.live_instances, now, "+inf"):
        return None
    return bool(await redis.zcount(settings.keys.key_accepted_by(kid), now, "+inf"))


async def send(settings: WorkerSettings, text: str, *, session: str | None = None, user: str | None = None,
               thread: str | None = None, author: str = "Worker", message_id: str | None = None,
               warn=lambda line: None) -> str:
    """Send one message to a session, or to every live session of a user or thread. With a session,
    ``user``/``thread`` are checks on it (as Redis holds it), not more targets. A key no live
    instance accepts is refused here, rather than accepted and dead-lettered."""
    check_message_args(text=text, session=session, user=user, thread=thread, author=author, message_id=message_id)
    key = settings.signing_key()
    pub = Publisher(settings.redis_url, key.kid, key.secret, prefix=settings.prefix, max_buffer=0,
                    outbox_max=settings.outbox_max, outbox_ttl=settings.outbox_ttl, announce=None)  # one-shot
    try:
        await ping(pub.redis, settings.redis_url)
        if session:
            exists, stored_user, stored_thread = await pub.session_identity(session)
            if not exists:
                raise UserError(f"--session {session}: no such session in Redis under prefix "
                                f"{settings.prefix!r} (it ended or expired, or the instances use another "
                                "CL_SCALE_PREFIX)")
            if user and stored_user != user:
                raise UserError(f"--session {session}: not a session of user {user!r}")
            if thread and stored_thread != thread:
                raise UserError(f"--session {session}: not in thread {thread!r}")
        accepted = await key_accepted(pub.redis, settings, key.kid)
        if accepted is False:
            raise UserError(f"worker key {key.kid!r}: no live instance accepts it (add it to their "
                            "CL_SCALE_WORKER_KEYS, or sign with one of theirs)")
        if accepted is None:
            warn(f"no live instance: cannot check key {key.kid!r}; the message waits in the outbox")
        try:
            if session:
                return await pub.send(session, text, message_id=message_id, author=author)
            if user:
                return await pub.send_to_user(user, text, message_id=message_id, author=author)
            return await pub.send_to_thread(thread, text, message_id=message_id, author=author)
        except (DeliveryError, ValueError) as exc:
            raise UserError(str(exc)) from None
    finally:
        try:
            await pub.aclose(timeout=2)
        except Exception:
            pass


def check_message_args(*, text: str, session=None, user=None, thread=None, author=None, message_id=None) -> None:
    """Every argument of a message, checked before anything is sent: one line naming the flag."""
    for flag, value, pattern, why in (
            ("--session", session, m.SESSION_ID_PATTERN, "8-128 of letters, digits, _ and -"),
            ("--user", user, m.NAME_PATTERN, "1-200 printable characters without { or }"),
            ("--thread", thread, m.NAME_PATTERN, "1-200 printable characters without { or }"),
            ("--id", message_id, m.MESSAGE_ID_PATTERN, "1-200 of letters, digits and ._:@-")):
        if value is not None and not re.fullmatch(pattern, value):
            raise UserError(f"{flag}={shown(value)}: must be {why}")
    if author is not None and (not author or len(author) > 200 or re.search(r"[\x00-\x1f\x7f]", author)):
        raise UserError(f"--author: must be 1-200 characters without control characters (got {len(author)})")
    try:
        size = len(text.encode())
    except UnicodeEncodeError:
        raise UserError("TEXT: not valid UTF-8") from None
    if size > m.MAX_BYTES:
        raise UserError(f"TEXT: {size} bytes (max {m.MAX_BYTES})")


async def list_letters(settings: WorkerSettings, limit: int) -> list[dict]:
    async with redis_for(settings) as redis:
        return [dlq.summary(letter) for letter in await dlq.list_letters(redis, settings.keys, limit)]


async def replay(settings: WorkerSettings, ids: list[str] | None, *, resign: bool) -> dlq.ReplayResult:
    signer = settings.signing_key() if resign else None
    verify = {**settings.known_keys, **({signer.kid: signer} if signer else {})}
    async with redis_for(settings) as redis:
        return await dlq.replay(redis, settings.keys, ids, outbox_max=settings.outbox_max,
                                outbox_ttl=settings.outbox_ttl, resign_with=signer, verify_keys=verify)


async def purge(settings: WorkerSettings, ids: list[str] | None) -> int:
    async with redis_for(settings) as redis:
        return await dlq.purge(redis, settings.keys, ids)
