"""Rendered manifests through real tools: ``kubernetes-validate --strict`` (1.30, 1.33 and the
newest bundled schema), ``kubectl kustomize``, and the cross-object checks of ``k8s_checks``
(what the schemas miss), over the default values and a pairwise matrix of the options."""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import pytest
import yaml

from cl_scale.config.values import Values
from cl_scale.render import certs, k8s, k8s_bridges
from cl_scale.render.k8s_common import SECRET_KEYS
from tests.render import k8s_checks as kc

VERSIONS = kc.validate_versions()

# Pairwise over sticky x exposure x redis x hpa x tls (every pair of levels appears; see
# test_matrix_is_pairwise), plus rows for the remaining switches. Exposure: which balancer serves the
# app (ingress-nginx, Traefik, Gateway API with sessionPersistence, Envoy Gateway's policy, or none).
MATRIX = [
    # sticky,   exposure,        redis,      hpa,   tls,  extra values
    ("cookie", "ingress-nginx", "external", False, False,
     {"redis": {"tls": {"caSecret": "redis-ca", "clientCertSecret": "redis-client"}},
      "uploads": {"storage": "shared", "size": "50Gi", "storageClassName": "nfs-client"},
      "grpcGateway": {"enabled": True, "serviceType": "NodePort", "clientCIDRs": ["203.0.113.0/24"],
                      "tls": {"secretName": "gateway-tls", "clientCaSecret": "workers-ca"}}}),
    ("ip_hash", "ingress-nginx", "bundled", True, True, {}),
    ("cookie", "traefik", "bundled", False, True, {}),
    ("ip_hash", "traefik", "external", True, False, {}),
    ("cookie", "gateway", "external", True, True, {}),
    ("ip_hash", "gateway", "bundled", False, False, {}),
    ("ip_hash", "envoy", "external", True, False, {}),
    ("cookie", "envoy", "bundled", False, True, {}),
    ("ip_hash", "none", "bundled", True, True, {}),
    ("cookie", "none", "external", False, False, {}),
    ("ip_hash", "ingress-nginx", "external", True, False,
     {"auth": {"existingSecret": True, "secretName": "prod.chat-secrets"}, "app": {"extraSecrets": ["llm-keys"]},
      "pdb": {"enabled": False}, "networkPolicy": {"enabled": False},
      "redis": {"url": None, "urlFromSecret": True, "tls": {"caSecret": "redis-ca"}},
      "grpcGateway": {"enabled": True, "serviceType": "LoadBalancer", "replicas": 1, "tls": {"secretName": "gw"}},
      "autogen": {"enabled": True, "agents": [{"name": "team", "command": ["python", "-m", "team"]}]},
      "bridges": [{"name": "replies", "url": "kafka://kafka-0.kafka:9093,kafka-1.kafka:9093/replies?group=cl-scale"
                                             "&security_protocol=SASL_SSL&sasl_username=bridge", "replicas": 3}]}),
    ("cookie", "gateway", "bundled", False, False,
     {"name": "support-bot", "namespace": "team-a", "replicas": 5,
      "sticky": {"cookieName": "route"}, "pdb": {"maxUnavailable": "25%"},
      "grpcGateway": {"enabled": True, "replicas": 3, "grpcPort": 443, "httpPort": 8443},
      "autogen": {"enabled": True, "bridgeReplicas": 2, "agents": [
          {"name": "manager", "command": ["python", "agents.py", "manager"]},
          {"name": "writer", "command": ["python", "agents.py", "writer"], "replicas": 2, "env": {"X": "$(Y)"},
           "image": "ghcr.io/acme/agents:1.2"}]},
      "ingress": {"gateway": {"name": "public", "namespace": "gateways"}, "host": "*.chat.example.org"},
      "networkPolicy": {"ingressPodLabels": {"gateway.envoyproxy.io/owning-gateway-name": "public"},
                        "metricsNamespace": "monitoring"},
      "app": {"env": {"LOG_LEVEL": "debug", "FEATURE_X": "on"}, "port": 9000, "adminPort": 9001,
              "image": "ghcr.io/acme/bot@sha256:" + "a" * 64, "imagePullPolicy": "Always",
              "chainlitConfig": '[project]\ntransports = ["websocket"]\n[meta]\ngenerated_by = "2.12.0"\n'},
      "resources": {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"cpu": "2", "memory": "2Gi"}},
      "bridges": [{"name": "kafka", "url": "kafka://kafka:9092/replies?group=g"},
                  {"name": "mq", "url": "amqps://bridge@rabbitmq:5671/prod?queue=replies&exchange=agents",
                   "requireSignature": True, "batchSize": 50, "healthPort": 9200}]}),
    ("ip_hash", "ingress-nginx", "bundled", False, False,
     {"ingress": {"enabled": False}, "replicas": 1, "networkPolicy": {"ingressCIDRs": ["10.0.0.0/16"]}}),
]
EXPOSURES = ("ingress-nginx", "traefik", "gateway", "envoy", "none")


