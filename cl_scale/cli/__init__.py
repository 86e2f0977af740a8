"""The ``cl-scale`` command: a thin typer layer over the config, render, runtime and cluster modules.

Each group of commands lives in its own module and registers itself on ``app``. Every error a user
can cause is a :class:`cl_scale.errors.UserError`; ``main`` prints it as one line and exits 2.
"""

from __future__ import annotations

import signal
import sys

import typer

from cl_scale.errors import UserError

app = typer.Typer(
    name="cl-scale",
    help=(
        "Scale a Chainlit app to N single-worker instances behind a sticky load balancer.\n\n"
        "Examples:\n\n"
        "  cl-scale init deploy --app app.py --replicas 3\n\n"
        "  cl-scale render nginx --set replicas=4 --out -\n\n"
        "  cl-scale run app.py --port 8001 --redis-url redis://localhost:6379/0\n\n"
        "  cl-scale up app.py --replicas 3"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)



@app.callback()
def _root() -> None:
    """Keep ``cl-scale`` a command group even while only one command is registered."""


# Command modules register themselves on ``app`` when imported.
from cl_scale.cli import cluster_cmds, load_cmds, render_cmds, runtime_cmds, worker_cmds  # noqa: E402,F401,I001


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main() -> None:
    # SIGTERM and SIGHUP stop a command the way Ctrl-C does: every `finally` runs, so commands that
    # started processes (bench, up, loadtest) stop them. (`cl-scale run` installs uvicorn's own.)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    try:
        code = app(standalone_mode=False)  # click returns typer.Exit's code instead of raising here
        if isinstance(code, int) and not isinstance(code, bool) and code:
            sys.exit(code)
    except UserError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # click usage errors (typer vendors click): one line, exit 2
        if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):
            message = " ".join(exc.format_message().split())
            typer.echo(f"error: {message[:300]}", err=True)
            sys.exit(2)
        raise


if __name__ == "__main__":
    main()
