"""AutoGen group chat tests: the real AutoGen gRPC runtime (host, manager, writer and editor as the
example's processes), ``cl-scale autogen``, real instances behind nginx, real Redis. No LLM: the
example's replay model, one per session, so every session's turns are known in advance."""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("autogen_ext.runtimes.grpc", reason="pip install 'cl-scale[autogen]'")

from cl_scale.ops.processes import CL_SCALE, Proc, free_port, wait_port  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "autogen_group_chat"
KEYS = "k1:secret-one"
INSTANCE_ENV = {"CL_SCALE_WORKER_KEYS": KEYS, "CL_SCALE_PUBLISH_REQUESTS": "1"}
LINES = {"Writer": "Draft {k}: on Halloween night", "Editor": "Edit {k}: good start"}


class AutoGenSide:
    """The example's AutoGen processes plus ``cl-scale autogen``, each a child we own."""

    def __init__(self, redis_url: str, tmp: Path, **options):
        self.redis_url, self.tmp = redis_url, tmp
        self.address = f"127.0.0.1:{free_port()}"
        self.options = {"rounds": 3, "silence": 10.0, "beat": 0.5, "delay": 0.01, **options}
        self.procs: dict[str, Proc] = {}

    def command(self, role: str) -> list[str]:
        if role == "bridge":
            return [CL_SCALE, "autogen", "--host-address", self.address, "--redis-url", self.redis_url,
                    "--name", "autogen-test", "--unanswered-seconds", "3"]
        if role == "host":
            return [sys.executable, str(EXAMPLE / "agents.py"), "host", "--address", self.address]
        opts = [x for k, v in self.options.items() for x in (f"--{k}", str(v))]
        return [sys.executable, str(EXAMPLE / "agents.py"), role, "--host", self.address, *opts]

    def start(self, *roles: str) -> "AutoGenSide":
        for role in roles or ("host", "manager", "writer", "editor", "bridge"):
            proc = Proc(self.command(role), env={"CL_SCALE_WORKER_KEYS": KEYS}, log_path=self.tmp / f"{role}.log")
            self.procs[role] = proc.start()
            if role == "host":
                wait_port(int(self.address.rsplit(":", 1)[1]), 30)
        return self

    def wait_attached(self, *roles: str, timeout: float = 60.0) -> None:
        """Until each role's log says it is attached (bounded)."""
        deadline = time.monotonic() + timeout
        for role in roles:
            needle = "connected" if role == "bridge" else "attached"
            while needle not in self.procs[role].log():
                if time.monotonic() > deadline:
                    raise AssertionError(f"{role} never attached: {self.procs[role].log()[-2000:]}")
                time.sleep(0.1)

    def logs(self) -> str:
        return "\n".join(f"--- {r}\n{p.log()[-1500:]}" for r, p in self.procs.items())

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.stop()


@pytest.fixture
def autogen_app(app_dir):
    shutil.copy(EXAMPLE / "app.py", app_dir / "autogen_app.py")
    return "autogen_app.py"


@pytest.fixture
def autogen(cluster, tmp_path):
    made: list[AutoGenSide] = []

    def make(**options) -> AutoGenSide:
        side = AutoGenSide(cluster.redis_url, tmp_path, **options)
        made.append(side)
        return side

    yield make
    for side in made:
        side.stop()