def deep_merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def make_values(sticky, exposure, redis, hpa, tls, extra) -> Values:
    ingress = {
        "ingress-nginx": {"kind": "ingress"},
        "traefik": {"kind": "ingress", "className": "traefik"},
        "gateway": {"kind": "gateway"},
        "envoy": {"kind": "gateway", "gateway": {"affinity": "envoyGateway"}},
        "none": {"kind": "ingress", "className": "haproxy", "controller": "none"},
    }[exposure]
    data = {
        "sticky": {"mode": sticky},
        "ingress": {**ingress, "tls": {"enabled": tls}},
        "networkPolicy": {"ingressNamespace": {"traefik": "traefik", "gateway": "envoy-gateway-system",
                                               "envoy": "envoy-gateway-system", "none": "haproxy"}.get(exposure)},
        "websocketOnly": exposure == "none",
        "redis": {"enabled": True} if redis == "bundled" else
                 {"enabled": False, "url": "rediss://redis.example.com:6380/2"},
        "hpa": {"enabled": hpa, "minReplicas": 2, "maxReplicas": 6, "scaleDownStabilizationSeconds": 900},
    }
    return Values.model_validate(deep_merge(data, extra))


def matrix_id(row) -> str:
    sticky, kind, redis, hpa, tls, extra = row
    base = f"{sticky}-{kind}-{redis}-{'hpa' if hpa else 'nohpa'}-{'tls' if tls else 'notls'}"
    return base + (f"-x{MATRIX.index(row)}" if extra else "")


def manifest_docs(files: dict[str, str]) -> list[dict]:
    """Objects of the directory, in kustomization order."""
    order = yaml.safe_load(files["kustomization.yaml"])["resources"]
    return [d for name in order for d in yaml.safe_load_all(files[name]) if d]


def secret_keys(v: Values, files: dict[str, str]) -> dict[str, set[str]]:
    """Secret name -> keys: the documented contract of an existing Secret, else what secrets.env.example
    lists; extraSecrets are the user's (loaded whole, no key referenced)."""
    if v.auth.existingSecret:  # the documented contract of the Secret
        out = {v.auth.secretName: set(SECRET_KEYS) | ({"CL_SCALE_REDIS_URL"} if v.redis.urlFromSecret else set())
               | set(k8s_bridges.secret_keys(v))}
    else:
        out = {v.auth.secretName: kc.env_example_keys(files["secrets.env.example"])}
    tls = {m.secret: {key for key, _ in m.files} for m in [*certs.redis_mounts(v), *certs.gateway_mounts(v)]}
    return {**out, **{name: set() for name in v.app.extraSecrets}, **tls}


