"""The ``cl-scale`` command: a thin typer layer over the config, render, runtime and cluster modules.

Each group of commands lives in its own module and registers itself on ``app``. Every error a user
can cause is a :class:`cl_scale.errors.UserError`; ``main`` prints it as one line and exits 2.
"""

from __future__ import annotations

import signal
import sys

import typer

from cl_scale.errors import UserError, shown

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
from cl_scale.cli import bridge_cmds  # noqa: E402,F401,I001


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
            typer.echo(f"error: {_usage_line(exc, sys.argv[1:])}", err=True)
            sys.exit(2)
        raise


def _usage_line(exc, argv: list[str]) -> str:
    """Click's usage error as one line that names the option and the value given (click's own
    message names only the option): ``--port='abc': Input should be a valid integer``."""
    message = " ".join(exc.format_message().split())
    opts = getattr(getattr(exc, "param", None), "opts", None) or []
    for i, arg in enumerate(argv):
        for opt in opts:
            value = arg[len(opt) + 1:] if arg.startswith(opt + "=") else (
                argv[i + 1] if arg == opt and i + 1 < len(argv) else None)
            if value is not None:
                reason = message.split(": ", 1)[-1] if message.startswith("Invalid value") else message
                return f"{opt}={shown(value)}: {reason}"[:300]
    return message[:300]


if __name__ == "__main__":
    main()
