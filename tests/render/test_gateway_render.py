"""``grpcGateway:`` and ``redis.tls:`` in values: the standalone gateway as a hardened Deployment + Service +
NetworkPolicy (k8s) / service (compose), certificates mounted from Secrets, checked values, and an image
that installs the grpc extra. (That the rendered gateway really runs with those mounts is
tests/tls/test_rendered_certs.py.)"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml

from cl_scale.config.loader import load_values
from cl_scale.errors import ConfigError
from cl_scale.render import compose, k8s, scaffold
from tests.render.test_compose import CHECK
from tests.render.test_k8s_validate import manifest_docs

GATEWAY = {"enabled": True, "serviceType": "LoadBalancer", "clientCIDRs": ["203.0.113.0/24"],
           "tls": {"secretName": "gateway-tls", "clientCaSecret": "workers-ca"}}
REDIS = {"enabled": False, "url": "rediss://redis.example.com:6380/0",
         "tls": {"caSecret": "redis-ca", "clientCertSecret": "redis-client"}}


def load(data: dict, sets: list[str] = ()):
    f = Path(tempfile.mkdtemp()) / "values.yaml"
    f.write_text(yaml.safe_dump(data))
    return load_values([f], list(sets))


def by_kind(docs, kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def test_nothing_is_rendered_for_the_gateway_by_default():
    files = k8s.render(load({}))
    assert "grpc-gateway.yaml" not in files
    assert "gateway" not in yaml.safe_load(compose.render(load({}))["compose.yaml"])["services"]
    assert "[grpc]" not in scaffold.render(load({}))["Dockerfile"]


def test_the_gateway_is_a_hardened_deployment_with_tls_from_secrets():
    v = load({"grpcGateway": GATEWAY, "redis": REDIS})
    docs = manifest_docs(k8s.render(v))
    dep = by_kind(docs, "Deployment")["chainlit-gateway"]
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["args"][:2] == ["gateway", "--host"] and "--grpc-port" in c["args"]
    assert c["args"][c["args"].index("--tls-client-ca") + 1] == "/etc/cl-scale/gateway-client-ca/ca.crt"
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
    assert c["securityContext"]["readOnlyRootFilesystem"] and pod["securityContext"]["runAsNonRoot"]
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in c["env"] if "secretKeyRef" in e.get("valueFrom", {})}
    assert {"CL_SCALE_GATEWAY_TOKENS", "CL_SCALE_WORKER_KEYS", "REDIS_PASSWORD"} <= set(refs)
    volumes = {vol["name"]: vol["secret"] for vol in pod["volumes"] if "secret" in vol}
    assert {s["secretName"] for s in volumes.values()} == {"gateway-tls", "workers-ca", "redis-ca", "redis-client"}
    assert all(s["defaultMode"] == 0o440 for s in volumes.values())
    assert all(m["readOnly"] for m in c["volumeMounts"] if m["name"] in volumes)
    # the app pods mount the Redis CA and client certificate too, and their URL names them
    app = by_kind(docs, "Deployment")["chainlit"]["spec"]["template"]["spec"]
    url = next(e["value"] for e in app["containers"][0]["env"] if e["name"] == "CL_SCALE_REDIS_URL")
    assert url == ("rediss://redis.example.com:6380/0?ssl_ca_certs=/etc/cl-scale/redis-ca/ca.crt"
                   "&ssl_certfile=/etc/cl-scale/redis-client/tls.crt&ssl_keyfile=/etc/cl-scale/redis-client/tls.key")
    assert {vol["secret"]["secretName"] for vol in app["volumes"] if "secret" in vol} == {"redis-ca", "redis-client"}
    assert "BEGIN" not in yaml.safe_dump_all(docs)  # certificates are never rendered, only mounted


def test_service_exposes_grpc_and_http_and_the_policy_admits_only_clients():
    v = load({"grpcGateway": GATEWAY, "networkPolicy": {"metricsNamespace": "monitoring"}})
    docs = manifest_docs(k8s.render(v))
    svc = by_kind(docs, "Service")["chainlit-gateway"]["spec"]
    assert svc["type"] == "LoadBalancer"
    assert [(p["name"], p["port"]) for p in svc["ports"]] == [("grpc", 50051), ("http", 8100)]  # never health
    (rule,) = by_kind(docs, "NetworkPolicy")["chainlit-gateway"]["spec"]["ingress"]
    assert rule["from"] == [{"podSelector": {"matchLabels": {"cl-scale.io/gateway-client": "true"}}},
                            {"ipBlock": {"cidr": "203.0.113.0/24"}}]
    assert {p["port"] for p in rule["ports"]} == {"grpc", "http"}
    assert by_kind(docs, "PodDisruptionBudget")["chainlit-gateway"]["spec"]["maxUnavailable"] == 1


def test_image_installs_the_grpc_extra_and_the_secrets_example_lists_the_tokens():
    v = load({"grpcGateway": {"enabled": True}})
    assert '"cl-scale[grpc]==' in scaffold.render(v)["Dockerfile"]
    both = load({"grpcGateway": {"enabled": True}, "bridges": [{"name": "b", "url": "kafka://k:9092/t?group=g"}]})
    assert '"cl-scale[bridges,grpc]==' in scaffold.render(both)["Dockerfile"]
    assert "CL_SCALE_GATEWAY_TOKENS=\n" in k8s.render(v)["secrets.env.example"]
    assert "CL_SCALE_GATEWAY_TOKENS=" in compose.render(v)[".env.example"]


def test_compose_runs_the_gateway_with_certificates_from_certs_dir(tmp_path):
    v = load({"grpcGateway": GATEWAY, "redis": REDIS})
    text = compose.render(v)["compose.yaml"]
    f = tmp_path / "compose.yaml"
    f.write_text(text)
    out = subprocess.run([CHECK, "--builtin-schema", "vendor.compose-spec", str(f)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    doc = yaml.safe_load(text)
    gw = doc["services"]["gateway"]
    assert gw["entrypoint"] == ["cl-scale"] and gw["command"][0] == "gateway" and gw["read_only"]
    assert gw["ports"] == ["50051:50051", "8100:8100"]
    assert {s["target"] for s in gw["secrets"]} >= {"/etc/cl-scale/gateway-tls/tls.key",
                                                    "/etc/cl-scale/redis-ca/ca.crt"}
    assert all(s["file"].startswith("./certs/") for s in doc["secrets"].values())
    assert [s["target"] for s in doc["services"]["app-1"]["secrets"]] == [
        "/etc/cl-scale/redis-ca/ca.crt", "/etc/cl-scale/redis-client/tls.crt", "/etc/cl-scale/redis-client/tls.key"]


@pytest.mark.parametrize("data, key, needle", [
    ({"grpcGateway": {"enabled": True, "serviceType": "LoadBalancer", "clientCIDRs": ["0.0.0.0/0"]}},
     "grpcGateway.serviceType", "set grpcGateway.tls.secretName"),
    ({"grpcGateway": {"enabled": True, "serviceType": "NodePort", "tls": {"secretName": "t"}}},
     "grpcGateway.clientCIDRs", "admits none"),
    ({"grpcGateway": {"tls": {"clientCaSecret": "ca"}}}, "grpcGateway.tls.clientCaSecret", "server certificate"),
    ({"grpcGateway": {"grpcPort": 8100}}, "grpcGateway.httpPort", "must differ"),
    ({"grpcGateway": {"tls": {"secretName": "Bad_Name"}}}, "grpcGateway.tls.secretName", "DNS"),
    ({"grpcGateway": {"clientCIDRs": ["everyone"]}}, "grpcGateway.clientCIDRs", "CIDR"),
    ({"redis": {"tls": {"caSecret": "ca"}}}, "redis.tls.caSecret", "external rediss://"),
    ({"redis": {"enabled": False, "url": "redis://r:6379/0", "tls": {"caSecret": "ca"}}}, "redis.url", "rediss://"),
    ({"redis": {"enabled": False, "url": "rediss://r:6379/0?ssl_ca_certs=/x", "tls": {"caSecret": "ca"}}},
     "redis.url", "drop ssl_*"),
])
def test_bad_gateway_and_tls_values_name_the_key_and_line(data, key, needle):
    with pytest.raises(ConfigError) as exc:
        load(data)
    text = str(exc.value)
    assert needle in text and "values.yaml:" in text and f": {key}" in text, text
