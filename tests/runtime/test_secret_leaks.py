"""A distinctive secret fed through every input path (flags, env, values, URL forms including unix
and sentinel) never appears in any output, log line or rendered file."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from cl_scale.ops.processes import CL_SCALE, Proc, free_port, http_status, wait_port

SECRET = "Zq9-SeCrEt-Zq9"


def cli(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([CL_SCALE, *args], capture_output=True, text=True, timeout=60, cwd=cwd,
                          env={**{k: v for k, v in os.environ.items() if not k.startswith(("CL_SCALE_", "REDIS_"))},
                               **(env or {})})


def clean(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert SECRET not in result.stdout + result.stderr, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    return result


@pytest.fixture
def secret_redis(tmp_path):
    """A real redis-server protected by SECRET, on a TCP port and a unix socket."""
    port, sock = free_port(), tmp_path / "redis.sock"
    proc = Proc(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--unixsocket", str(sock),
                 "--save", "", "--appendonly", "no", "--dir", str(tmp_path), "--requirepass", SECRET],
                log_path=tmp_path / "redis.log").start()
    wait_port(port, 10)
    yield port, sock
    proc.stop()


@pytest.mark.parametrize("form", ["flag-url", "env-url", "unix+REDIS_PASSWORD", "tcp+REDIS_PASSWORD",
                                  "sentinel+REDIS_PASSWORD"])
def test_instance_start_up_never_logs_the_password(app_dir, tmp_path, secret_redis, form):
    port, sock = secret_redis
    http = free_port()
    env = {"CHAINLIT_AUTH_SECRET": "x" * 40, "PYTHONUNBUFFERED": "1"}
    args = [CL_SCALE, "run", "app.py", "--port", str(http), "--instance-id", "leak"]
    if form == "flag-url":
        args += ["--redis-url", f"redis://:{SECRET}@127.0.0.1:{port}/0"]
    elif form == "env-url":
        env["CL_SCALE_REDIS_URL"] = f"redis://default:{SECRET}@127.0.0.1:{port}/0"
    elif form == "unix+REDIS_PASSWORD":
        env.update(CL_SCALE_REDIS_URL=f"unix://{sock}?db=0", REDIS_PASSWORD=SECRET)
    elif form == "tcp+REDIS_PASSWORD":
        env.update(CL_SCALE_REDIS_URL=f"redis://127.0.0.1:{port}/0", REDIS_PASSWORD=SECRET)
    else:  # no sentinel listens there: the instance starts, stays not-ready, never crashes or leaks
        env.update(CL_SCALE_REDIS_URL=f"redis+sentinel://127.0.0.1:{free_port()},127.0.0.1:{free_port()}/mymaster/0",
                   REDIS_PASSWORD=SECRET)
    proc = Proc(args, env=env, cwd=str(app_dir), log_path=tmp_path / "instance.log").start()
    try:
        wait_port(http, 45)
        ready = "sentinel" not in form
        for _ in range(150):  # bounded: ready (or, for the dead sentinel, a few failed checks logged)
            if (http_status(f"http://127.0.0.1:{http}/readyz") == 200) == ready and proc.alive():
                break
            time.sleep(0.2)
        assert proc.alive(), proc.log()[-2000:]
        assert (http_status(f"http://127.0.0.1:{http}/readyz") == 200) == ready
        metrics = subprocess.run(["curl", "-s", f"http://127.0.0.1:{http}/metrics"], capture_output=True, text=True)
        assert SECRET not in metrics.stdout
    finally:
        proc.stop()
    log = proc.log()
    assert "instance leak up" in log
    assert SECRET not in log, [line for line in log.splitlines() if SECRET in line]


def test_worker_and_gateway_commands_never_echo_secrets(tmp_path, secret_redis):
    port, sock = secret_redis
    dead = free_port()
    cases = [
        (["send", "--session", "s-123456789", "--redis-url", f"redis://:{SECRET}@127.0.0.1:{dead}/0", "hi"],
         {"CL_SCALE_WORKER_KEYS": "k1:x"}, "unreachable"),
        (["send", "--session", "s-123456789", "hi"],
         {"CL_SCALE_REDIS_URL": f"unix://{tmp_path}/nope.sock", "REDIS_PASSWORD": SECRET, "CL_SCALE_WORKER_KEYS": "k1:x"},
         "unreachable"),
        (["send", "--session", "s-123456789", "--redis-url", f"redis://:{SECRET}@127.0.0.1:{port}/0", "hi"],
         {"CL_SCALE_WORKER_KEYS": SECRET}, "CL_SCALE_WORKER_KEYS"),
        (["send", "--session", "s-123456789", "--redis-url", f"redis://127.0.0.1:{port}/0", "hi"],
         {"CL_SCALE_WORKER_KEYS": f"k1:{SECRET};users"}, "names nothing"),
        (["gateway", "--port", str(free_port()), "--redis-url", f"redis+sentinel://:{SECRET}@h1:1,h2:2/m/0"],
         {"CL_SCALE_GATEWAY_TOKENS": SECRET, "CL_SCALE_WORKER_KEYS": "k1:x"}, "CL_SCALE_GATEWAY_TOKENS"),
        (["dlq", "list", "--redis-url", f"redis://:{SECRET}@127.0.0.1:{port}/abc"], {}, "database"),
        (["send", "--session", "s-123456789", "--redis-url", f"redis://:{SECRET}@127.0.0.1:notaport/0", "hi"],
         {"CL_SCALE_WORKER_KEYS": "k1:x"}, "host[:port]"),
    ]
    for args, env, needle in cases:
        out = clean(cli(*args, env=env))
        assert out.returncode == 2 and needle in out.stderr, (args, out.stderr)
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_run_refuses_bad_settings_without_echoing_secrets(app_dir):
    cases = [
        ({"CL_SCALE_REDIS_URL": f"redis://:{SECRET}@h:notaport/0"}, "CL_SCALE_REDIS_URL"),
        ({"CL_SCALE_REDIS_URL": f"http://:{SECRET}@h/0"}, "scheme"),
        ({"CL_SCALE_WORKER_KEYS": f"{SECRET}"}, "CL_SCALE_WORKER_KEYS"),
        ({"CL_SCALE_WORKER_KEYS": f"k1:{SECRET};sessions"}, "names nothing"),
        ({"CL_SCALE_GATEWAY_TOKENS": f"t1:{SECRET};users="}, "names nothing"),
        ({"CL_SCALE_WORKER_MAX_AGE": "nan"}, "CL_SCALE_WORKER_MAX_AGE"),
        ({"CL_SCALE_WORKER_MAX_AGE": "inf"}, "finite"),
        ({"CL_SCALE_WORKER_OUTBOX_TTL": "nan"}, "CL_SCALE_WORKER_OUTBOX_TTL"),
        ({"CL_SCALE_WORKER_OUTBOX_MAX": "-3"}, "CL_SCALE_WORKER_OUTBOX_MAX"),
        ({"CL_SCALE_SESSION_TIMEOUT": "abc"}, "CL_SCALE_SESSION_TIMEOUT"),
        ({"CL_SCALE_DRAIN_SECONDS": "1.5"}, "CL_SCALE_DRAIN_SECONDS"),
        ({"CL_SCALE_WORKER_MAX_ATTEMPTS": "x"}, "CL_SCALE_WORKER_MAX_ATTEMPTS"),
        ({"CL_SCALE_INSTANCE_ID": "inst\n2026-01-01 INFO forged line"}, "CL_SCALE_INSTANCE_ID"),
        ({"CL_SCALE_PREFIX": "a}{b"}, "CL_SCALE_PREFIX"),
        ({"CL_SCALE_ADVERTISE_URL": "javascript:alert(1)"}, "CL_SCALE_ADVERTISE_URL"),
    ]
    for env, needle in cases:
        out = clean(cli("run", "app.py", "--port", str(free_port()), env=env, cwd=app_dir))
        assert out.returncode == 2 and needle in out.stderr, (env, out.stderr)
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr
