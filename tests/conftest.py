"""Shared fixtures: every test owns its servers (ephemeral ports, stopped by PID)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.servers import Instance, Nginx, RedisServer

APPS = Path(__file__).parent / "apps"
DOCTOR_TOKEN = "test-doctor-token"


@pytest.fixture
def redis_server(tmp_path):
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def app_template(tmp_path_factory):
    """An app dir with Chainlit's generated files (.chainlit/, chainlit.md) made once, so
    instances starting together do not race to create them."""
    path = tmp_path_factory.mktemp("app-template")
    for app in APPS.glob("*.py"):
        shutil.copy(app, path / app.name)
    shutil.copy(APPS / "counter_app.py", path / "app.py")
    subprocess.run([sys.executable, "-c", "import chainlit.config, chainlit.markdown as m; "
                    "m.init_markdown(chainlit.config.config.root)"], cwd=path, check=True,
                   capture_output=True, timeout=120)
    return path


@pytest.fixture
def app_dir(app_template, tmp_path):
    path = tmp_path / "app"
    shutil.copytree(app_template, path)
    return path


class Cluster:
    def __init__(self, app_dir: Path, redis: RedisServer, tmp: Path):
        self.app_dir, self.redis, self.tmp = app_dir, redis, tmp
        self.instances: list[Instance] = []
        self.nginx: Nginx | None = None

    def start(self, n: int, *, app: str = "app.py", nginx: bool = False, sticky: str = "ip_hash",
              env: dict | None = None) -> "Cluster":
        env = {"CL_SCALE_DOCTOR_TOKEN": DOCTOR_TOKEN, **(env or {})}
        new = [Instance(self.app_dir, self.redis.url, f"inst{i + 1}", app=app, env=env).start() for i in range(n)]
        for inst in new:
            inst.wait_ready()
        self.instances += new
        if nginx:
            self.nginx = Nginx(self.tmp / "nginx", [f"127.0.0.1:{i.port}" for i in self.instances], sticky).start()
        return self

    def by_name(self, name: str) -> Instance:
        return next(i for i in self.instances if i.name == name)

    def restart(self, inst: Instance) -> Instance:
        inst.stop()
        replacement = Instance(self.app_dir, self.redis.url, inst.name, port=inst.port, app=inst.app,
                               env=inst.env).start().wait_ready()
        self.instances[self.instances.index(inst)] = replacement
        return replacement

    def stop(self) -> None:
        if self.nginx:
            self.nginx.stop()
        for inst in self.instances:
            inst.kill()


@pytest.fixture
def cluster(app_dir, redis_server, tmp_path):
    c = Cluster(app_dir, redis_server, tmp_path)
    yield c
    c.stop()
