"""A newcomer's first hour, as the README tells it, in a temp dir with no CL_SCALE_* setting at all:
``cl-scale up --detach`` with their own app, a real session, ``cl-scale send`` reaching it, a load
test of an app that does not echo, ``cl-scale init`` of that app and the Dockerfile's install step
run in a scratch venv from the build context (no Docker engine here)."""

from __future__ import annotations

import asyncio
import csv
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from cl_scale.ops.client import ChainlitClient
from cl_scale.ops.processes import CL_SCALE, free_port

pytestmark = pytest.mark.slow

APP = '''import chainlit as cl


@cl.on_chat_start
async def start():
    await cl.Message(content="Welcome! Ask me anything.").send()


@cl.on_message
async def on_message(message: cl.Message):
    await cl.Message(content=f"You said {len(message.content)} characters. Thanks!").send()
'''


def clean_env() -> dict:
    return {k: v for k, v in os.environ.items() if not k.startswith(("CL_SCALE_", "REDIS_"))}


def cli(*args, cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([CL_SCALE, *args], cwd=cwd, env=clean_env(), capture_output=True, text=True,
                          timeout=timeout)


async def test_up_send_and_loadtest_with_nothing_set(tmp_path):
    (tmp_path / "app.py").write_text(APP)
    port = free_port()
    up = cli("up", "app.py", "--replicas", "2", "--port", str(port), "--detach", cwd=tmp_path)
    assert up.returncode == 0, up.stdout + up.stderr
    assert f"http://127.0.0.1:{port}" in up.stdout and "cl-scale down" in up.stdout
    # the state dir (logs, PIDs, a dev key) keeps itself out of the user's repository
    assert (tmp_path / ".cl-scale" / ".gitignore").read_text().splitlines()[-1] == "*"
    try:
        client = ChainlitClient(f"http://127.0.0.1:{port}")
        await client.connect()
        await client.wait_for(lambda: client.messages(), 30)
        sent = await asyncio.to_thread(cli, "send", "--session", client.session_id, "deploy done", cwd=tmp_path)
        assert sent.returncode == 0 and sent.stderr == "", sent.stderr
        got = await client.wait_for(lambda: [m for m in client.messages() if m.get("output") == "deploy done"], 30)
        assert got[0]["id"] == sent.stdout.strip()
        await client.close()

        status = await asyncio.to_thread(cli, "status", cwd=tmp_path)  # piped: a plain table, no TTY tricks
        assert status.returncode == 0 and "inst1" in status.stdout and "Ctrl-C" not in status.stdout

        load = await asyncio.to_thread(cli, "loadtest", f"http://127.0.0.1:{port}", "--users", "2", "--spawn-rate",
                                       "2", "--run-time", "6s", "--out", str(tmp_path / "report"), cwd=tmp_path)
        assert load.returncode == 0, load.stdout + load.stderr
        with open(tmp_path / "report" / "locust_stats.csv", newline="") as fh:
            rows = {r["Name"]: r for r in csv.DictReader(fh)}
        assert int(rows["chat: round trip"]["Request Count"]) > 0  # a reply whatever its text
        assert int(rows["chat: round trip"]["Failure Count"]) == 0
    finally:
        down = cli("down", cwd=tmp_path)
    assert down.returncode == 0 and "stopped" in down.stdout


def test_a_chat_app_that_never_answers_fails_the_loadtest_loudly(tmp_path, cluster):
    (cluster.app_dir / "mute.py").write_text("import chainlit as cl\n\n@cl.on_message\nasync def m(msg):\n    pass\n")
    cluster.start(1, app="mute.py")
    load = cli("loadtest", cluster.instances[0].url, "--users", "1", "--spawn-rate", "1", "--run-time", "4s",
               "--out", str(tmp_path / "report"), cwd=tmp_path)
    assert load.returncode == 1 and "failed" in load.stderr, load.stdout + load.stderr
    assert "no reply" in load.stdout


def test_init_builds_an_image_context_whose_install_step_works(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    (project / "app.py").write_text(APP)
    (project / "requirements.txt").write_text("")
    init = cli("init", "deploy", "--app", "app.py", "--replicas", "2", cwd=project)
    assert init.returncode == 0, init.stderr
    deploy = project / "deploy"
    assert "copied your app app.py" in init.stdout and (deploy / "app.py").read_text() == APP
    assert init.stdout.count("\n  ") >= 3 and "docker build" in init.stdout  # the next commands
    dockerfile = (deploy / "Dockerfile").read_text()
    install = next(line for line in dockerfile.splitlines() if line.startswith("RUN pip install"))
    wheel = re.search(r'"/app/(wheels/[^"]+\.whl)"', install).group(1)
    assert (deploy / wheel).is_file()
    # What `docker build` would run, against the build context instead of /app, in a scratch venv.
    venv = tmp_path / "scratch"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    step = install.removeprefix("RUN ").replace("/app/", f"{deploy}/").split(" \\")[0]
    argv = shlex.split(step)
    result = subprocess.run([str(venv / "bin" / argv[0]), *argv[1:], "-q"], capture_output=True, text=True,
                            timeout=600, env=clean_env())
    assert result.returncode == 0, result.stderr[-2000:]
    probe = subprocess.run([str(venv / "bin" / "cl-scale"), "run", "--help"], capture_output=True, text=True,
                           timeout=120)
    assert probe.returncode == 0 and "container entrypoint" in probe.stdout
