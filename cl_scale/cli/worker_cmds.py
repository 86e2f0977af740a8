"""`cl-scale` commands of the worker path: send, dlq (list/replay/purge), gateway, redis-acl.

Parse, build ``WorkerSettings`` (flags, then the environment, then the local cluster), call one
function of ``cl_scale.worker.actions``, print.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Optional

import typer

from cl_scale.cli import app
from cl_scale.errors import UserError

dlq_app = typer.Typer(help="Inspect and recover dead-lettered worker messages.\n\nExamples:\n\n"
                      "  cl-scale dlq list --redis-url redis://127.0.0.1:6379/0\n\n"
                      "  cl-scale dlq replay --all\n\n  cl-scale dlq purge 1700000000000-0",
                      no_args_is_help=True)
app.add_typer(dlq_app, name="dlq")

_REDIS_HELP = "Redis URL (default: $CL_SCALE_REDIS_URL, else the local cluster's in --state-dir)."
_PREFIX_HELP = "Redis key prefix (default: $CL_SCALE_PREFIX, as the instances read it; else clscale)."
_STATE_HELP = "State directory of a local `cl-scale up` cluster (its Redis URL and development key)."


def _settings(redis_url=None, prefix=None, key_id=None, key=None, state_dir=Path(".cl-scale")):
    from cl_scale.worker.settings import WorkerSettings

    return WorkerSettings.from_env(redis_url=redis_url, prefix=prefix, key_id=key_id, key=key, state_dir=state_dir)


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


@app.command("send", help=(
    "Deliver a message into a chat through the worker path (signed, same as the SDK). Prints the "
    "message id. Run next to a `cl-scale up` cluster, it needs no setting at all.\n\n"
    "Examples:\n\n"
    "  cl-scale send --session 3f2c... 'build finished'\n\n"
    "  cl-scale send --user alice --author CI 'deploy done'\n\n"
    "  CL_SCALE_WORKER_KEY=k1:secret CL_SCALE_REDIS_URL=redis://redis:6379/0 cl-scale send --thread T1 hello"))
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
    state_dir: Path = typer.Option(Path(".cl-scale"), help=_STATE_HELP),
) -> None:
    from cl_scale.worker import actions

    if not text.strip():
        raise UserError("TEXT: must not be empty")
    if not (session or user or thread):
        raise UserError("target: give --session, --user or --thread")
    if thread and user and not session:
        raise UserError("target: --thread and --user name two targets; add --session or drop one")
    settings = _settings(redis_url, prefix, key_id, key, state_dir)
    mid = asyncio.run(actions.send(settings, text, session=session, user=user, thread=thread, author=author,
                                   message_id=message_id, warn=lambda line: typer.echo(f"warning: {line}", err=True)))
    typer.echo(mid)


@dlq_app.command("list", help=(
    "Dead letters, oldest first: id, code, session, message id, reason (control characters escaped).\n\n"
    "Examples:\n\n  cl-scale dlq list\n\n  cl-scale dlq list --json --limit 20"))
def dlq_list(redis_url: Optional[str] = typer.Option(None, "--redis-url", help=_REDIS_HELP),
             limit: int = typer.Option(100, min=1, max=100_000, help="At most this many."),
             as_json: bool = typer.Option(False, "--json", help="One JSON object per line."),
             prefix: Optional[str] = typer.Option(None, help=_PREFIX_HELP),
             state_dir: Path = typer.Option(Path(".cl-scale"), help=_STATE_HELP)) -> None:
    from cl_scale.worker import actions

    letters = asyncio.run(actions.list_letters(_settings(redis_url, prefix, state_dir=state_dir), limit))
    for d in letters:
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
    "(or --key-id/--key): a forged or out-of-scope message is never re-signed. Exit 1 if any letter "
    "was skipped (each is named on stderr).\n\n"
    "Examples:\n\n  cl-scale dlq replay 1700000000000-0\n\n  cl-scale dlq replay --all --resign"))
def dlq_replay(ids: list[str] = typer.Argument(None, metavar="[ID]..."),
               all_: bool = typer.Option(False, "--all", help="Every dead letter."),
               resign: bool = typer.Option(False, "--resign", help="Re-sign with your key (fresh time)."),
               redis_url: Optional[str] = typer.Option(None, "--redis-url", help=_REDIS_HELP),
               key_id: Optional[str] = typer.Option(None, "--key-id", help="Signing key id."),
               key: Optional[str] = typer.Option(None, "--key", help="Signing key (prefer $CL_SCALE_WORKER_KEY)."),
               prefix: Optional[str] = typer.Option(None, help=_PREFIX_HELP),
               state_dir: Path = typer.Option(Path(".cl-scale"), help=_STATE_HELP)) -> None:
    from cl_scale.worker import actions

    chosen = _ids(ids or [], all_)
    result = asyncio.run(actions.replay(_settings(redis_url, prefix, key_id, key, state_dir), chosen, resign=resign))
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
              prefix: Optional[str] = typer.Option(None, help=_PREFIX_HELP),
              state_dir: Path = typer.Option(Path(".cl-scale"), help=_STATE_HELP)) -> None:
    from cl_scale.worker import actions

    chosen = _ids(ids or [], all_)
    typer.echo(f"purged {asyncio.run(actions.purge(_settings(redis_url, prefix, state_dir=state_dir), chosen))}")


@app.command("gateway", help=(
    "Run the worker HTTP gateway alone (no Chainlit): POST /cl-scale/v1/sessions/{id}/messages ...\n\n"
    "Tokens from $CL_SCALE_GATEWAY_TOKENS (id:token[;users=a|b][;sessions=s]); messages are signed with "
    "$CL_SCALE_WORKER_KEY, else the first key of $CL_SCALE_WORKER_KEYS (or --key-id).\n\n"
    "With --grpc-port, also the gRPC gateway (clscale.v1.Gateway, the .proto in docs/grpc.md; health "
    "checking and reflection included). TLS on both ports with --tls-cert/--tls-key; with --tls-client-ca, "
    "only clients holding a certificate from that CA (mTLS).\n\n"
    "Examples:\n\n  cl-scale gateway --redis-url redis://127.0.0.1:6379/0 --port 8100\n\n"
    "  cl-scale gateway --grpc-port 50051 --tls-cert server.pem --tls-key server.key"))
def gateway_cmd(redis_url: Optional[str] = typer.Option(None, "--redis-url", help=_REDIS_HELP),
                host: str = typer.Option("127.0.0.1", help="Address to listen on."),
                port: int = typer.Option(8100, help="Port to listen on."),
                grpc_port: Optional[int] = typer.Option(None, "--grpc-port", help="Also serve gRPC on this port."),
                tls_cert: Optional[Path] = typer.Option(None, "--tls-cert", help="TLS: server certificate (PEM)."),
                tls_key: Optional[Path] = typer.Option(None, "--tls-key", help="TLS: its private key (PEM)."),
                tls_client_ca: Optional[Path] = typer.Option(None, "--tls-client-ca",
                                                            help="mTLS: accept only clients with a certificate "
                                                                 "signed by this CA (PEM)."),
                health_port: Optional[int] = typer.Option(None, "--health-port",
                                                          help="Plain HTTP /healthz and /readyz on this port "
                                                               "(probes; never TLS)."),
                key_id: Optional[str] = typer.Option(None, "--key-id", help="Which worker key signs."),
                prefix: Optional[str] = typer.Option(None, help=_PREFIX_HELP),
                state_dir: Path = typer.Option(Path(".cl-scale"), help=_STATE_HELP)) -> None:
    from cl_scale.gateway.app import from_worker_settings
    from cl_scale.gateway.server import serve

    for option, value in (("--port", port), ("--health-port", health_port)):
        if value is not None and not 1 <= value <= 65535:
            raise UserError(f"{option} {value}: must be between 1 and 65535")
    if health_port is not None and health_port in (port, grpc_port):
        raise UserError(f"--health-port {health_port}: must differ from --port and --grpc-port")
    tls = _tls(grpc_port, tls_cert, tls_key, tls_client_ca)
    settings = _settings(redis_url, prefix, key_id, state_dir=state_dir)
    settings.check_tls()
    serve(from_worker_settings(settings), host=host, port=port, grpc_port=grpc_port, tls=tls, health_port=health_port,
          announce=lambda url: typer.echo(f"cl-scale gateway: listening on {url} (Ctrl-C stops)", err=True))


def _tls(grpc_port, cert: Optional[Path], key: Optional[Path], client_ca: Optional[Path]):
    """The gateway's TLS files, checked before anything starts (a usage error names the option)."""
    if grpc_port is not None and not 1 <= grpc_port <= 65535:
        raise UserError(f"--grpc-port {grpc_port}: must be between 1 and 65535")
    given = {"--tls-cert": cert, "--tls-key": key, "--tls-client-ca": client_ca}
    if (cert is None) != (key is None) or (client_ca and cert is None):
        raise UserError("--tls-cert and --tls-key go together (and --tls-client-ca needs both)")
    for option, path in given.items():
        if path is not None and not path.is_file():
            raise UserError(f"{option} {path}: no such file")
    if cert is None:
        return None
    from cl_scale.gateway.grpc_gateway import TlsFiles

    return TlsFiles(str(cert), str(key), str(client_ca) if client_ca else None)


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
    import os

    from cl_scale.contract import DEFAULT_PREFIX
    from cl_scale.wire.keyspace import Keyspace

    if role not in ("worker", "instance"):
        raise UserError(f"ROLE={role[:40]!r}: must be worker or instance")
    try:
        keys = Keyspace(prefix or os.environ.get("CL_SCALE_PREFIX") or DEFAULT_PREFIX)
    except ValueError as exc:
        raise UserError(f"prefix: {exc}") from None
    typer.echo(" ".join(keys.acl_rules(role)))


