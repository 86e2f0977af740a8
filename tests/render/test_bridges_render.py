"""``bridges:`` in values: a Deployment + NetworkPolicy per bridge (k8s), a service (compose), checked
values (no password, one RabbitMQ consumer), and an image that installs the bridge extra."""

from __future__ import annotations

import subprocess

import pytest
import yaml

from cl_scale.config.loader import load_values
from cl_scale.errors import ConfigError
from cl_scale.render import compose, k8s, scaffold
from tests.render.test_compose import CHECK
from tests.render.test_k8s_validate import manifest_docs

KAFKA = "kafka://kafka:9092/replies?group=cl-scale&sasl_username=bridge&security_protocol=SASL_SSL"
AMQP = "amqps://bridge@rabbitmq:5671/prod?queue=replies"
BRIDGES = [{"name": "replies", "url": KAFKA, "replicas": 3},
           {"name": "mq", "url": AMQP, "requireSignature": True}]
SETS = ["networkPolicy.metricsNamespace=monitoring"]


def load(sets: list[str], bridges: list[dict] | None = None, tmp=None):
    """Values with ``bridges`` from a YAML file (lists are not --set-able) plus ``sets``."""
    import tempfile
    from pathlib import Path

    f = Path(tempfile.mkdtemp()) / "values.yaml"
    f.write_text(yaml.safe_dump({"bridges": BRIDGES if bridges is None else bridges}))
    return load_values([f], sets)


def objects(*sets: str) -> list[dict]:
    return manifest_docs(k8s.render(load([*SETS, *sets])))


def test_each_bridge_is_a_hardened_deployment_reading_secrets_by_reference():
    docs = objects()
    deps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment" and "bridge" in d["metadata"]["name"]}
    assert set(deps) == {"chainlit-bridge-replies", "chainlit-bridge-mq"}
    kafka, mq = deps["chainlit-bridge-replies"], deps["chainlit-bridge-mq"]
    assert kafka["spec"]["replicas"] == 3 and kafka["spec"]["strategy"]["type"] == "RollingUpdate"
    assert mq["spec"]["replicas"] == 1 and mq["spec"]["strategy"]["type"] == "Recreate"  # never two consumers
    pod = kafka["spec"]["template"]
    c = pod["spec"]["containers"][0]
    assert c["args"][:2] == ["bridge", KAFKA] and "--require-signature" not in c["args"]
    assert "--require-signature" in mq["spec"]["template"]["spec"]["containers"][0]["args"]
    assert pod["metadata"]["labels"]["cl-scale.io/redis-client"] == "true"  # the Redis policy admits it
    assert c["securityContext"]["readOnlyRootFilesystem"] and pod["spec"]["securityContext"]["runAsNonRoot"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz" and c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"]["key"] for e in c["env"] if "valueFrom" in e
            and "secretKeyRef" in e["valueFrom"]}
    assert {"REDIS_PASSWORD", "CL_SCALE_WORKER_KEYS", "CL_SCALE_KAFKA_PASSWORD"} <= set(refs)
    plain = {e["name"]: e.get("value") for e in c["env"] if "value" in e}
    assert plain["CL_SCALE_REDIS_URL"].startswith("redis://") and "@" not in plain["CL_SCALE_REDIS_URL"]


def test_bridges_accept_only_prometheus_on_the_health_port():
    policies = {d["metadata"]["name"]: d for d in objects() if d["kind"] == "NetworkPolicy"}
    spec = policies["chainlit-bridge-mq"]["spec"]
    assert spec["podSelector"]["matchLabels"]["cl-scale.io/bridge"] == "mq"
    assert spec["ingress"] == [{"from": [{"namespaceSelector": {"matchLabels": {
        "kubernetes.io/metadata.name": "monitoring"}}}], "ports": [{"protocol": "TCP", "port": 9100}]}]
    without = {d["metadata"]["name"]: d for d in objects("networkPolicy.metricsNamespace=null")
               if d["kind"] == "NetworkPolicy"}
    assert without["chainlit-bridge-mq"]["spec"]["ingress"] == []


def test_secret_examples_and_image_know_the_bridges():
    files = k8s.render(load(SETS))
    assert "CL_SCALE_KAFKA_PASSWORD=\n" in files["secrets.env.example"]
    assert "CL_SCALE_AMQP_PASSWORD=\n" in files["secrets.env.example"]
    values = load(SETS)
    assert '"cl-scale[bridges]==' in scaffold.render(values)["Dockerfile"]
    assert "[bridges]" not in scaffold.render(load_values([], []))["Dockerfile"]
    assert "CL_SCALE_AMQP_PASSWORD=" in compose.render(values)[".env.example"]


def test_compose_runs_each_bridge_from_the_app_image(tmp_path):
    values = load(SETS)
    text = compose.render(values)["compose.yaml"]
    f = tmp_path / "compose.yaml"
    f.write_text(text)
    out = subprocess.run([CHECK, "--builtin-schema", "vendor.compose-spec", str(f)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    services = yaml.safe_load(text)["services"]
    b = services["bridge-replies"]
    assert b["entrypoint"] == ["cl-scale", "bridge"] and b["command"][0] == KAFKA
    assert b["read_only"] and b["env_file"] == [".env"] and b["deploy"] == {"replicas": 3}
    assert "--require-signature" in services["bridge-mq"]["command"]


@pytest.mark.parametrize("bridges, needle", [
    ([{"name": "b", "url": "kafka://u:hunter2@k:9092/t?group=g"}], "no password in values"),
    ([{"name": "b", "url": "amqp://h/v?queue=q", "replicas": 2}], "one replica"),
    ([{"name": "b", "url": "kafka://k:9092/t"}], "group=NAME"),
    ([{"name": "b", "url": "http://k/t"}], "expected kafka://"),
    ([{"name": "b", "url": "kafka://k:9092/t?group=g"}, {"name": "b", "url": "kafka://k:9092/u?group=g"}],
     "given twice"),
    ([{"name": "B_1", "url": "kafka://k:9092/t?group=g"}], "DNS-1123"),
])
def test_bad_bridge_values_name_the_key_and_line_and_never_the_password(bridges, needle):
    with pytest.raises(ConfigError) as exc:
        load([], bridges)
    text = str(exc.value)
    assert needle in text and "hunter2" not in text
    assert "values.yaml:" in text and ": bridges[" in text, text
