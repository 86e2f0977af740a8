"""``autogen:`` in values: the AutoGen host, ``cl-scale autogen`` and the agents as Deployments (k8s) and
services (compose), the policy between them, instances publishing users' messages — and the rendered
commands really running a group chat (tests/autogen covers the chat itself)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from cl_scale.config.loader import load_values
from cl_scale.errors import ConfigError
from cl_scale.render import compose, k8s, scaffold
from tests.render.test_compose import CHECK
from tests.render.test_k8s_validate import manifest_docs

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "autogen_group_chat"
AGENTS = [{"name": "manager", "command": ["python", "agents.py", "manager"]},
          {"name": "writer", "command": ["python", "agents.py", "writer"], "replicas": 2}]


def load(data: dict):
    f = Path(tempfile.mkdtemp()) / "values.yaml"
    f.write_text(yaml.safe_dump(data))
    return load_values([f], [])


def test_k8s_objects_and_policy():
    v = load({"autogen": {"enabled": True, "agents": AGENTS}, "app": {"extraSecrets": ["llm-keys"]}})
    docs = manifest_docs(k8s.render(v))
    deps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    host = deps["chainlit-autogen-host"]
    assert host["spec"]["replicas"] == 1 and host["spec"]["strategy"]["type"] == "Recreate"
    assert host["spec"]["template"]["spec"]["containers"][0]["args"] == ["autogen-host", "--address", "0.0.0.0:50060"]
    bridge = deps["chainlit-autogen"]["spec"]["template"]
    assert bridge["metadata"]["labels"]["cl-scale.io/redis-client"] == "true"
    args = bridge["spec"]["containers"][0]["args"]
    assert args[:3] == ["autogen", "--host-address", "chainlit-autogen-host:50060"]
    writer = deps["chainlit-autogen-writer"]
    assert writer["spec"]["replicas"] == 2
    c = writer["spec"]["template"]["spec"]["containers"][0]
    assert c["command"] == ["python", "agents.py", "writer"] and c["envFrom"] == [{"secretRef": {"name": "llm-keys"}}]
    assert {"name": "CL_SCALE_AUTOGEN_HOST", "value": "chainlit-autogen-host:50060"} in c["env"]
    policies = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "NetworkPolicy"}
    assert policies["chainlit-autogen-host"]["ingress"] == [{"from": [{"podSelector": {"matchLabels": {
        "cl-scale.io/autogen": "true"}}}], "ports": [{"protocol": "TCP", "port": "grpc"}]}]
    assert policies["chainlit-autogen"]["ingress"] == [] and policies["chainlit-autogen-agents"]["ingress"] == []
    cm = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "chainlit-env")
    assert cm["data"]["CL_SCALE_PUBLISH_REQUESTS"] == "true"
    assert '"cl-scale[autogen]==' in scaffold.render(v)["Dockerfile"]
    assert "CL_SCALE_PUBLISH_REQUESTS" not in k8s.render(load({}))["configmap.yaml"]


def test_compose_validates(tmp_path):
    v = load({"autogen": {"enabled": True, "agents": AGENTS}})
    f = tmp_path / "compose.yaml"
    f.write_text(compose.render(v)["compose.yaml"])
    out = subprocess.run([CHECK, "--builtin-schema", "vendor.compose-spec", str(f)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    services = yaml.safe_load(f.read_text())["services"]
    assert {"autogen-host", "autogen", "autogen-manager", "autogen-writer"} <= set(services)
    assert services["autogen-writer"]["deploy"] == {"replicas": 2}
    assert services["app-1"]["environment"]["CL_SCALE_PUBLISH_REQUESTS"] == "true"
    assert "ports" not in services["autogen-host"]  # reachable on the compose network only


@pytest.mark.parametrize("data, key, needle", [
    ({"autogen": {"agents": [{"name": "a", "command": ["x"]}, {"name": "a", "command": ["y"]}]}},
     "autogen.agents[1].name", "given twice"),
    ({"autogen": {"agents": [{"name": "a", "command": []}]}}, "autogen.agents[0].command", "at least 1"),
    ({"autogen": {"agents": [{"name": "a", "command": ["x"], "env": {"CHAINLIT_AUTH_SECRET": "hunter2"}}]}},
     "autogen.agents[0].env.CHAINLIT_AUTH_SECRET", "is a secret"),
    ({"autogen": {"healthPort": 50060}}, "autogen.healthPort", "must differ"),
])
def test_bad_autogen_values_name_the_key_and_line(data, key, needle):
    with pytest.raises(ConfigError) as exc:
        load(data)
    text = str(exc.value)
    assert needle in text and "values.yaml:" in text and key in text, text
    assert "hunter2" not in text


@pytest.mark.slow
async def test_the_rendered_commands_run_a_group_chat(cluster, app_dir, tmp_path):
    """The compose services' commands as rendered (addresses moved to loopback ports), with the
    example's agents: a user's message gets its streamed three-turn group chat."""
    pytest.importorskip("autogen_ext.runtimes.grpc")
    import shutil

    from cl_scale.ops.client import ChainlitClient
    from cl_scale.ops.processes import CL_SCALE, Proc, free_port, wait_port
    from tests.autogen.test_group_chat import expected, same, turns

    agents = [{"name": r, "command": [sys.executable, str(EXAMPLE / "agents.py"), r, "--delay", "0.01"]}
              for r in ("manager", "writer", "editor")]
    v = load({"autogen": {"enabled": True, "agents": agents}})
    services = yaml.safe_load(compose.render(v)["compose.yaml"])["services"]
    port, health = free_port(), free_port()
    here = {"autogen-host:50060": f"127.0.0.1:{port}", "0.0.0.0:50060": f"127.0.0.1:{port}",
            "0.0.0.0": "127.0.0.1", "9102": str(health)}

    def moved(args):
        return [here.get(a, a) for a in args]

    shutil.copy(EXAMPLE / "app.py", app_dir / "autogen_app.py")
    app_env = {k: v for k, v in services["app-1"]["environment"].items() if k == "CL_SCALE_PUBLISH_REQUESTS"}
    (inst,) = cluster.start(1, app="autogen_app.py", env={**app_env, "CL_SCALE_WORKER_KEYS": "k1:secret-one"}).instances
    procs = []
    try:
        for name in ("autogen-host", "autogen", "autogen-manager", "autogen-writer", "autogen-editor"):
            s = services[name]
            argv = [*s["entrypoint"], *s.get("command", [])]
            argv = [CL_SCALE, *argv[1:]] if argv[0] == "cl-scale" else argv
            env = {k: here.get(val, val) for k, val in s["environment"].items()}
            env.update({"CL_SCALE_REDIS_URL": cluster.redis_url, "CL_SCALE_WORKER_KEYS": "k1:secret-one"})
            procs.append(Proc(moved(argv), env=env, log_path=tmp_path / f"{name}.log").start())
            if name == "autogen-host":
                wait_port(port, 30)
        wait_port(health, 30)
        c = ChainlitClient(inst.url, reconnection=False)
        await c.connect()
        try:
            for _ in range(100):  # bounded: until every agent is attached (the first message starts the chat)
                if all("attached" in p.log() for p in procs[2:]) and "connected" in procs[1].log():
                    break
                await asyncio.sleep(0.2)
            await c.send("a story please")
            await c.wait_for(lambda: same(turns(c), expected(3)) and turns(c)[-1][3].endswith("pumpkin."), 60)
        finally:
            await c.close()
    finally:
        for p in procs:
            p.stop()