def write_dir(root: Path, files: dict[str, str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for rel, text in files.items():
        (root / rel).write_text(text)
    return root


# --------------------------------------------------------------------------- the matrix


def test_matrix_is_pairwise():
    levels = [(0, ("ip_hash", "cookie")), (1, EXPOSURES),
              (2, ("bundled", "external")), (3, (False, True)), (4, (False, True))]
    for (i, li), (j, lj) in itertools.combinations(levels, 2):
        seen = {(row[i], row[j]) for row in MATRIX}
        assert seen == set(itertools.product(li, lj)), (i, j)
    assert len(MATRIX) <= 13


def test_validate_versions_include_newest_bundled():
    versions = kc.schema_versions()
    assert versions[-1] in VERSIONS and "1.30.0" in VERSIONS and "1.33.0" in VERSIONS
    assert tuple(map(int, versions[-1].split("."))) >= (1, 37, 0)


@pytest.mark.parametrize("row", MATRIX, ids=matrix_id)
def test_matrix_validates(row, tmp_path):
    v = make_values(*row)
    files = k8s.render(v)
    docs = manifest_docs(files)
    stream = [d for d in yaml.safe_load_all(k8s.render_stream(v)) if d]
    assert stream == docs, "render_stream must hold exactly the directory's objects"

    path = tmp_path / "all.yaml"
    path.write_text(k8s.render_stream(v))
    assert kc.kubernetes_validate(path, docs, VERSIONS) == []
    assert kc.check_all(docs, namespace=v.namespace, secret_keys=secret_keys(v, files)) == []

    # What each switch must produce.
    kinds = [d["kind"] for d in docs]
    dep = next(d for d in docs if d["kind"] == "Deployment")
    assert ("replicas" in dep["spec"]) is (not v.hpa.enabled)
    assert ("HorizontalPodAutoscaler" in kinds) is v.hpa.enabled
    assert ("StatefulSet" in kinds) is v.redis.enabled
    assert ("PodDisruptionBudget" in kinds) is v.pdb.enabled
    assert ("NetworkPolicy" in kinds) is v.networkPolicy.enabled
    gateway, autogen = v.grpcGateway.enabled, v.autogen.enabled
    assert kinds.count("NetworkPolicy") == (1 + v.redis.enabled + len(v.bridges) + gateway + 3 * autogen) \
        * v.networkPolicy.enabled
    assert kinds.count("Deployment") == 1 + len(v.bridges) + gateway + autogen * (2 + len(v.autogen.agents))
    assert kinds.count("PodDisruptionBudget") == v.pdb.enabled * (1 + (gateway and v.grpcGateway.replicas > 1))
    assert ("Ingress" in kinds) is (v.ingress.enabled and v.ingress.kind == "ingress")
    assert ("HTTPRoute" in kinds) is (v.ingress.enabled and v.ingress.kind == "gateway")
    assert ("secrets.env.example" in files) is (not v.auth.existingSecret)
    assert ("secretGenerator" in yaml.safe_load(files["kustomization.yaml"])) is (not v.auth.existingSecret)
    env = {e["name"]: e for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    if v.redis.urlFromSecret:
        assert env["CL_SCALE_REDIS_URL"]["valueFrom"]["secretKeyRef"]["key"] == "CL_SCALE_REDIS_URL"
    else:
        assert env["CL_SCALE_REDIS_URL"]["value"] == (f"redis://{v.name}-redis:6379/0" if v.redis.enabled
                                                      else certs.with_redis_tls(v.redis.url, v))
    assert env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"].get("optional", False) is (not v.redis.enabled)
    ing = next((d for d in docs if d["kind"] == "Ingress"), None)
    if ing is not None:
        assert ("tls" in ing["spec"]) is v.ingress.tls.enabled


@pytest.mark.skipif(kc.KUBECTL is None, reason="kubectl not installed")
@pytest.mark.parametrize("row", MATRIX, ids=matrix_id)
def test_matrix_kustomize_builds(row, tmp_path):
    v = make_values(*row)
    files = k8s.render(v)
    root = write_dir(tmp_path / "k8s", files)
    if not v.auth.existingSecret:
        example = (root / "secrets.env.example").read_text()
        (root / "secrets.env").write_text(example.replace("=\n", "=dummy-value\n"))
    built = kc.kustomize(root)
    secrets = [d for d in built if d["kind"] == "Secret"]
    rest = [d for d in built if d["kind"] != "Secret"]
    assert sorted((d["kind"], d["metadata"]["name"]) for d in rest) == \
        sorted((d["kind"], d["metadata"]["name"]) for d in manifest_docs(files))
    assert all(d["metadata"]["namespace"] == v.namespace for d in built if d["kind"] != "Namespace")
    if v.auth.existingSecret:
        assert secrets == []
    else:
        (secret,) = secrets
        # A content hash in the name, and every reference rewritten to it: a new password rolls both
        # the app pods and Redis (point 9 of issue 14).
        assert secret["metadata"]["name"].startswith(v.auth.secretName + "-")
        assert set(secret["data"]) == set(SECRET_KEYS) | set(k8s_bridges.secret_keys(v))
        assert secret["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "cl-scale"
        refs = [ref for w in built if w["kind"] in ("Deployment", "StatefulSet")
                for c in w["spec"]["template"]["spec"]["containers"]
                for ref in [*(e["valueFrom"]["secretKeyRef"]["name"] for e in c.get("env", [])
                              if "secretKeyRef" in e.get("valueFrom", {})),
                            *(f["secretRef"]["name"] for f in c.get("envFrom", []) if "secretRef" in f)]]
        assert refs and set(refs) == {secret["metadata"]["name"]}


@pytest.mark.skipif(kc.KUBECTL is None, reason="kubectl not installed")
def test_kustomized_default_validates_including_secret(tmp_path):
    v = Values()
    files = k8s.render(v)
    root = write_dir(tmp_path / "k8s", files)
    shutil.copy(root / "secrets.env.example", root / "secrets.env")  # empty values still build
    built = kc.kustomize(root)
    path = tmp_path / "built.yaml"
    path.write_text(yaml.safe_dump_all(built))
    assert kc.kubernetes_validate(path, built, VERSIONS) == []
    assert any(d["kind"] == "Secret" for d in built)


# --------------------------------------------------------------------------- the harness itself


def test_harness_reports_schema_errors_and_unknown_kinds(tmp_path):
    """Proves the validation above is not vacuous: a misspelt field fails --strict, and an
    unknown kind (which kubernetes-validate only warns about) is reported, not passed."""
    docs = manifest_docs(k8s.render(Values()))
    dep = next(d for d in docs if d["kind"] == "Deployment")
    bad = kc.mutated(dep, ["spec", "template", "spec", "containers", 0, "readinesProbe"], {})
    widget = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump_all([bad, widget]))
    problems = kc.kubernetes_validate(path, [bad, widget], VERSIONS)
    text = "\n".join(problems)
    assert "readinesProbe" in text and "Widget" in text


def test_harness_own_checks_catch_broken_references():
    v = Values.model_validate({"ingress": {"kind": "gateway"}, "networkPolicy": {"ingressNamespace": "gw"}})
    files = k8s.render(v)
    docs = manifest_docs(files)
    keys = secret_keys(v, files)
    assert kc.check_all(docs, namespace=v.namespace, secret_keys=keys) == []

    def problems_after(kind: str, path: list, value) -> list[str]:
        i = next(i for i, d in enumerate(docs) if d["kind"] == kind)
        broken = docs[:i] + [kc.mutated(docs[i], path, value)] + docs[i + 1:]
        return kc.check_all(broken, namespace=v.namespace, secret_keys=keys)

    container = ["spec", "template", "spec", "containers", 0]
    assert problems_after("Service", ["spec", "ports", 0, "targetPort"], "web")
    assert problems_after("Deployment", container + ["env", 6, "valueFrom", "secretKeyRef", "key"], "NOPE")
    assert problems_after("Deployment", container + ["envFrom", 0, "configMapRef", "name"], "missing")
    assert problems_after("Deployment", container + ["volumeMounts"], [])
    assert problems_after("Deployment", container + ["readinessProbe", "httpGet", "port"], "metrics")
    assert problems_after("Deployment", container + ["securityContext", "readOnlyRootFilesystem"], False)
    assert problems_after("Deployment", container + ["imagePullPolicy"], "Sometimes")
    assert problems_after("Deployment", ["spec", "selector", "matchLabels", "extra"], "x")
    assert problems_after("Deployment", container + ["env", 3, "value"], "http://$(POD_IPX):8000")
    assert problems_after("HTTPRoute", ["spec", "rules", 0, "sessionPersistence", "type"], "Sticky")
    assert problems_after("HTTPRoute", ["spec", "rules", 0, "backendRefs", 0, "port"], 8080)
    assert problems_after("HTTPRoute", ["spec", "rules", 0, "sessionPersistence", "colour"], "x")
    assert problems_after("HTTPRoute", ["spec", "rules", 0, "timeouts"], {})  # Envoy's 15 s default
    assert problems_after("HTTPRoute", ["spec", "rules", 0, "timeouts", "request"], "15s")
    assert problems_after("HTTPRoute", ["spec", "rules", 0, "sessionPersistence"], None)
    assert problems_after("HTTPRoute", ["spec", "rules", 0, "backendRefs", 0, "port"], 9090)  # admin port
    assert problems_after("Deployment", ["spec", "template", "spec", "initContainers", 0, "securityContext"], {})
    assert problems_after("ConfigMap", ["data", "REDIS_PASSWORD"], "x")
    assert problems_after("NetworkPolicy", ["spec", "ingress", 0, "ports", 0, "port"], "grpc")
    assert problems_after("ServiceAccount", ["metadata", "namespace"], "other")
    docs_ing = manifest_docs(k8s.render(Values()))
    i = next(i for i, d in enumerate(docs_ing) if d["kind"] == "Ingress")
    rule_path = ["spec", "rules", 0, "http", "paths", 0]
    hash_by = ["metadata", "annotations", "nginx.ingress.kubernetes.io/upstream-hash-by"]
    for path, value in [(rule_path + ["pathType"], "Regex"),
                        (rule_path + ["backend", "service", "port"], {"name": "https"}),
                        (rule_path + ["backend", "service", "port"], {"name": "admin"}),
                        (rule_path + ["backend", "service", "name"], "other"),
                        (["metadata", "annotations"], {}),  # no stickiness at all
                        (hash_by, "$http_x_session_affinity"),  # empty for every browser
                        (["spec", "ingressClassName"], "traefik")]:  # annotations Traefik ignores
        broken = docs_ing[:i] + [kc.mutated(docs_ing[i], path, value)] + docs_ing[i + 1:]
        assert kc.check_all(broken, namespace="default", secret_keys=secret_keys(Values(), k8s.render(Values())))


TYPED_LOOKING = {"OCT": "0o17", "HEX": "0x1F", "ON": "on", "Y": "y", "N": "n", "EXP": "1e3",
                 "NUL": "~", "TRUE": "True", "EMPTY": "", "DATE": "2001-12-14", "INF": ".inf",
                 "SEXA": "1:20", "NEG": "-5", "DOT": ".5", "EQ": "=", "NULL": "null"}


@pytest.mark.skipif(kc.KUBECTL is None, reason="kubectl not installed")
def test_typed_looking_strings_stay_strings_through_kustomize(tmp_path):
    """kustomize reads YAML 1.2 and kubectl's go-yaml reads y/n as booleans: a value PyYAML
    leaves plain (0o17, 1e3, y) must still come out of ``kubectl kustomize`` as the same string."""
    v = Values.model_validate({"auth": {"existingSecret": True}, "app": {"env": TYPED_LOOKING}})
    built = kc.kustomize(write_dir(tmp_path / "k8s", k8s.render(v)))
    data = next(d for d in built if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "chainlit-env")["data"]
    assert {k: data[k] for k in TYPED_LOOKING} == TYPED_LOOKING
