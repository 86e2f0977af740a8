"""`cl-scale` commands of the worker path: send, dlq (list/replay/purge), gateway."""

from __future__ import annotations

import asyncio
import json
import os
from typing import Optional

import typer

from cl_scale.cli import app
from cl_scale.errors import UserError

dlq_app = typer.Typer(help="Inspect and recover dead-lettered worker messages.\n\nExamples:\n\n"
                      "  cl-scale dlq list --redis-url redis://127.0.0.1:6379/0\n\n"
                      "  cl-scale dlq replay --all\n\n  cl-scale dlq purge 1700000000000-0",
                      no_args_is_help=True)
app.add_typer(dlq_app, name="dlq")

_REDIS_HELP = "Redis URL (default: $CL_SCALE_REDIS_URL)."
_PREFIX_HELP = "Redis key prefix (default: $CL_SCALE_PREFIX, as the instances read it; else clscale)."


def _redis_url(value: Optional[str]) -> str:
    from cl_scale.errors import ConfigError
    from cl_scale.redis_url import check, redacted, with_password

    url = value or os.environ.get("CL_SCALE_REDIS_URL") or os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
    try:
        check(url, allow_password=True)
    except ValueError as exc:
        raise ConfigError("redis-url", redacted(url), str(exc)) from None
    return with_password(url, os.environ.get("REDIS_PASSWORD"))


def _key(key_id: Optional[str], key: Optional[str]) -> tuple[str, str]:
    """--key-id/--key, else $CL_SCALE_WORKER_KEY_ID/$CL_SCALE_WORKER_KEY, else the first of
    $CL_SCALE_WORKER_KEYS (or the one named by --key-id)."""
    from cl_scale.worker.protocol import parse_keys

    key_id = key_id or os.environ.get("CL_SCALE_WORKER_KEY_ID")
    key = key or os.environ.get("CL_SCALE_WORKER_KEY")
    if key_id and key:
        return key_id, key
    keys = parse_keys(os.environ.get("CL_SCALE_WORKER_KEYS"))
    chosen = keys.get(key_id) if key_id else next(iter(keys.values()), None)
    if chosen is None:
        raise UserError("worker key: pass --key-id and --key, or set CL_SCALE_WORKER_KEY_ID/CL_SCALE_WORKER_KEY "
                        "or CL_SCALE_WORKER_KEYS")
    return chosen.kid, chosen.secret.decode()


async def _ping(redis, url: str) -> None:
    from cl_scale.redis_url import redacted

    try:
        await asyncio.wait_for(redis.ping(), 3)
    except Exception as exc:
        raise UserError(f"redis-url={redacted(url)}: unreachable ({exc.__class__.__name__})") from None


@app.command("send", help=(
    "Deliver a message into a chat through the worker path (signed, same as the SDK).\n\n"
    "Examples:\n\n"
    "  cl-scale send --session 3f2c... 'build finished'\n\n"
    "  cl-scale send --user alice --author CI 'deploy done'\n\n"
    "  CL_SCALE_WORKER_KEYS=k1:secret cl-scale send --thread T1 hello"))
def send_cmd(
    text: str = typer.Argument(..., metavar="TEXT", help="Message text."),
    session: Optional[str] = typer.Option(None, "--session", help="Chainlit session id."),
    user: Optional[str] = typer.Option(None, "--user", help="User identifier (all their sessions); with "
                                       "--session, the session must belong to this user."),
    thread: Optional[str] = typer.Option(None, "--thread", help="Thread id (its sessions); with --session, "
                                         "the session must be in this thread."),
    author: str = typer.Option("Worker", help="Author shown in the chat."),
    message_id: Optional[str] = typer.Option(None, "--id", help="Message id (idempotency key)."),
    redis_url: Optional[str] = typer.Option(None, "--redis-url", help=_REDIS_HELP),
    key_id: Optional[str] = typer.Option(None, "--key-id", help="Signing key id."),
    key: Optional[str] = typer.Option(None, "--key", help="Signing key (prefer $CL_SCALE_WORKER_KEY)."),
    prefix: Optional[str] = typer.Option(None, help=_PREFIX_HELP),
) -> None:
    if not text.strip():
        raise UserError("TEXT: must not be empty")
    if not (session or user or thread):
        raise UserError("target: give --session, --user or --thread")
    if thread and user and not session:
        raise UserError("target: --thread and --user name two targets; add --session or drop one")
    url = _redis_url(redis_url)
    kid, secret = _key(key_id, key)
    prefix = _prefix(prefix)
    typer.echo(asyncio.run(_send(url, kid, secret, prefix, text, session, user, thread, author, message_id)))


