"""gRPC gateway tests: a real ``cl-scale gateway --grpc-port`` process against real instances and Redis,
called through stubs compiled from the shipped ``.proto`` (Python) and ``@grpc/proto-loader`` (Node)."""

from __future__ import annotations

import time

import pytest

from cl_scale.ops.processes import CL_SCALE, Proc, free_port, wait_port
from tests.worker.helpers import final_texts  # noqa: F401 (the gRPC tests import it from here)

TOKENS = "t1:token-one-0123456789,t2:token-two-0123456789;users=alice"
KEYS = "k1:secret-one"
ENV = {"CL_SCALE_WORKER_KEYS": KEYS, "CL_SCALE_GATEWAY_TOKENS": TOKENS, "CL_SCALE_PUBLISH_REQUESTS": "1"}
BEARER = [("authorization", "Bearer token-one-0123456789")]
SCOPED = [("authorization", "Bearer token-two-0123456789")]


class GatewayProcess:
    """``cl-scale gateway`` with a gRPC port (TLS options passed through ``args``)."""

    def __init__(self, redis_url: str, tmp, *args: str):
        self.port, self.grpc_port = free_port(), free_port()
        self.cmd = [CL_SCALE, "gateway", "--redis-url", redis_url, "--port", str(self.port),
                    "--grpc-port", str(self.grpc_port), *args]
        self.proc = Proc(self.cmd, env=ENV, log_path=tmp / f"gateway-{self.grpc_port}.log")

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def start(self) -> "GatewayProcess":
        self.proc.start()
        try:
            wait_port(self.grpc_port, 30)
            wait_port(self.port, 30)
        except TimeoutError:
            raise AssertionError(f"gateway did not start: {self.proc.log()[-3000:]}") from None
        time.sleep(0.1)
        return self

    def stop(self) -> None:
        self.proc.stop()


@pytest.fixture
def gateway(cluster, tmp_path):
    made = []

    def start(*args: str) -> GatewayProcess:
        g = GatewayProcess(cluster.redis.url, tmp_path, *args).start()
        made.append(g)
        return g

    yield start
    for g in made:
        g.stop()


def stubs():
    from cl_scale.gateway.grpc_gateway import stubs as load

    return load()


NODE_DIR = __import__("pathlib").Path(__file__).with_name("node")


@pytest.fixture(scope="session")
def node_worker(tmp_path_factory):
    """``node worker.js`` with ``@grpc/grpc-js`` and ``@grpc/proto-loader`` installed (npm, once per
    test session, into a temp copy); skipped with the reason where node or npm is missing."""
    import shutil
    import subprocess

    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        pytest.skip("node/npm not found: apt-get install nodejs npm")
    work = tmp_path_factory.mktemp("node-worker")
    for name in ("package.json", "worker.js"):
        shutil.copy(NODE_DIR / name, work / name)
    done = subprocess.run([npm, "install", "--no-audit", "--no-fund", "--loglevel=error"], cwd=work,
                          capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        pytest.skip(f"npm install failed: {done.stderr.strip()[-300:]}")
    return [node, str(work / "worker.js")]
