"""The k8s renderer's contract: files, the pod the runtime expects (command, env, probes, drain,
security), stickiness per mode, Redis, injection safety, and the committed ``k8s/`` folder.
Validation against schemas and kustomize lives in ``test_k8s_validate.py``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from cl_scale.config.loader import load_values
from cl_scale.config.values import Values
from cl_scale.errors import ConfigError
from cl_scale.ops.processes import free_port
from cl_scale.render import k8s
from cl_scale.render.k8s_common import SECRET_KEYS, image_version
from cl_scale.wire.keyspace import acl_rules
from tests.render.test_k8s_validate import manifest_docs

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "values.yaml"


def values(**data) -> Values:
    return Values.model_validate(data)


def by_kind(v: Values, kind: str, name: str | None = None) -> dict:
    docs = manifest_docs(k8s.render(v))
    return next(d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name))


def app_container(v: Values) -> dict:
    return by_kind(v, "Deployment")["spec"]["template"]["spec"]["containers"][0]


# --------------------------------------------------------------------------- files


def test_default_files():
    files = k8s.render(Values())
    assert set(files) == {
        "serviceaccount.yaml", "configmap.yaml", "redis-service.yaml", "redis-statefulset.yaml",
        "service.yaml", "deployment.yaml", "pdb.yaml", "networkpolicy.yaml", "ingress.yaml",
        "kustomization.yaml", "secrets.env.example", ".gitignore", "README.md"}
    kust = yaml.safe_load(files["kustomization.yaml"])
    assert set(kust["resources"]) == {f for f in files if f.endswith(".yaml") and f != "kustomization.yaml"}
    assert kust["secretGenerator"] == [{
        "name": "chainlit-secrets", "type": "Opaque", "envs": ["secrets.env"],
        "options": {"labels": kust["secretGenerator"][0]["options"]["labels"]}}]  # hashed name: see issue 14.9
    assert [ln for ln in files["secrets.env.example"].splitlines() if not ln.startswith("#")] == \
        [f"{k}=" for k in SECRET_KEYS]
    assert files[".gitignore"] == "secrets.env\n"
    for name, text in files.items():  # one kind per file
        if name.endswith(".yaml") and name != "kustomization.yaml":
            assert len({d["kind"] for d in yaml.safe_load_all(text) if d}) == 1, name


def test_optional_files():
    files = k8s.render(values(hpa={"enabled": True}, ingress={"kind": "gateway"}, networkPolicy={"ingressNamespace": "gw"},
                              auth={"existingSecret": True}, redis={"enabled": False, "url": "redis://r:6379"}))
    assert "hpa.yaml" in files and "httproute.yaml" in files and "ingress.yaml" not in files
    assert "secrets.env.example" not in files and "redis-statefulset.yaml" not in files
    assert "secretGenerator" not in yaml.safe_load(files["kustomization.yaml"])


def test_stream_has_no_secret_and_every_object():
    for v in (Values(), values(ingress={"kind": "gateway"}, hpa={"enabled": True}, networkPolicy={"ingressNamespace": "gw"})):
        stream = k8s.render_stream(v)
        docs = [d for d in yaml.safe_load_all(stream) if d]
        assert docs == manifest_docs(k8s.render(v))
        assert "Secret" not in {d["kind"] for d in docs}
        assert "kind: Secret" not in stream


def test_labels_and_stable_selectors():
    v = values(name="bot", namespace="prod", app={"image": "reg.example.com/bot:v2.3.1"})
    for d in manifest_docs(k8s.render(v)):
        assert d["metadata"].get("namespace", d["metadata"]["name"]) == "prod"  # the Namespace itself: its name
        labels = d["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == "bot"
        assert labels["app.kubernetes.io/part-of"] == "bot"
        assert labels["app.kubernetes.io/managed-by"] == "cl-scale"
    dep = by_kind(v, "Deployment")
    assert dep["metadata"]["labels"]["app.kubernetes.io/version"] == "v2.3.1"
    assert dep["spec"]["selector"]["matchLabels"] == {
        "app.kubernetes.io/name": "chainlit", "app.kubernetes.io/instance": "bot",
        "app.kubernetes.io/component": "app"}
    assert by_kind(v, "StatefulSet")["metadata"]["labels"]["app.kubernetes.io/version"] == "7.2-alpine"


@pytest.mark.parametrize("image,version", [
    ("registry.example.com/chainlit-app:0.1.0", "0.1.0"),
    ("localhost:5000/app", "latest"),
    ("app@sha256:" + "ab" * 32, "abababababab"),
    ("app:_weird.", "weird"),
    ("app:" + "x" * 100, "x" * 63),
])
def test_image_version(image, version):
    assert image_version(image) == version


# --------------------------------------------------------------------------- the app pod


def test_app_pod_matches_runtime_contract():
    v = values(app={"module": "chat/app.py", "port": 9000}, drain={"seconds": 50})
    dep = by_kind(v, "Deployment")
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["command"] == ["cl-scale", "run", "chat/app.py", "--host", "0.0.0.0", "--port", "9000"]
    assert c["ports"] == [{"name": "http", "containerPort": 9000, "protocol": "TCP"},
                          {"name": "admin", "containerPort": 9090, "protocol": "TCP"}]
    env = {e["name"]: e for e in c["env"]}
    assert env["CL_SCALE_INSTANCE_ID"]["value"] == "$(POD_NAME)"
    assert env["CL_SCALE_ADVERTISE_HOST"]["value"] == "$(POD_IP)"  # the runtime brackets IPv6
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert env["CL_SCALE_REDIS_URL"]["value"] == "redis://chainlit-redis:6379/0"
    for key in set(SECRET_KEYS) - {"REDIS_WORKER_PASSWORD"}:  # that one is the bundled Redis's own
        assert env[key]["valueFrom"]["secretKeyRef"]["name"] == "chainlit-secrets"
    assert env["CL_SCALE_WORKER_KEYS"]["valueFrom"]["secretKeyRef"]["optional"] is True
    assert "optional" not in env["CHAINLIT_AUTH_SECRET"]["valueFrom"]["secretKeyRef"]
    assert c["envFrom"] == [{"configMapRef": {"name": "chainlit-env"}}, {"secretRef": {"name": "chainlit-secrets"}}]
    assert c["startupProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["lifecycle"]["preStop"] == {"exec": {"command": ["sleep", "5"]}}
    assert pod["terminationGracePeriodSeconds"] == 65
    assert pod["securityContext"]["runAsUser"] == 10001 and pod["securityContext"]["fsGroup"] == 10001
    assert pod["automountServiceAccountToken"] is False
    assert pod["topologySpreadConstraints"][0]["topologyKey"] == "kubernetes.io/hostname"
    assert pod["topologySpreadConstraints"][0]["whenUnsatisfiable"] == "ScheduleAnyway"
    assert {m["mountPath"] for m in c["volumeMounts"]} >= {"/app/.files", "/app/.chainlit", "/tmp"}
    assert c["resources"] == {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"memory": "1Gi"}}
    assert dep["spec"]["replicas"] == 3


def test_config_change_rolls_pods():
    def annotation(v: Values) -> str:
        return by_kind(v, "Deployment")["spec"]["template"]["metadata"]["annotations"]["cl-scale.io/config-hash"]

    assert annotation(Values()) == annotation(Values())
    assert annotation(Values()) != annotation(values(app={"env": {"A": "1"}}))
    assert annotation(Values()) != annotation(values(app={"sessionTimeout": 60}))


def test_configmaps_hold_settings_never_secrets():
    v = values(app={"env": {"LOG_LEVEL": "debug"}, "sessionTimeout": 1800}, drain={"seconds": 12},
               sticky={"mode": "cookie"})
    env_cm = by_kind(v, "ConfigMap", "chainlit-env")
    assert env_cm["data"] == {
        "CHAINLIT_APP_ROOT": "/app", "HOME": "/tmp", "CL_SCALE_SESSION_TIMEOUT": "1800",
        "CL_SCALE_DRAIN_SECONDS": "12", "CL_SCALE_ADMIN_PORT": "9090", "CL_SCALE_WEBSOCKET_ONLY": "false",
        "LOG_LEVEL": "debug"}
    assert [d for d in manifest_docs(k8s.render(v)) if d["kind"] == "ConfigMap"] == [env_cm]  # no config.toml


@pytest.mark.parametrize("key", ["CHAINLIT_APP_ROOT", "POD_NAME", "POD_IP", "CL_SCALE_REDIS_URL"])
def test_owned_env_keys_are_refused(key):
    with pytest.raises(ConfigError, match=f"app.env.{key}"):
        load_values([], [f"app.env.{key}=x"])


def test_hpa_without_cpu_request_is_refused():
    with pytest.raises(ConfigError, match="resources.requests.cpu"):
        k8s.render(values(hpa={"enabled": True}, resources={"requests": {"memory": "1Gi"}}))


USER_TOML = '[project]\nsession_timeout = 1234\n[UI]\nname = "my-bot"\n[meta]\ngenerated_by = "2.12.0"\n'


def test_chainlit_loads_a_config_from_values(tmp_path):
    """``app.chainlitConfig`` is mounted over the seeded copy; the real Chainlit (subprocess, its own
    app root) accepts it."""
    v = values(app={"chainlitConfig": USER_TOML}, name="my-bot")
    (tmp_path / ".chainlit").mkdir()
    (tmp_path / ".chainlit" / "config.toml").write_text(
        by_kind(v, "ConfigMap", "my-bot-config")["data"]["config.toml"])
    code = ("import chainlit.config as c; s = c.load_settings(); "
            "print(s['project'].session_timeout, s['ui'].name)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, CHAINLIT_APP_ROOT=str(tmp_path)))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["1234", "my-bot"]


@pytest.mark.parametrize("toml,why", [("[project\n", "not valid TOML"), ("[project]\nx = 1\n", "[meta] generated_by")])
def test_a_config_chainlit_would_refuse_is_refused(toml, why):
    with pytest.raises(ConfigError, match="app.chainlitConfig") as err:
        k8s.render(values(app={"chainlitConfig": toml}))
    assert why in str(err.value)


def test_hpa_and_pdb():
    v = values(hpa={"enabled": True, "minReplicas": 2, "maxReplicas": 7, "targetCPUUtilizationPercentage": 60,
                    "scaleDownStabilizationSeconds": 900}, pdb={"maxUnavailable": "25%"})
    assert "replicas" not in by_kind(v, "Deployment")["spec"]
    spec = by_kind(v, "HorizontalPodAutoscaler")["spec"]
    assert (spec["minReplicas"], spec["maxReplicas"]) == (2, 7)
    assert spec["metrics"][0]["resource"]["target"]["averageUtilization"] == 60
    assert spec["behavior"]["scaleDown"] == {
        "stabilizationWindowSeconds": 900, "policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}]}
    assert by_kind(v, "PodDisruptionBudget")["spec"]["maxUnavailable"] == "25%"


def test_network_policies():
    v = values(networkPolicy={"ingressNamespace": "edge"})
    app_np = by_kind(v, "NetworkPolicy", "chainlit")
    peers = app_np["spec"]["ingress"][0]["from"]
    assert {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "edge"}}} in peers
    assert {"podSelector": app_np["spec"]["podSelector"]} in peers
    assert app_np["spec"]["policyTypes"] == ["Ingress"]  # egress open on purpose
    redis_np = by_kind(v, "NetworkPolicy", "chainlit-redis")
    assert redis_np["spec"]["ingress"][0]["from"] == [
        {"podSelector": app_np["spec"]["podSelector"]},
        {"podSelector": {"matchLabels": {"cl-scale.io/redis-client": "true"}}}]  # workers, bridges


# --------------------------------------------------------------------------- stickiness


@pytest.mark.parametrize("mode,expected", [
    ("ip_hash", {"nginx.ingress.kubernetes.io/upstream-hash-by": "$remote_addr"}),
    ("cookie", {"nginx.ingress.kubernetes.io/affinity": "cookie",
                "nginx.ingress.kubernetes.io/affinity-mode": "persistent",
                "nginx.ingress.kubernetes.io/session-cookie-name": "chainlit-affinity",
                "nginx.ingress.kubernetes.io/session-cookie-max-age": "3600",
                "nginx.ingress.kubernetes.io/session-cookie-expires": "3600"}),
])
def test_ingress_annotations(mode, expected):
    ing = by_kind(values(sticky={"mode": mode}, ingress={"tls": {"enabled": True}}), "Ingress")
    ann = ing["metadata"]["annotations"]
    assert expected.items() <= ann.items()
    assert ann["nginx.ingress.kubernetes.io/proxy-read-timeout"] == "3600"
    assert ann["nginx.ingress.kubernetes.io/proxy-send-timeout"] == "3600"
    assert ann["nginx.ingress.kubernetes.io/proxy-body-size"] == "20m"
    assert ann["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    if mode != "cookie":
        assert "nginx.ingress.kubernetes.io/affinity" not in ann
    assert ing["spec"]["ingressClassName"] == "nginx"
    assert ing["spec"]["tls"] == [{"hosts": ["chat.example.com"], "secretName": "chainlit-tls"}]
    assert ing["spec"]["rules"][0]["http"]["paths"][0]["pathType"] == "Prefix"


def test_affinity_cookie_never_reuses_chainlit_cookie():
    """ingress-nginx sets its own cookie: named like Chainlit's, it would overwrite the session id."""
    ann = by_kind(values(sticky={"mode": "cookie", "cookieName": "route"}), "Ingress")["metadata"]["annotations"]
    assert ann["nginx.ingress.kubernetes.io/session-cookie-name"] == "route"
    for mode_values in ({"mode": "cookie"}, {"mode": "cookie", "cookieName": "x-chainlit-session-ID"}):
        ann = by_kind(values(sticky=mode_values), "Ingress")["metadata"]["annotations"]
        assert ann["nginx.ingress.kubernetes.io/session-cookie-name"] == "chainlit-affinity"