async def _send(url, kid, secret, prefix, text, session, user, thread, author, message_id) -> str:
    from cl_scale.worker import DeliveryError, Publisher

    pub = Publisher(url, kid, secret, prefix=prefix, max_buffer=0)
    try:
        await _ping(pub.redis, url)
        if session and (user or thread):  # extra names are checks on the session, not more targets
            raw = await pub.redis.hget(f"{prefix}:session:{{{session}}}", "data")
            snap = json.loads(raw) if raw else {}
            if user and ((snap.get("user") or {}).get("identifier")) != user:
                raise UserError(f"--session {session}: not a session of user {user!r}")
            if thread and snap.get("thread_id") != thread:
                raise UserError(f"--session {session}: not in thread {thread!r}")
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


async def _with_redis(url: str, fn):
    from cl_scale.runtime.redis_conn import connect

    redis = connect(url)
    try:
        await _ping(redis, url)
        return await fn(redis)
    finally:
        await redis.aclose()


def _ids(ids: list[str], all_: bool) -> list[str] | None:
    """The ids given (checked), or None for --all."""
    from cl_scale.worker.dlq import check_ids

    if not ids and not all_:
        raise UserError("give dead-letter ids (see `cl-scale dlq list`) or --all")
    if ids and all_:
        raise UserError("give dead-letter ids or --all, not both")
    try:
        return None if all_ else check_ids(ids)
    except ValueError as exc:
        raise UserError(str(exc)) from None


@dlq_app.command("list", help=(
    "Dead letters, oldest first: id, code, session, message id, reason (control characters escaped).\n\n"
    "Examples:\n\n  cl-scale dlq list\n\n  cl-scale dlq list --json --limit 20"))
def dlq_list(redis_url: Optional[str] = typer.Option(None, "--redis-url", help=_REDIS_HELP),
             limit: int = typer.Option(100, min=1, help="At most this many."),
             as_json: bool = typer.Option(False, "--json", help="One JSON object per line."),
             prefix: Optional[str] = typer.Option(None, help=_PREFIX_HELP)) -> None:
    from cl_scale.worker.dlq import list_letters

    prefix = _prefix(prefix)
    letters = asyncio.run(_with_redis(_redis_url(redis_url), lambda r: list_letters(r, prefix, limit)))
    for letter in letters:
        d = letter.summary()
        if as_json:
            typer.echo(json.dumps(d))
        else:
            typer.echo(f"{d['id']}  {d['code']}  session={d['session'] or '-'}  mid={d['mid'] or '-'}  "
                       f"reason={d['reason']}")
    if not as_json:
        typer.echo(f"{len(letters)} dead letter(s)", err=True)


@dlq_app.command("replay", help=(
    "Put dead letters back into their session's outbox; the owner verifies them again.\n\n"
    "--resign re-signs with your key and a fresh timestamp, and only letters refused as too_old, "
    "expired or outbox_full whose original signature verifies with a key in $CL_SCALE_WORKER_KEYS "
    "(or --key-id/--key): a forged or out-of-scope message is never re-signed.\n\n"
    "Examples:\n\n  cl-scale dlq replay 1700000000000-0\n\n  cl-scale dlq replay --all --resign"))
def dlq_replay(ids: list[str] = typer.Argument(None, metavar="[ID]..."),
               all_: bool = typer.Option(False, "--all", help="Every dead letter."),
               resign: bool = typer.Option(False, "--resign", help="Re-sign with --key-id/--key (fresh time)."),
               redis_url: Optional[str] = typer.Option(None, "--redis-url", help=_REDIS_HELP),
               key_id: Optional[str] = typer.Option(None, "--key-id", help="Signing key id."),
               key: Optional[str] = typer.Option(None, "--key", help="Signing key (prefer $CL_SCALE_WORKER_KEY)."),
               prefix: Optional[str] = typer.Option(None, help=_PREFIX_HELP)) -> None:
    from cl_scale.worker import dlq
    from cl_scale.worker.protocol import WorkerKey, parse_keys

    chosen = _ids(ids or [], all_)
    prefix = _prefix(prefix)
    signer = verify = None
    if resign:
        kid, secret = _key(key_id, key)
        signer = WorkerKey(kid=kid, secret=secret.encode())
        verify = {**parse_keys(os.environ.get("CL_SCALE_WORKER_KEYS")), kid: signer}
    limits = _worker_limits()
    result = asyncio.run(_with_redis(_redis_url(redis_url), lambda r: dlq.replay(
        r, prefix, chosen, outbox_max=limits.worker_outbox_max, outbox_ttl=limits.worker_outbox_ttl,
        resign_with=signer, verify_keys=verify)))
    for letter_id, why in result.skipped:
        typer.echo(f"skipped {letter_id}: {why}", err=True)
    typer.echo(f"replayed {result.replayed}, skipped {len(result.skipped)}")
    if result.skipped:
        raise typer.Exit(1)


@dlq_app.command("purge", help=(
    "Delete dead letters for good.\n\n"
    "Examples:\n\n  cl-scale dlq purge 1700000000000-0\n\n  cl-scale dlq purge --all"))
