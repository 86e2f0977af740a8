"""Every use of AutoGen internals, in one place, with the tested range pinned.

cl-scale needs one thing AutoGen's public API does not offer: to know when a
``GrpcWorkerAgentRuntime`` lost its host (0.7 never reconnects, nor says so). That is read from the
runtime's host connection task. If a release moves it, ``check()`` fails at start with a message
naming the versions, instead of a process that silently never notices a lost host.
"""

from __future__ import annotations

import asyncio
from importlib.metadata import PackageNotFoundError, version

#: The AutoGen releases this module was tested against (pyproject's autogen extra).
TESTED = ("0.7",)
PACKAGES = ("autogen-core", "autogen-ext")


class AutoGenMissing(ImportError):
    """No tested AutoGen: an ImportError, so ``import cl_scale.integrations.autogen`` fails as a missing
    extra does, with the reason and the fix as its message."""


def check() -> None:
    """Raise ``AutoGenMissing`` (one line, how to fix) unless a tested AutoGen with gRPC is installed."""
    for package in PACKAGES:
        try:
            found = version(package)
        except PackageNotFoundError:
            raise AutoGenMissing(f"{package} is not installed: pip install 'cl-scale[autogen]'") from None
        if not found.startswith(TESTED):
            raise AutoGenMissing(f"{package} {found} is not a tested release (tested: {', '.join(TESTED)}.x): "
                                 "pip install 'cl-scale[autogen]'")
    try:
        from autogen_ext.runtimes.grpc import GrpcWorkerAgentRuntime  # noqa: F401
    except ImportError as exc:
        raise AutoGenMissing(f"AutoGen's gRPC runtime cannot be imported ({exc}): pip install 'cl-scale[autogen]'") \
            from None
    probe = GrpcWorkerAgentRuntime.__init__.__code__.co_names
    if "_host_connection" not in probe:
        raise AutoGenMissing("this AutoGen's GrpcWorkerAgentRuntime has no _host_connection: cl-scale cannot "
                             "tell when it loses its host (tested: autogen-ext 0.7.x)")


async def connection_lost(runtime, poll: float = 0.5) -> None:
    """Return when ``runtime`` (a started ``GrpcWorkerAgentRuntime``) has lost its host: its stream's
    read task ended (EOF or an error) or the runtime's read loop died."""
    while True:
        host = getattr(runtime, "_host_connection", None)
        task = getattr(host, "_connection_task", None)
        read = getattr(runtime, "_read_task", None)
        if host is None or task is None or task.done() or (read is not None and read.done()):
            return
        await asyncio.sleep(poll)