def test_read_timeout_follows_nginx_values():
    ann = by_kind(values(nginx={"readTimeout": "2h", "clientMaxBodySize": "100m"}), "Ingress")["metadata"]["annotations"]
    assert ann["nginx.ingress.kubernetes.io/proxy-read-timeout"] == "7200"
    assert ann["nginx.ingress.kubernetes.io/proxy-body-size"] == "100m"


@pytest.mark.parametrize("mode,persistence", [
    ("ip_hash", {"type": "Cookie", "sessionName": "chainlit-affinity", "cookieConfig": {"lifetimeType": "Session"}}),
    ("cookie", {"type": "Cookie", "sessionName": "chainlit-affinity", "cookieConfig": {"lifetimeType": "Session"}}),
])
def test_httproute(mode, persistence):
    route = by_kind(values(sticky={"mode": mode}, ingress={"kind": "gateway", "gateway": {"name": "gw", "namespace": "infra"}},
                           networkPolicy={"ingressNamespace": "infra"}), "HTTPRoute")
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
    assert route["spec"]["parentRefs"] == [{"name": "gw", "namespace": "infra"}]
    assert route["spec"]["hostnames"] == ["chat.example.com"]
    rule = route["spec"]["rules"][0]
    assert rule["sessionPersistence"] == persistence
    assert rule["backendRefs"] == [{"name": "chainlit", "port": 80}]
    assert rule["timeouts"] == {"request": "3600s"}