def dlq_purge(ids: list[str] = typer.Argument(None, metavar="[ID]..."),
              all_: bool = typer.Option(False, "--all", help="Every dead letter."),
              redis_url: Optional[str] = typer.Option(None, "--redis-url", help=_REDIS_HELP),
              prefix: Optional[str] = typer.Option(None, help=_PREFIX_HELP)) -> None:
    from cl_scale.worker.dlq import purge

    chosen = _ids(ids or [], all_)
    prefix = _prefix(prefix)
    typer.echo(f"purged {asyncio.run(_with_redis(_redis_url(redis_url), lambda r: purge(r, prefix, chosen)))}")


def _prefix(value: Optional[str]) -> str:
    """--prefix, else $CL_SCALE_PREFIX (as the instances read it), else the default."""
    from cl_scale.contract import DEFAULT_PREFIX
    from cl_scale.runtime.settings import SAFE_PREFIX

    prefix = value or os.environ.get("CL_SCALE_PREFIX") or DEFAULT_PREFIX
    if not SAFE_PREFIX.fullmatch(prefix):
        raise UserError(f"prefix={prefix[:64]!r}: must be 1-64 of [A-Za-z0-9._-]")
    return prefix


def _worker_limits():
    """Outbox bound and TTL as the instances read them (CL_SCALE_WORKER_OUTBOX_MAX / _TTL)."""
    from cl_scale.runtime.settings import RuntimeSettings, _env, _number

    return RuntimeSettings(
        worker_outbox_max=_number("CL_SCALE_WORKER_OUTBOX_MAX", _env("CL_SCALE_WORKER_OUTBOX_MAX", "1000"),
                                  int, 1, 1_000_000),
        worker_outbox_ttl=_number("CL_SCALE_WORKER_OUTBOX_TTL", _env("CL_SCALE_WORKER_OUTBOX_TTL", "3600"),
                                  float, 1, 30 * 86400))


@app.command("gateway", help=(
    "Run the worker HTTP gateway alone (no Chainlit): POST /cl-scale/v1/sessions/{id}/messages ...\n\n"
    "Tokens from $CL_SCALE_GATEWAY_TOKENS (id:token[;users=a|b][;sessions=s]); messages are signed with "
    "the first key of $CL_SCALE_WORKER_KEYS (or --key-id).\n\n"
    "Example:\n\n  cl-scale gateway --redis-url redis://127.0.0.1:6379/0 --port 8100"))
def gateway_cmd(redis_url: Optional[str] = typer.Option(None, "--redis-url", help=_REDIS_HELP),
                host: str = typer.Option("127.0.0.1", help="Address to listen on."),
                port: int = typer.Option(8100, help="Port to listen on."),
                key_id: Optional[str] = typer.Option(None, "--key-id", help="Which worker key signs."),
                prefix: Optional[str] = typer.Option(None, help=_PREFIX_HELP)) -> None:
    import uvicorn

    from cl_scale.gateway.app import Gateway, build_app
    from cl_scale.worker.protocol import parse_keys

    url = _redis_url(redis_url)
    prefix = _prefix(prefix)
    tokens, keys = os.environ.get("CL_SCALE_GATEWAY_TOKENS"), os.environ.get("CL_SCALE_WORKER_KEYS")
    if not parse_keys(tokens, "CL_SCALE_GATEWAY_TOKENS"):
        raise UserError("CL_SCALE_GATEWAY_TOKENS: no tokens set: every request would be refused")
    parsed = parse_keys(keys)
    if not parsed or (key_id and key_id not in parsed):
        raise UserError(f"CL_SCALE_WORKER_KEYS: no key {key_id or ''} to sign with")
    if not 1 <= port <= 65535:
        raise UserError(f"port={port}: must be between 1 and 65535")
    uvicorn.run(build_app(Gateway(url, tokens=tokens, worker_keys=keys, key_id=key_id, prefix=prefix)),
                host=host, port=port, log_level="warning")


@app.command("redis-acl", help=(
    "Print the Redis ACL rules of a cl-scale role, for `ACL SETUSER <user> on >PASSWORD <rules>`.\n\n"
    "worker: append to outboxes and wake owners, nothing else (no Socket.IO channels, no chat "
    "contexts, no deletes); instance: every cl-scale key and channel, no admin commands. "
    "See docs/security.md.\n\n"
    "Examples:\n\n"
    "  cl-scale redis-acl worker\n\n"
    "  redis-cli ACL SETUSER clscale-worker on '>pw' $(cl-scale redis-acl worker --prefix myapp)"))
def redis_acl_cmd(role: str = typer.Argument(..., metavar="ROLE", help="worker | instance"),
                  prefix: Optional[str] = typer.Option(None, help=_PREFIX_HELP)) -> None:
    from cl_scale.keyspace import acl_rules

    if role not in ("worker", "instance"):
        raise UserError(f"ROLE={role[:40]!r}: must be worker or instance")
    typer.echo(" ".join(acl_rules(_prefix(prefix), role)))
