"""Issue 14, point by point: what each controller really does with the rendered objects, encoded as
checks on the rendered output (no cluster runs here; docs/kubernetes.md cites each behaviour)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from cl_scale.config.values import Values
from cl_scale.errors import ConfigError
from cl_scale.render import k8s
from cl_scale.render.k8s import SEED_CHAINLIT
from tests.render.test_k8s_validate import manifest_docs


def render(**data) -> list[dict]:
    return manifest_docs(k8s.render(Values.model_validate(data)))


def kind(docs: list[dict], name: str) -> list[dict]:
    return [d for d in docs if d["kind"] == name]


GATEWAY = {"ingress": {"kind": "gateway"}}


# 1. Gateway mode must not drop all traffic ---------------------------------------------------------
def test_gateway_mode_needs_the_proxy_namespace():
    with pytest.raises(ConfigError, match="networkPolicy.ingressNamespace") as err:
        render(**GATEWAY)
    assert "envoy-gateway-system" in str(err.value)
    (np,) = [d for d in render(**GATEWAY, networkPolicy={"ingressNamespace": "envoy-gateway-system"})
             if d["kind"] == "NetworkPolicy" and d["metadata"]["name"] == "chainlit"]
    assert {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "envoy-gateway-system"}}} \
        in np["spec"]["ingress"][0]["from"]


def test_host_network_controllers_are_admitted_by_cidr_and_pods_can_be_narrowed():
    docs = render(**GATEWAY, networkPolicy={"ingressCIDRs": ["10.0.0.0/16"]})
    np = next(d for d in docs if d["kind"] == "NetworkPolicy")
    assert np["spec"]["ingress"][0]["from"][0] == {"ipBlock": {"cidr": "10.0.0.0/16"}}
    docs = render(networkPolicy={"ingressPodLabels": {"app.kubernetes.io/name": "ingress-nginx"}})
    np = next(d for d in docs if d["kind"] == "NetworkPolicy")
    assert np["spec"]["ingress"][0]["from"][0] == {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}},
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "ingress-nginx"}}}


# 2. Gateway stickiness and timeouts ---------------------------------------------------------------
@pytest.mark.parametrize("affinity", ["sessionPersistence", "envoyGateway", "none"])
def test_every_route_outlasts_a_long_poll(affinity):
    docs = render(ingress={"kind": "gateway", "gateway": {"affinity": affinity}}, websocketOnly=affinity == "none",
                  networkPolicy={"ingressNamespace": "gw"})
    (route,) = kind(docs, "HTTPRoute")
    assert route["spec"]["rules"][0]["timeouts"] == {"request": "3600s"}  # Envoy's default 15 s cuts 45 s polls
    assert ("sessionPersistence" in route["spec"]["rules"][0]) is (affinity == "sessionPersistence")
    assert bool(kind(docs, "BackendTrafficPolicy")) is (affinity == "envoyGateway")


@pytest.mark.parametrize("mode,hash_on", [("ip_hash", {"type": "SourceIP"}),
                                          ("cookie", {"type": "Cookie", "cookie": {"name": "chainlit-affinity",
                                                                                   "ttl": "3600s"}})])
def test_envoy_gateway_policy_hashes_what_the_mode_says(mode, hash_on):
    docs = render(sticky={"mode": mode}, ingress={"kind": "gateway", "gateway": {"affinity": "envoyGateway"}},
                  networkPolicy={"ingressNamespace": "envoy-gateway-system"})
    (policy,) = kind(docs, "BackendTrafficPolicy")
    assert policy["apiVersion"] == "gateway.envoyproxy.io/v1alpha1"
    assert policy["spec"]["targetRefs"] == [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute",
                                             "name": "chainlit"}]
    assert policy["spec"]["loadBalancer"] == {"type": "ConsistentHash", "consistentHash": hash_on}


def test_no_stickiness_only_with_websocket_only_clients():
    with pytest.raises(ConfigError, match="ingress.gateway.affinity.*websocketOnly"):
        render(ingress={"kind": "gateway", "gateway": {"affinity": "none"}}, networkPolicy={"ingressNamespace": "gw"})
    with pytest.raises(ConfigError, match="ingress.controller.*websocketOnly"):
        render(ingress={"controller": "none"})
    (cm,) = [d for d in render(ingress={"controller": "none"}, websocketOnly=True,
                               networkPolicy={"ingressNamespace": "haproxy"}) if d["kind"] == "ConfigMap"]
    assert cm["data"]["CL_SCALE_WEBSOCKET_ONLY"] == "true"  # the instances serve transports = ["websocket"]


# 3. Header mode would send every browser to one pod -----------------------------------------------
@pytest.mark.parametrize("exposure", [{}, GATEWAY])
def test_header_mode_is_refused_on_kubernetes(exposure):
    with pytest.raises(ConfigError, match="sticky.mode='header'.*never sends it"):
        render(sticky={"mode": "header"}, networkPolicy={"ingressNamespace": "gw"}, **exposure)


# 4. Other ingress controllers ----------------------------------------------------------------------
def test_traefik_gets_its_sticky_cookie_on_the_service_and_no_nginx_annotations():
    docs = render(ingress={"className": "traefik", "tls": {"enabled": True}}, networkPolicy={"ingressNamespace": "traefik"})
    (ing,) = kind(docs, "Ingress")
    assert "annotations" not in ing["metadata"]
    svc = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "chainlit")
    ann = svc["metadata"]["annotations"]
    assert ann["traefik.ingress.kubernetes.io/service.sticky.cookie"] == "true"
    assert ann["traefik.ingress.kubernetes.io/service.sticky.cookie.name"] == "chainlit-affinity"
    assert ann["traefik.ingress.kubernetes.io/service.sticky.cookie.secure"] == "true"
    assert ann["traefik.ingress.kubernetes.io/service.sticky.cookie.httponly"] == "true"


@pytest.mark.parametrize("ingress,match", [
    ({"className": "haproxy"}, "ingress.controller='auto': cannot tell"),
    ({"className": "traefik", "controller": "ingress-nginx"}, "ingress.className='traefik'"),
    ({"className": "traefik"}, "networkPolicy.ingressNamespace"),  # no default namespace for Traefik
])
def test_unknown_or_mismatched_controllers_are_refused(ingress, match):
    with pytest.raises(ConfigError, match=match):
        render(ingress=ingress)


# 5. The app's own secrets --------------------------------------------------------------------------
def test_app_secrets_come_from_secrets_never_configmaps():
    docs = render(app={"extraSecrets": ["llm-keys"]})
    c = kind(docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]
    assert {"secretRef": {"name": "chainlit-secrets"}} in c["envFrom"]
    assert {"secretRef": {"name": "llm-keys"}} in c["envFrom"]
    example = k8s.render(Values())["secrets.env.example"]
    assert "OPENAI_API_KEY" in example  # told where their own keys go


def test_a_redis_url_with_credentials_comes_from_the_secret():
    files = k8s.render(Values.model_validate({"redis": {"enabled": False, "urlFromSecret": True}}))
    c = kind(manifest_docs(files), "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in c["env"]}
    assert env["CL_SCALE_REDIS_URL"] == {"name": "CL_SCALE_REDIS_URL", "valueFrom": {"secretKeyRef": {
        "name": "chainlit-secrets", "key": "CL_SCALE_REDIS_URL"}}}
    assert "\nCL_SCALE_REDIS_URL=\n" in files["secrets.env.example"]
    with pytest.raises(ValueError, match="only with redis.enabled=false"):
        Values.model_validate({"redis": {"urlFromSecret": True}})  # the bundled Redis has its own URL


# 6. Workers, gateways' callers and Prometheus get through -------------------------------------------
def test_labelled_workers_reach_redis_and_the_admin_port():
    docs = render(networkPolicy={"metricsNamespace": "monitoring"})
    app_np = next(d for d in docs if d["kind"] == "NetworkPolicy" and d["metadata"]["name"] == "chainlit")
    admin = next(r for r in app_np["spec"]["ingress"] if r["ports"] == [{"protocol": "TCP", "port": "admin"}])
    assert admin["from"] == [{"podSelector": {"matchLabels": {"cl-scale.io/gateway-client": "true"}}},
                             {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    redis_np = next(d for d in docs if d["kind"] == "NetworkPolicy" and d["metadata"]["name"] == "chainlit-redis")
    assert {"podSelector": {"matchLabels": {"cl-scale.io/redis-client": "true"}}} in redis_np["spec"]["ingress"][0]["from"]


# 7. The namespace exists on first apply -------------------------------------------------------------
def test_the_namespace_is_rendered_first():
    files = k8s.render(Values.model_validate({"namespace": "chat"}))
    assert yaml.safe_load(files["kustomization.yaml"])["resources"][0] == "namespace.yaml"
    assert yaml.safe_load(files["namespace.yaml"])["metadata"]["name"] == "chat"
    assert "namespace.yaml" not in k8s.render(Values())  # "default" exists
    assert "namespace.yaml" not in k8s.render(Values.model_validate({"namespace": "chat", "createNamespace": False}))


# 8. Node drains never stall on unready pods ----------------------------------------------------------
def test_pdb_lets_drains_evict_unready_pods():
    (pdb,) = kind(render(), "PodDisruptionBudget")
    assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"


# 9. A new Redis password rolls both sides: see test_k8s_validate.test_matrix_kustomize_builds ----------
def test_the_generated_secret_name_carries_a_content_hash():
    gen = yaml.safe_load(k8s.render(Values())["kustomization.yaml"])["secretGenerator"][0]
    assert "disableNameSuffixHash" not in gen.get("options", {})


# 10. The app's Chainlit config ------------------------------------------------------------------------
def test_the_image_chainlit_dir_is_seeded_into_the_writable_one(tmp_path):
    pod = kind(render(), "Deployment")[0]["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    assert init["command"] == ["python", "-c", SEED_CHAINLIT]
    assert init["volumeMounts"] == [{"name": "chainlit", "mountPath": "/seed"}]
    assert "chainlit-config" not in {v["name"] for v in pod["volumes"]}  # the image's config.toml is used
    # The seed script, run for real with the two paths moved into a temp dir.
    image, seed = tmp_path / "image-chainlit", tmp_path / "seed"
    (image / "translations").mkdir(parents=True)
    (image / "config.toml").write_text("[meta]\ngenerated_by = \"2.12.0\"\n")
    (image / "translations" / "fr-FR.json").write_text("{}")
    seed.mkdir()
    script = SEED_CHAINLIT.replace("/app/.chainlit", str(image)).replace("/seed", str(seed))
    subprocess.run([sys.executable, "-c", script], check=True, timeout=30)
    assert (seed / "config.toml").read_text().startswith("[meta]") and (seed / "translations" / "fr-FR.json").exists()
    empty = SEED_CHAINLIT.replace("/app/.chainlit", str(tmp_path / "absent")).replace("/seed", str(seed))
    subprocess.run([sys.executable, "-c", empty], check=True, timeout=30)  # an image without .chainlit/


# 11. Turning on the HPA --------------------------------------------------------------------------------
def test_hpa_pair_and_the_server_side_apply_note():
    v = Values.model_validate({"hpa": {"enabled": True}})
    files = k8s.render(v)
    assert "replicas" not in yaml.safe_load(files["deployment.yaml"])["spec"]
    assert yaml.safe_load(files["hpa.yaml"])["spec"]["minReplicas"] == 3
    assert "kubectl apply --server-side -k ." in files["README.md"]
    assert "edit-last-applied" in files["README.md"]


# 12. Exposure and portability --------------------------------------------------------------------------
def test_only_the_public_port_is_routed():
    for data in ({}, {"ingress": {"kind": "gateway"}, "networkPolicy": {"ingressNamespace": "gw"}}):
        docs = render(**data)
        svc = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "chainlit")
        assert [p["name"] for p in svc["spec"]["ports"]] == ["http", "admin"]
        for ing in kind(docs, "Ingress"):
            assert {p["backend"]["service"]["port"]["name"] for r in ing["spec"]["rules"]
                    for p in r["http"]["paths"]} == {"http"}
        for route in kind(docs, "HTTPRoute"):
            assert {b["port"] for r in route["spec"]["rules"] for b in r["backendRefs"]} == {80}
        dep = kind(docs, "Deployment")[0]["spec"]["template"]
        assert dep["metadata"]["annotations"]["prometheus.io/port"] == "9090"
        cm = kind(docs, "ConfigMap")[0]["data"]
        assert cm["CL_SCALE_ADMIN_PORT"] == "9090"


def test_pods_advertise_their_ip_through_the_runtime_which_brackets_ipv6():
    c = kind(render(), "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in c["env"]}
    assert env["CL_SCALE_ADVERTISE_HOST"]["value"] == "$(POD_IP)" and "CL_SCALE_ADVERTISE_URL" not in env
