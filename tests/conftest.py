"""Shared fixtures: every test owns its servers (ephemeral ports, stopped by PID).

``cluster`` is the same ``ProcessCluster`` ``cl-scale up`` and the benchmark use, on the test's own
redis-server, in the test's temp dir, with the test apps of ``tests/apps``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cl_scale.ops.cluster import ProcessCluster
from cl_scale.ops.processes import RedisServer, init_chainlit_files

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
    init_chainlit_files(path)
    return path


@pytest.fixture
def app_dir(app_template, tmp_path):
    path = tmp_path / "app"
    shutil.copytree(app_template, path)
    return path


@pytest.fixture
def cluster(app_dir, redis_server, tmp_path):
    c = ProcessCluster(app_dir, tmp_path, redis=redis_server, env={"CL_SCALE_DOCTOR_TOKEN": DOCTOR_TOKEN})
    yield c
    c.stop()


def pytest_collection_modifyitems(config, items):
    """Under ``-n 2`` (``make test``), the heavy whole-cluster tests (``slow``) share one worker, so two
    of them never compete for the 2 cores at once; the rest spread over both workers."""
    for item in items:
        if item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.xdist_group("heavy"))
