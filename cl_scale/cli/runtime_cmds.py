"""Commands that run instances: ``run`` (the container entrypoint)."""

from __future__ import annotations

from typing import Optional

import typer

from cl_scale.cli import app


@app.command(
    "run",
    help=(
        "Run one instance: an unmodified Chainlit app, single worker, wired to Redis.\n\n"
        "This is the container entrypoint; run one per core/pod behind a sticky balancer.\n\n"
        "Examples:\n\n"
        "  cl-scale run app.py --port 8001 --redis-url redis://127.0.0.1:6379/0\n\n"
        "  CL_SCALE_REDIS_URL=rediss://redis:6380/0 cl-scale run app.py --host 0.0.0.0 --admin-port 9090"
    ),
)
def run_cmd(
    app_path: str = typer.Argument(..., metavar="APP.py", help="The Chainlit app file."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(8000, help="Port to listen on."),
    redis_url: Optional[str] = typer.Option(
        None, "--redis-url", help="redis://, rediss://, unix:// or redis+sentinel:// URL "
        "(default: $CL_SCALE_REDIS_URL; the password may come from $REDIS_PASSWORD)."),
    instance_id: Optional[str] = typer.Option(None, help="Unique instance name (default: host name + random)."),
    advertise_url: Optional[str] = typer.Option(None, help="URL peers use to reach this instance directly."),
    admin_port: Optional[int] = typer.Option(
        None, help="Serve /metrics and the worker gateway on this port only (default: "
                   "$CL_SCALE_ADMIN_PORT; unset: on --port)."),
    headless: bool = typer.Option(True, "--headless/--open", help="Do not open a browser (chainlit flag)."),
    debug: bool = typer.Option(False, "--debug", "-d", help="Debug logging (chainlit flag)."),
    root_path: str = typer.Option("", help="Sub-path the app is served under (chainlit flag)."),
) -> None:
    from cl_scale.runtime.launcher import run
    from cl_scale.runtime.settings import RuntimeSettings

    settings = RuntimeSettings.from_env(redis_url=redis_url, host=host, port=port, instance_id=instance_id,
                                        advertise_url=advertise_url, admin_port=admin_port)
    run(app_path, settings, headless=headless, debug=debug, root_path=root_path)