# --------------------------------------------------------------------------- Redis


def test_bundled_redis_objects():
    v = values(redis={"storage": "5Gi", "maxmemory": "1gb", "image": "redis:7.4"})
    sts = by_kind(v, "StatefulSet")
    pod = sts["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["image"] == "redis:7.4"
    script = c["command"][2]
    for part in ('--requirepass "$REDIS_PASSWORD"', 'mem="$1"', '--maxmemory "$mem"', "--maxmemory-policy noeviction",
                 '--client-output-buffer-limit "pubsub 64mb 16mb 60"', "--appendonly yes"):
        assert part in script
    assert c["command"][3:7] == ["redis", "1gb", "6379", "/data"]
    assert c["command"][7:] == acl_rules("clscale", "worker")
    assert c["env"][0]["valueFrom"]["secretKeyRef"] == {"name": "chainlit-secrets", "key": "REDIS_PASSWORD"}
    assert sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "5Gi"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    svc = by_kind(v, "Service", "chainlit-redis")
    assert svc["spec"]["clusterIP"] == "None"


def test_external_redis_has_no_redis_objects():
    v = values(redis={"enabled": False, "url": "rediss://cache.example.com:6380/1"})
    docs = manifest_docs(k8s.render(v))
    assert not [d for d in docs if d["metadata"]["labels"]["app.kubernetes.io/component"] == "redis"]
    env = {e["name"]: e for e in app_container(v)["env"]}
    assert env["CL_SCALE_REDIS_URL"]["value"] == "rediss://cache.example.com:6380/1"


@pytest.mark.skipif(shutil.which("redis-server") is None or shutil.which("redis-cli") is None,
                    reason="redis-server/redis-cli not installed")
def test_rendered_redis_command_runs(tmp_path):
    """The StatefulSet's own command and readiness probe, run with the real redis-server (only
    /data and the port are swapped for a temp dir and a free port)."""
    c = by_kind(Values(), "StatefulSet")["spec"]["template"]["spec"]["containers"][0]
    port = str(free_port())
    cmd = c["command"][:5] + [port, str(tmp_path)] + c["command"][7:]
    probe = c["readinessProbe"]["exec"]["command"][:-1] + [port]
    password = 'pa ss"word$x'
    from tests.render.conftest import redis7_path

    env = dict(os.environ, REDIS_PASSWORD=password, PATH=redis7_path())
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while subprocess.run(probe, env=env).returncode != 0:
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "redis never answered the readiness probe"
            time.sleep(0.1)
        assert subprocess.run(probe, env=dict(env, REDIS_PASSWORD="wrong")).returncode != 0

        def config(key: str) -> list[str]:
            out = subprocess.run(["redis-cli", "-p", port, "config", "get", key], capture_output=True,
                                 text=True, env=dict(env, REDISCLI_AUTH=password), timeout=10).stdout
            return out.split()[1:]

        assert config("maxmemory") == [str(256 * 1024 * 1024)]
        assert config("maxmemory-policy") == ["noeviction"]
        assert config("appendonly") == ["yes"]
        assert "pubsub 67108864 16777216 60" in " ".join(config("client-output-buffer-limit"))
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    empty = subprocess.run(cmd, env=dict(os.environ, REDIS_PASSWORD=""), capture_output=True, text=True, timeout=10)
    assert empty.returncode == 1 and "REDIS_PASSWORD is empty" in empty.stderr


# --------------------------------------------------------------------------- injection


def _key_paths(node, prefix=()) -> set[tuple]:
    if isinstance(node, dict):
        out = set()
        for k, val in node.items():
            out.add(prefix + (k,))
            out |= _key_paths(val, prefix + (k,))
        return out
    if isinstance(node, list):
        return set().union(set(), *(_key_paths(x, prefix + ("[]",)) for x in node))
    return set()


def _yaml_keys(files: dict[str, str]) -> dict[str, set]:
    return {name: set().union(set(), *(_key_paths(d) for d in yaml.safe_load_all(text)))
            for name, text in files.items() if name.endswith(".yaml")}


EVIL = "x\nkind: Secret\n  evil: {a: 1}\n# comment: y\n- item\n---\nb: c #d"


def test_values_cannot_inject_keys():
    plain = values(app={"env": {"NOTE": "plain"}, "module": "app.py"})
    evil = values(app={"env": {"NOTE": EVIL}, "module": "my: app {x} #1.py"})
    assert _yaml_keys(k8s.render(evil)) == _yaml_keys(k8s.render(plain))
    assert by_kind(evil, "ConfigMap", "chainlit-env")["data"]["NOTE"] == EVIL
    assert app_container(evil)["command"][2] == "my: app {x} #1.py"
    stream = [d for d in yaml.safe_load_all(k8s.render_stream(evil)) if d]
    assert len(stream) == len(manifest_docs(k8s.render(plain)))


def test_dollar_is_escaped_for_kubelet_expansion():
    """``$(VAR)`` in command/env.value is expanded by the kubelet; ``$$`` keeps a literal ``$``."""
    v = values(app={"module": "app$(POD_NAME).py"},
               redis={"enabled": False, "url": "redis://us$(x)er@r.example.com:6379/0"})
    c = app_container(v)
    assert c["command"][2] == "app$$(POD_NAME).py"
    env = {e["name"]: e for e in c["env"]}
    assert env["CL_SCALE_REDIS_URL"]["value"] == "redis://us$$(x)er@r.example.com:6379/0"


def test_renderer_does_not_import_chainlit():
    code = "import sys, cl_scale.render.k8s; assert 'chainlit' not in sys.modules, 'chainlit imported'"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


# --------------------------------------------------------------------------- committed example


def test_committed_k8s_matches_examples():
    """``k8s/`` is ``cl-scale render k8s -f examples/values.yaml --out k8s``; re-render and compare."""
    rendered = k8s.render(load_values([EXAMPLES]), command="cl-scale render k8s -f examples/values.yaml --out k8s")
    committed_dir = ROOT / "k8s"
    committed = {p.relative_to(committed_dir).as_posix(): p.read_text()
                 for p in committed_dir.rglob("*") if p.is_file() and p.name != "secrets.env"}
    assert set(committed) == set(rendered), "regenerate: cl-scale render k8s -f examples/values.yaml --out k8s"
    for name, text in rendered.items():
        assert committed[name] == text, f"k8s/{name} drifted: regenerate with cl-scale render k8s -f examples/values.yaml --out k8s"


def test_cli_streams_the_same_manifests(tmp_path):
    exe = Path(sys.executable).with_name("cl-scale")
    proc = subprocess.run([str(exe), "render-k8s", "-f", str(EXAMPLES), "--out", "-"], capture_output=True,
                          text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == k8s.render_stream(load_values([EXAMPLES]))
