"""Secrets never rendered: not into a ConfigMap, a Deployment ``env`` value, compose
``environment``, nor echoed by the refusal that keeps them out."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cl_scale.contract import SECRET_ENV, WORKER_SECRET_ENV
from cl_scale.wire.keyspace import Keyspace

SECRET = "Zq9-SeCrEt-Zq9"


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cl_scale", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60)


def refused(result: subprocess.CompletedProcess, *needles: str) -> str:
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) == 1, result.stderr
    assert SECRET not in result.stdout + result.stderr
    for needle in needles:
        assert needle in result.stderr, result.stderr
    return result.stderr


URLS_WITH_PASSWORDS = [
    f"redis://:{SECRET}@redis.example.com:6379/0",
    f"rediss://app:{SECRET}@redis.example.com:6380/0",
    f"unix:///run/redis.sock?password={SECRET}",
    f"redis+sentinel://:{SECRET}@s1:26379,s2:26379/mymaster/0",
]


@pytest.mark.parametrize("url", URLS_WITH_PASSWORDS)
@pytest.mark.parametrize("target", ["k8s", "compose", "nginx"])
def test_password_in_redis_url_is_refused_without_echoing_it(tmp_path, url, target):
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({"redis": {"enabled": False, "url": url}}))
    out = refused(cli("render", target, "-f", str(values), "--out", "-", cwd=tmp_path),
                  "redis.url", "REDIS_PASSWORD", "values.yaml:")
    assert "***" in out or "password" in out
    refused(cli("render", target, "--set", "redis.enabled=false", "--set", f"redis.url={url}", "--out", "-",
                cwd=tmp_path), "redis.url", "REDIS_PASSWORD")


@pytest.mark.parametrize("name", [*SECRET_ENV, *WORKER_SECRET_ENV])
def test_secret_env_names_are_reserved(tmp_path, name):
    refused(cli("render", "k8s", "--set", f"app.env.{name}={SECRET}", "--out", "-", cwd=tmp_path),
            f"app.env.{name}", "Secret")


def test_rendered_outputs_reference_every_secret_and_never_hold_one(tmp_path):
    """Every secret key reaches the app pod as a secretKeyRef, none as a value or ConfigMap key;
    compose reads them from .env only; the gateway tokens have their own Secret reference."""
    assert cli("render", "k8s", "--set", "app.env.LOG_LEVEL=debug", "--out", str(tmp_path / "k8s"),
               cwd=tmp_path).returncode == 0
    docs = [d for f in sorted((tmp_path / "k8s").glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d]
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    env = {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    for key in ("CHAINLIT_AUTH_SECRET", "REDIS_PASSWORD", "CL_SCALE_WORKER_KEYS", "CL_SCALE_GATEWAY_TOKENS"):
        assert "value" not in env[key] and env[key]["valueFrom"]["secretKeyRef"]["key"] == key
    for cm in (d for d in docs if d["kind"] == "ConfigMap"):
        assert not set(cm["data"]) & set(SECRET_ENV), cm["data"].keys()
    redis = next(d for d in docs if d["kind"] == "StatefulSet")["spec"]["template"]["spec"]["containers"][0]
    assert {e["name"]: e["valueFrom"]["secretKeyRef"]["key"] for e in redis["env"]} == {
        "REDIS_PASSWORD": "REDIS_PASSWORD", "REDIS_WORKER_PASSWORD": "REDIS_WORKER_PASSWORD"}
    example = (tmp_path / "k8s" / "secrets.env.example").read_text()
    assert all(f"\n{key}=\n" in example for key in SECRET_ENV)

    assert cli("render", "compose", "--out", str(tmp_path / "compose"), cwd=tmp_path).returncode == 0
    compose = yaml.safe_load((tmp_path / "compose" / "compose.yaml").read_text())
    for name, service in compose["services"].items():
        assert not set(service.get("environment") or {}) & set(SECRET_ENV) - {"REDISCLI_AUTH"}, name
    assert all(f"\n{key}=\n" in (tmp_path / "compose" / ".env.example").read_text() for key in SECRET_ENV)


def test_bundled_redis_start_script_creates_the_worker_user_in_a_real_redis(tmp_path):
    """The rendered StatefulSet/compose start script, run with the real redis-server: with
    REDIS_WORKER_PASSWORD the least-privilege worker user exists; without it, none does."""
    import os
    import shutil

    import redis

    from cl_scale.ops.processes import Proc, free_port, wait_port
    from cl_scale.render.k8s_redis import start_args
    from tests.render.conftest import redis7_path

    if not shutil.which("redis-server"):
        pytest.skip("redis-server not installed")
    for worker_password in ("work-pw", ""):
        port = free_port()
        data = tmp_path / f"data-{port}"
        data.mkdir()
        proc = Proc(start_args("64mb", port, str(data), "clscale"), log_path=tmp_path / f"redis-{port}.log",
                    env={"REDIS_PASSWORD": "admin-pw", "REDIS_WORKER_PASSWORD": worker_password,
                         "PATH": redis7_path()}).start()
        try:
            wait_port(port, 10)
            admin = redis.Redis(port=port, password="admin-pw")
            users = admin.acl_users()
            if worker_password:
                assert "clscale-worker" in [u.decode() if isinstance(u, bytes) else u for u in users]
                worker = redis.Redis(port=port, username="clscale-worker", password=worker_password)
                assert worker.publish(Keyspace().wake_channel("x"), "hi") == 0
                with pytest.raises(redis.exceptions.NoPermissionError):
                    worker.publish(Keyspace().sio_broadcast, "raw emit")
            else:
                assert [u.decode() if isinstance(u, bytes) else u for u in users] == ["default"]
        finally:
            proc.stop()
        assert "admin-pw" not in proc.log() and "work-pw" not in proc.log()
    del os
