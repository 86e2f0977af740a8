"""compose target: schema-valid (check-jsonschema vendor.compose-spec), the right services, and
values that can never add a key or be interpolated by compose."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cl_scale.config.loader import load_values
from cl_scale.contract import SECRET_ENV
from cl_scale.render import compose
from tests.support.nginx_tokens import parse

CHECK = shutil.which("check-jsonschema") or str(Path(sys.executable).with_name("check-jsonschema"))


def render(*sets: str) -> dict[str, str]:
    return compose.render(load_values([], list(sets)))


def doc(*sets: str) -> dict:
    return yaml.safe_load(render(*sets)["compose.yaml"])


@pytest.mark.parametrize("sets", [
    [],
    ["replicas=1", "redis.enabled=false", "redis.url=rediss://redis.example.com:6380/0"],
    ["nginx.tls.enabled=true", "app.env.FOO=bar", "replicas=5", "app.port=9000"],
])
def test_valid_against_the_compose_spec(tmp_path, sets):
    f = tmp_path / "compose.yaml"
    f.write_text(render(*sets)["compose.yaml"])
    out = subprocess.run([CHECK, "--builtin-schema", "vendor.compose-spec", str(f)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def test_services_and_app_wiring():
    d = doc("replicas=3", "app.module=src/chat.py", "app.port=8500", "drain.seconds=20", "app.sessionTimeout=900")
    assert list(d["services"]) == ["redis", "app-1", "app-2", "app-3", "nginx"]
    assert d["name"] == "chainlit"
    for i in (1, 2, 3):
        app = d["services"][f"app-{i}"]
        assert app["entrypoint"] + app["command"] == ["cl-scale", "run", "src/chat.py", "--host", "0.0.0.0", "--port", "8500"]
        env = app["environment"]
        assert env["CL_SCALE_INSTANCE_ID"] == f"app-{i}"
        assert env["CL_SCALE_ADVERTISE_URL"] == f"http://app-{i}:8500"
        assert env["CL_SCALE_REDIS_URL"] == "redis://redis:6379/0"
        assert env["CL_SCALE_SESSION_TIMEOUT"] == "900" and env["CL_SCALE_DRAIN_SECONDS"] == "20"
        assert app["read_only"] is True and app["user"] == "10001:10001"
        assert {t.split(":")[0] for t in app["tmpfs"]} == {"/app/.files", "/app/.chainlit", "/tmp"}
        assert app["env_file"] == [".env"]
        assert "/readyz" in " ".join(app["healthcheck"]["test"])
        assert app["depends_on"] == {"redis": {"condition": "service_healthy"}}
        assert app["stop_grace_period"] == "35s"
    redis = d["services"]["redis"]
    script = " ".join(redis["entrypoint"])
    assert "noeviction" in script and "$$REDIS_PASSWORD" in script and redis["env_file"] == [".env"]
    assert "${REDIS_PASSWORD:?" in redis["environment"]["REDISCLI_AUTH"]
    assert not any("secret" in str(v).lower() for v in d["services"]["app-1"]["environment"].values())


def test_external_redis_has_no_redis_service():
    d = doc("redis.enabled=false", "redis.url=redis://r.example.com:6379/2")
    assert "redis" not in d["services"] and "volumes" not in d
    assert d["services"]["app-1"]["environment"]["CL_SCALE_REDIS_URL"] == "redis://r.example.com:6379/2"
    assert "depends_on" not in d["services"]["app-1"]


def test_nginx_service_uses_compose_upstreams():
    files = render("replicas=2", "app.port=8000", "nginx.listen=8088")
    ds = parse(files["nginx/conf.d/chainlit.conf"])
    assert [d.args[0] for d in ds if d.name == "server" and d.block == ("upstream",)] == ["app-1:8000", "app-2:8000"]
    main = {d.name: d.args for d in parse(files["nginx/nginx.conf"])}
    assert main["error_log"][0] == "stderr"
    nginx = yaml.safe_load(files["compose.yaml"])["services"]["nginx"]
    assert nginx["ports"] == ["8088:8088"] and nginx["volumes"][0].startswith("./nginx:")
    assert set(nginx["depends_on"]) == {"app-1", "app-2"}
    assert files[".env.example"].count("=\n") == len(SECRET_ENV)  # keys only, empty values


NASTY = ['x\n    evil: 1', 'a: b', '"; rm -rf /', "${HOME}", "$$", "{a: 1}", "- item", "#comment", "\\", "'"]


@pytest.mark.parametrize("nasty", NASTY)
def test_values_cannot_add_keys_or_be_interpolated(nasty):
    base = doc("app.env.USER_VALUE=plain", "app.module=app.py")
    values = load_values([], [])
    values.app.env = {"USER_VALUE": nasty}
    values.app.module = "app.py" if "\n" in nasty else f"app{nasty}.py".strip()
    evil = yaml.safe_load(compose.render(values)["compose.yaml"])

    def keys(node, path=()):
        if isinstance(node, dict):
            return {path + (k,) for k in node} | {p for k, v in node.items() for p in keys(v, path + (k,))}
        if isinstance(node, list):
            return {p for i, v in enumerate(node) for p in keys(v, path + (i,))}
        return set()

    assert keys(evil) == keys(base)
    env = evil["services"]["app-1"]["environment"]
    assert env["USER_VALUE"] == nasty.replace("$", "$$")  # compose turns $$ back into $
    assert evil["services"]["app-1"]["command"][0] == values.app.module.replace("$", "$$")
