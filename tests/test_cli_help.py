"""Every command's ``--help`` shows at least one example (issue 13: the newcomer reads help first)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

COMMANDS = ["up", "status", "down", "doctor", "loadtest", "bench", "render", "render-k8s", "init", "run", "send",
            "gateway", "bridge", "autogen", "autogen-host", "workers", "redis-acl", "dlq", "dlq list", "dlq replay", "dlq purge"]


def test_the_command_list_is_complete():
    out = subprocess.run([str(Path(sys.executable).parent / "cl-scale"), "--help"], capture_output=True, text=True)
    listed = {line.split()[0] for line in out.stdout.split("Commands:")[1].splitlines() if line.strip()}
    assert listed == {c for c in COMMANDS if " " not in c}


@pytest.mark.parametrize("command", COMMANDS)
def test_help_has_an_example(command):
    out = subprocess.run([str(Path(sys.executable).parent / "cl-scale"), *command.split(), "--help"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "Example" in out.stdout and f"cl-scale {command.split()[0]}" in out.stdout.split("Example", 1)[1], out.stdout
