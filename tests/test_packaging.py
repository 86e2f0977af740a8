"""What ``pip install cl-scale`` and ``pip install 'cl-scale[loadtest]'`` promise: every third-party
module cl-scale imports is declared, in the base requirements or in the extra of the commands that
use it, and the commands of that extra run (``make test`` installs ``.[test]``, which pulls in
``.[loadtest]``: that install is the test of the extra)."""

from __future__ import annotations

import ast
import subprocess
import sys
from importlib.metadata import packages_distributions, requires
from pathlib import Path

import pytest
from packaging.requirements import Requirement

PACKAGE = Path(__file__).resolve().parents[1] / "cl_scale"
#: Folders whose modules run only under ``cl-scale loadtest`` / ``cl-scale bench``.
LOADTEST_ONLY = ("loadtest", "bench")
#: Modules that run only under ``cl-scale bridge`` or in an app that publishes outbound (the
#: ``bridges`` extra: ``kafka`` + ``amqp``).
BRIDGES_ONLY = ("bridge", "outbound.py")
#: Modules that run only under ``cl-scale gateway --grpc-port`` (the ``grpc`` extra).
GRPC_ONLY = ("gateway/grpc_gateway.py",)


def declared(extra: str | None) -> set[str]:
    """Normalised names of the distributions installed without extras (None) or with ``extra``
    (following ``cl-scale[other]`` to that extra's own)."""
    out = set()
    for line in requires("cl-scale") or []:
        req = Requirement(line)
        if req.marker is None or (extra and req.marker.evaluate({"extra": extra})):
            name = req.name.lower().replace("_", "-")
            if name == "cl-scale" and req.marker is not None:
                for other in req.extras:
                    out |= declared(other)
            else:
                out.add(name)
    return out


def imported(paths) -> set[str]:
    names = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names


def distributions(modules: set[str]) -> set[str]:
    dists = packages_distributions()
    out = set()
    for mod in modules:
        if mod in sys.stdlib_module_names or mod in ("cl_scale", "__future__"):
            continue
        found = dists.get(mod)
        assert found, f"{mod} is imported but installed by no distribution"
        out.add(found[0].lower().replace("_", "-"))
    return out


def is_loadtest(path: Path) -> bool:
    return path.relative_to(PACKAGE).parts[0] in LOADTEST_ONLY


def is_bridge(path: Path) -> bool:
    return path.relative_to(PACKAGE).parts[0] in BRIDGES_ONLY


def is_grpc(path: Path) -> bool:
    return path.relative_to(PACKAGE).as_posix() in GRPC_ONLY


#: The AutoGen integration and its benchmark: the ``autogen`` extra.
AUTOGEN_ONLY = ("integrations/autogen", "bench/autogen.py")


def is_autogen(path: Path) -> bool:
    return path.relative_to(PACKAGE).as_posix().startswith(AUTOGEN_ONLY)


def test_every_import_is_declared_where_it_is_used():
    files = list(PACKAGE.rglob("*.py"))
    # Chainlit (pinned) brings these, and cl-scale uses them as Chainlit's parts: its server, its app.
    through_chainlit = {"starlette", "uvicorn", "python-engineio", "packaging", "nest-asyncio"}
    missing_base = distributions(imported(p for p in files if not (is_loadtest(p) or is_bridge(p) or is_grpc(p)
                                                                  or is_autogen(p)))) - declared(None) - through_chainlit
    assert not missing_base, f"imported by cl-scale but not declared: {sorted(missing_base)}"
    missing_autogen = distributions(imported(p for p in files if is_autogen(p))) - declared(None) \
        - declared("autogen") - declared("loadtest") - through_chainlit
    assert not missing_autogen, f"imported by the AutoGen integration but not in the autogen extra: {missing_autogen}"
    missing_extra = distributions(imported(p for p in files if is_loadtest(p) and not is_autogen(p))) \
        - declared("loadtest") - through_chainlit
    assert not missing_extra, f"imported by loadtest/bench but not in the loadtest extra: {sorted(missing_extra)}"
    bridges = declared("bridges") | declared("kafka") | declared("amqp")
    missing_bridges = distributions(imported(p for p in files if is_bridge(p))) - declared(None) - bridges
    assert not missing_bridges, f"imported by the bridges but not in the bridges extra: {sorted(missing_bridges)}"
    missing_grpc = distributions(imported(p for p in files if is_grpc(p))) - declared(None) - declared("grpc") \
        - through_chainlit
    assert not missing_grpc, f"imported by the gRPC gateway but not in the grpc extra: {sorted(missing_grpc)}"


@pytest.mark.parametrize("command", ["loadtest", "bench"])
def test_the_loadtest_extra_commands_run(command):
    out = subprocess.run([str(Path(sys.executable).parent / "cl-scale"), command, "--help"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and "Usage" in out.stdout, out.stderr