@app.command("workers", help=(
    "List the workers reporting to Redis: SDK publishers, gateways and the workers announcing through them "
    "(gRPC Announce, HTTP POST /cl-scale/v1/workers/{id}), broker bridges: kind, version, last heartbeat, "
    "msgs/s, errors, healthy or stale (silent past 2 intervals).\n\n"
    "Exit code 1 when a worker is stale.\n\n"
    "Examples:\n\n  cl-scale workers\n\n  cl-scale workers --json | jq '.[] | select(.state == \"stale\")'"))
def workers_cmd(redis_url: Optional[str] = typer.Option(None, "--redis-url", help=_REDIS_HELP),
                prefix: Optional[str] = typer.Option(None, help=_PREFIX_HELP),
                as_json: bool = typer.Option(False, "--json", help="Print JSON."),
                state_dir: Path = typer.Option(Path(".cl-scale"), help=_STATE_HELP)) -> None:
    from cl_scale.worker import registry
    from cl_scale.worker.actions import ping

    settings = _settings(redis_url, prefix, state_dir=state_dir)

    async def read() -> list[dict]:
        from cl_scale.wire.connect import connect

        client = connect(settings.redis_url, timeout=2.0)
        try:
            await ping(client, settings.redis_url)
            return registry.read(await client.hgetall(settings.keys.workers))
        finally:
            await client.aclose()

    entries = asyncio.run(read())
    if as_json:
        typer.echo(json.dumps(entries, indent=2))
    else:
        for e in entries:
            rate = e.get("rate")
            typer.echo(f"{e['state'].upper():8} {e.get('kind', '?'):12} {e['id']}  v{e.get('version') or '?'}  "
                       f"seen {e['age']:.0f}s ago  {rate if rate is not None else '?'} msgs/s  "
                       f"{e.get('sent', 0)} sent  {e.get('errors', 0)} errors")
        if not entries:
            typer.echo("no workers reporting")
    if any(e["state"] == "stale" for e in entries):
        raise typer.Exit(1)
