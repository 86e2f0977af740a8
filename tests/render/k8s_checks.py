"""Checks for rendered Kubernetes manifests that the JSON schemas cannot express: references
between objects (selectors, ConfigMap/Secret keys, port names, backends), security posture, and
the HTTPRoute CRD (kubernetes-validate has no schema for CRDs).

Every check appends readable problems to a list, so one failing test shows all of them.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

import jsonschema
import yaml

DATA = Path(__file__).resolve().parent / "data"
KUBERNETES_VALIDATE = str(Path(sys.executable).with_name("kubernetes-validate"))
KUBECTL = shutil.which("kubectl")

# Kinds kubernetes-validate has no schema for; each one must have its own check below.
CRD_KINDS = {"HTTPRoute", "BackendTrafficPolicy"}
REQUIRED_LABELS = ("name", "instance", "component", "part-of", "managed-by", "version")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
SECRET_LOOKING = re.compile(r"password|secret|token", re.IGNORECASE)
VAR_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")
# Labels of cluster clients (workers, gateways' callers) the NetworkPolicies admit without rendering them.
CLIENT_LABELS = {(("cl-scale.io/gateway-client", "true"),), (("cl-scale.io/redis-client", "true"),)}
# Paths each component writes at run time (read-only root filesystem).
WRITABLE = {"app": ["/app/.files", "/app/.chainlit", "/tmp"], "redis": ["/data", "/tmp"]}


# --------------------------------------------------------------------------- tools


def schema_versions() -> list[str]:
    """Kubernetes versions whose schemas kubernetes-validate bundles (from its package data)."""
    import kubernetes_validate

    root = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
    found = {m.group(1) for d in root.iterdir() if (m := re.match(r"^v(\d+\.\d+\.\d+)-local$", d.name))}
    return sorted(found, key=lambda s: tuple(int(p) for p in s.split(".")))


def validate_versions() -> list[str]:
    return sorted({"1.30.0", "1.33.0", schema_versions()[-1]}, key=lambda s: tuple(map(int, s.split("."))))


def kubernetes_validate(path: Path, docs: list[dict], versions: list[str]) -> list[str]:
    """Run the real ``kubernetes-validate --strict`` once over a multi-document file for every
    version; every non-CRD document must be reported as passed for every version, and the only
    warnings allowed are "no schema" for :data:`CRD_KINDS`."""
    cmd = [KUBERNETES_VALIDATE, "--strict"]
    for ver in versions:
        cmd += ["-k", ver]
    proc = subprocess.run(cmd + [str(path)], capture_output=True, text=True, timeout=300)
    problems = []
    if proc.returncode != 0:
        problems.append(f"kubernetes-validate rc={proc.returncode}: {proc.stdout}{proc.stderr}")
    passed = set(re.findall(r"^INFO .* passed for resource (\S+) against version (\d+\.\d+)$",
                            proc.stdout, re.M))
    expected = {(f"{d['kind'].lower()}/{d['metadata']['name']}", ".".join(v.split(".")[:2]))
                for d in docs if d["kind"] not in CRD_KINDS for v in versions}
    if expected - passed:
        problems.append(f"not reported as passed: {sorted(expected - passed)}\n{proc.stdout}")
    for line in proc.stdout.splitlines():
        if line.startswith("ERROR") or line.startswith("FATAL"):
            problems.append(line)
        elif line.startswith("WARN"):
            m = re.search(r"Couldn't find schema for kind (\S+) with api version", line)
            if not m or m.group(1) not in CRD_KINDS:
                problems.append(f"unexpected warning (unvalidated object?): {line}")
    warned = len([ln for ln in proc.stdout.splitlines() if ln.startswith("WARN")])
    crds = len([d for d in docs if d["kind"] in CRD_KINDS]) * len(versions)
    if warned != crds:
        problems.append(f"expected {crds} no-schema warnings for CRDs, got {warned}")
    return problems


class _GoYamlLoader(yaml.SafeLoader):
    """kustomize prints a bare ``=`` (a string for Go); PyYAML knows it only as the 1.1 'value' tag."""


_GoYamlLoader.add_constructor("tag:yaml.org,2002:value", lambda loader, node: loader.construct_scalar(node))


def kustomize(directory: Path) -> list[dict]:
    proc = subprocess.run([KUBECTL, "kustomize", str(directory)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.load_all(proc.stdout, Loader=_GoYamlLoader) if d]


# --------------------------------------------------------------------------- HTTPRoute CRD


def _strict(schema: Any) -> Any:
    """The API server prunes/rejects unknown fields of a structural schema: emulate it."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if "properties" in out and "additionalProperties" not in out and \
                not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(x) for x in schema]
    return schema


@lru_cache(maxsize=None)
def crd_schema(name: str) -> dict:
    schema = json.loads((DATA / name).read_text())
    schema = _strict(schema)
    schema["properties"]["metadata"] = {"type": "object"}  # checked with the common metadata rules
    return schema


def _schema_problems(doc: dict, schema: str, where: str, problems: list[str]) -> None:
    validator = jsonschema.Draft202012Validator(crd_schema(schema))
    for err in sorted(validator.iter_errors(doc), key=lambda e: list(e.path)):
        problems.append(f"{where}: {'.'.join(map(str, err.path))}: {err.message}")


def _seconds(duration: str) -> float:
    """Gateway API duration (``1h30m``, ``3600s``, ``0s``) in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    return sum(int(n) * units[u] for n, u in re.findall(r"([0-9]+)(ms|h|m|s)", duration))


def websocket_only(docs: list[dict]) -> bool:
    return any(d["kind"] == "ConfigMap" and d.get("data", {}).get("CL_SCALE_WEBSOCKET_ONLY") == "true" for d in docs)


def check_httproute(doc: dict, services: dict[str, dict], problems: list[str], docs: list[dict] = ()) -> None:
    """Gateway API v1 HTTPRoute: a route with ``sessionPersistence`` against the experimental-channel
    v1.6.1 CRD schema (the only channel that has it), any other against the standard-channel one (so
    it applies where only standard CRDs are installed). Every rule must outlast a long-poll (Envoy's
    default 15 s would cut it) and keep clients on one pod one way or another."""
    where = f"HTTPRoute/{doc['metadata']['name']}"
    if doc.get("apiVersion") != "gateway.networking.k8s.io/v1":
        problems.append(f"{where}: apiVersion {doc.get('apiVersion')}")
    spec = doc.get("spec", {})
    persistent = any("sessionPersistence" in r for r in spec.get("rules", []))
    _schema_problems(doc, "httproute-v1-experimental-v1.6.1.json" if persistent else
                     "httproute-v1-standard-v1.6.1.json", where, problems)
    if not spec.get("parentRefs"):
        problems.append(f"{where}: no parentRefs")
    policies = [p for p in docs if p["kind"] == "BackendTrafficPolicy" and any(
        t.get("kind") == "HTTPRoute" and t.get("name") == doc["metadata"]["name"] for t in p["spec"]["targetRefs"])]
    for rule in spec.get("rules", []):
        request = rule.get("timeouts", {}).get("request")
        if request is None or (_seconds(request) != 0 and _seconds(request) < 60):
            problems.append(f"{where}: request timeout {request!r} would cut Engine.IO long-polls (45 s)")
        sp = rule.get("sessionPersistence")
        if not sp:
            if not policies and not websocket_only(docs):
                problems.append(f"{where}: rule without sessionPersistence or a BackendTrafficPolicy, and "
                                "clients long-poll (no stickiness)")
        else:
            if "cookieConfig" in sp and sp.get("type", "Cookie") != "Cookie":
                problems.append(f"{where}: cookieConfig can only be set with type Cookie")
            if sp.get("cookieConfig", {}).get("lifetimeType") == "Permanent" and "absoluteTimeout" not in sp:
                problems.append(f"{where}: Permanent cookie needs absoluteTimeout")
            if not sp.get("sessionName"):
                problems.append(f"{where}: sessionPersistence without sessionName")
        for ref in rule.get("backendRefs", []):
            svc = services.get(ref.get("name"))
            if ref.get("kind", "Service") != "Service" or svc is None:
                problems.append(f"{where}: backendRef {ref} is not a rendered Service")
            elif ref.get("port") not in [p["port"] for p in svc["spec"]["ports"]]:
                problems.append(f"{where}: backendRef port {ref.get('port')} not on Service {ref['name']}")
            elif next(p for p in svc["spec"]["ports"] if p["port"] == ref["port"]).get("name") != "http":
                problems.append(f"{where}: backendRef port {ref['port']} is not the public http port")


def check_backend_traffic_policy(doc: dict, docs: list[dict], problems: list[str]) -> None:
    """Envoy Gateway v1.9.0 CRD schema; it must target a rendered HTTPRoute."""
    where = f"BackendTrafficPolicy/{doc['metadata']['name']}"
    _schema_problems(doc, "backendtrafficpolicy-v1alpha1-envoy-gateway-v1.9.0.json", where, problems)
    routes = {d["metadata"]["name"] for d in docs if d["kind"] == "HTTPRoute"}
    for ref in doc["spec"].get("targetRefs", []):
        if ref.get("kind") != "HTTPRoute" or ref.get("name") not in routes:
            problems.append(f"{where}: targetRef {ref} is not a rendered HTTPRoute")


# --------------------------------------------------------------------------- helpers


def pod_templates(docs: Iterable[dict]) -> list[tuple[dict, dict]]:
    return [(d, d["spec"]["template"]) for d in docs if d["kind"] in ("Deployment", "StatefulSet")]


def subset(small: dict, big: dict) -> bool:
    return all(big.get(k) == v for k, v in small.items())


def _selected(selector: dict, docs: list[dict]) -> list[tuple[dict, dict]]:
    return [(w, t) for w, t in pod_templates(docs) if subset(selector, t["metadata"].get("labels", {}))]


def _port_names(template: dict) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for c in template["spec"]["containers"]
            for p in c.get("ports", []) if "name" in p}


def _port_exists(port: Any, template: dict) -> bool:
    names = _port_names(template)
    return port in names if isinstance(port, str) else port in names.values()


# --------------------------------------------------------------------------- the checks


def check_metadata(docs: list[dict], namespace: str, problems: list[str]) -> None:
    for d in docs:
        md = d.get("metadata", {})
        where = f"{d.get('kind')}/{md.get('name')}"
        if d["kind"] == "Namespace":
            if md.get("name") != namespace or "namespace" in md:
                problems.append(f"{where}: Namespace object for {md.get('name')!r}, expected {namespace!r}")
        elif md.get("namespace") != namespace:
            problems.append(f"{where}: namespace {md.get('namespace')!r} != {namespace!r}")
        name = md.get("name", "")
        limit = 63 if d["kind"] in ("Service", "Deployment", "StatefulSet") else 253
        if not (DNS_SUBDOMAIN.match(name) and len(name) <= limit):
            problems.append(f"{where}: bad name")
        if d["kind"] == "Service" and not DNS_LABEL.match(name):
            problems.append(f"{where}: Service name must be a DNS label")
        labels = md.get("labels", {})
        for key in REQUIRED_LABELS:
            if f"app.kubernetes.io/{key}" not in labels:
                problems.append(f"{where}: missing label app.kubernetes.io/{key}")
        for key, value in labels.items():
            if not isinstance(value, str) or len(value) > 63 or not LABEL_VALUE.match(value):
                problems.append(f"{where}: label {key}={value!r} is not a valid label value")


def check_workloads(docs: list[dict], problems: list[str]) -> None:
    cms = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
    for w, t in pod_templates(docs):
        where = f"{w['kind']}/{w['metadata']['name']}"
        sel = w["spec"]["selector"]["matchLabels"]
        if not sel or not subset(sel, t["metadata"].get("labels", {})):
            problems.append(f"{where}: selector {sel} not a subset of the pod labels")
        if "app.kubernetes.io/version" in sel:
            problems.append(f"{where}: selector uses the version label (immutable selector would break upgrades)")
        pod = t["spec"]
        sc = pod.get("securityContext", {})
        if sc.get("runAsNonRoot") is not True or sc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            problems.append(f"{where}: pod securityContext not hardened: {sc}")
        if pod.get("automountServiceAccountToken") is not False:
            problems.append(f"{where}: service account token mounted")
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        claims = {c["metadata"]["name"] for c in w["spec"].get("volumeClaimTemplates", [])}
        used: set[str] = set()
        component = t["metadata"]["labels"].get("app.kubernetes.io/component", "")
        for c in [*pod.get("initContainers", []), *pod["containers"]]:
            init = c in pod.get("initContainers", [])
            cw = f"{where} {'init container' if init else 'container'} {c['name']}"
            csc = c.get("securityContext", {})
            if csc.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{cw}: readOnlyRootFilesystem is not true")
            if csc.get("allowPrivilegeEscalation") is not False or csc.get("capabilities", {}).get("drop") != ["ALL"]:
                problems.append(f"{cw}: container securityContext not hardened: {csc}")
            if c.get("imagePullPolicy") not in ("Always", "IfNotPresent", "Never"):
                problems.append(f"{cw}: imagePullPolicy {c.get('imagePullPolicy')!r}")
            writable = {}
            for m in c.get("volumeMounts", []):
                used.add(m["name"])
                if m["name"] not in volumes and m["name"] not in claims:
                    problems.append(f"{cw}: volumeMount {m['name']} has no volume")
                    continue
                vol = volumes.get(m["name"], {})
                if (m["name"] in claims or "emptyDir" in vol) and not m.get("readOnly"):
                    writable[m["mountPath"]] = m["name"]
                if "subPath" in m and "configMap" in vol:
                    cm = cms.get(vol["configMap"]["name"])
                    if cm is None or m["subPath"] not in cm.get("data", {}):
                        problems.append(f"{cw}: subPath {m['subPath']} not a key of ConfigMap {vol['configMap']['name']}")
            for path in ([] if init else WRITABLE.get(component, [])):
                if path not in writable:
                    problems.append(f"{cw}: {path} is written at run time but not a writable volume")
            ports = {p["name"] for p in c.get("ports", []) if "name" in p}
            for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
                probe = c.get(kind)
                if probe is None:
                    continue
                handler = probe.get("httpGet") or probe.get("tcpSocket")
                if handler is not None:
                    port = handler["port"]
                    if (port not in ports) if isinstance(port, str) else \
                            port not in [p["containerPort"] for p in c.get("ports", [])]:
                        problems.append(f"{cw}: {kind} port {port!r} is not a container port")
            if component == "app" and not init:
                for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
                    if kind not in c:
                        problems.append(f"{cw}: missing {kind}")
        for name in volumes:
            if name not in used:
                problems.append(f"{where}: volume {name} never mounted")


def check_env_refs(docs: list[dict], secret_keys: dict[str, set[str]], problems: list[str]) -> None:
    """Every referenced ConfigMap/Secret and key exists; every ``$(VAR)`` in env values and
    command/args names a variable defined before it."""
    cms = {d["metadata"]["name"]: set(d.get("data", {})) for d in docs if d["kind"] == "ConfigMap"}
    for w, t in pod_templates(docs):
        for c in t["spec"]["containers"]:
            cw = f"{w['kind']}/{w['metadata']['name']} container {c['name']}"
            defined: list[str] = []
            for src in c.get("envFrom", []):
                if "configMapRef" in src:
                    name = src["configMapRef"]["name"]
                    if name not in cms:
                        problems.append(f"{cw}: envFrom ConfigMap {name} not rendered")
                    defined += sorted(cms.get(name, ()))
                if "secretRef" in src:
                    name = src["secretRef"]["name"]
                    if name not in secret_keys:
                        problems.append(f"{cw}: envFrom Secret {name} unknown")
                    defined += sorted(secret_keys.get(name, ()))
            names = [e["name"] for e in c.get("env", [])]
            if len(names) != len(set(names)):
                problems.append(f"{cw}: duplicate env names {names}")
            for e in c.get("env", []):
                for ref in VAR_REF.findall(e.get("value", "").replace("$$", "")):
                    if ref not in defined:
                        problems.append(f"{cw}: env {e['name']} uses $({ref}) before it is defined")
                vf = e.get("valueFrom", {})
                if "secretKeyRef" in vf:
                    r = vf["secretKeyRef"]
                    if r["key"] not in secret_keys.get(r["name"], set()):
                        problems.append(f"{cw}: secretKeyRef {r['name']}/{r['key']} does not exist")
                if "configMapKeyRef" in vf:
                    r = vf["configMapKeyRef"]
                    if r["key"] not in cms.get(r["name"], set()):
                        problems.append(f"{cw}: configMapKeyRef {r['name']}/{r['key']} does not exist")
                defined.append(e["name"])
            for arg in c.get("command", []) + c.get("args", []):
                for ref in VAR_REF.findall(arg.replace("$$", "")):
                    if ref not in defined:
                        problems.append(f"{cw}: command uses undefined $({ref})")
        for vol in t["spec"].get("volumes", []):
            if "configMap" in vol and vol["configMap"]["name"] not in cms:
                problems.append(f"{w['metadata']['name']}: volume ConfigMap {vol['configMap']['name']} not rendered")
            if "secret" in vol and vol["secret"]["secretName"] not in secret_keys:
                problems.append(f"{w['metadata']['name']}: volume Secret {vol['secret']['secretName']} unknown")
            elif "secret" in vol:
                for item in vol["secret"].get("items", []):
                    if item["key"] not in secret_keys[vol["secret"]["secretName"]]:
                        problems.append(f"{w['metadata']['name']}: volume Secret {vol['secret']['secretName']} "
                                        f"has no key {item['key']}")


def check_services(docs: list[dict], problems: list[str]) -> dict[str, dict]:
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    for name, svc in services.items():
        pods = _selected(svc["spec"].get("selector", {}), docs)
        if not svc["spec"].get("selector") or not pods:
            problems.append(f"Service/{name}: selector matches no pod template")
        for p in svc["spec"]["ports"]:
            for _, t in pods:
                if not _port_exists(p.get("targetPort", p["port"]), t):
                    problems.append(f"Service/{name}: targetPort {p.get('targetPort')!r} not a container port")
    for w, _ in pod_templates(docs):
        if w["kind"] == "StatefulSet":
            svc = services.get(w["spec"]["serviceName"])
            if svc is None or svc["spec"].get("clusterIP") != "None":
                problems.append(f"StatefulSet/{w['metadata']['name']}: serviceName is not a headless Service")
    return services


def check_ingress(docs: list[dict], services: dict[str, dict], problems: list[str]) -> None:
    """Each controller's own stickiness, where that controller reads it: ingress-nginx annotations on
    an Ingress of an nginx class (a hash key that is never empty), Traefik's sticky cookie on the
    backend Service; or websocket-only clients. Only the public port is a backend."""
    for ing in (d for d in docs if d["kind"] == "Ingress"):
        where = f"Ingress/{ing['metadata']['name']}"
        ann = ing["metadata"].get("annotations", {})
        nginx = {k: v for k, v in ann.items() if k.startswith("nginx.ingress.kubernetes.io/")}
        cls = ing["spec"].get("ingressClassName", "")
        if nginx and "traefik" in cls:
            problems.append(f"{where}: ingress-nginx annotations on class {cls!r} (ignored there)")
        hash_by = nginx.get("nginx.ingress.kubernetes.io/upstream-hash-by")
        if hash_by is not None and hash_by != "$remote_addr":
            problems.append(f"{where}: upstream-hash-by {hash_by!r} may be empty (every client on one pod)")
        backends = {p["backend"]["service"]["name"] for r in ing["spec"].get("rules", [])
                    for p in r.get("http", {}).get("paths", [])}
        traefik = any(services.get(b, {}).get("metadata", {}).get("annotations", {}).get(
            "traefik.ingress.kubernetes.io/service.sticky.cookie") == "true" for b in backends)
        sticky = bool(hash_by) or nginx.get("nginx.ingress.kubernetes.io/affinity") == "cookie" or traefik
        if not sticky and not websocket_only(docs):
            problems.append(f"{where}: no stickiness its controller reads, and clients long-poll")
        hosts = {r.get("host") for r in ing["spec"].get("rules", [])}
        for tls in ing["spec"].get("tls", []):
            if not set(tls.get("hosts", [])) <= hosts or not tls.get("secretName"):
                problems.append(f"{where}: TLS block {tls} does not match the rules")
        for rule in ing["spec"].get("rules", []):
            for path in rule.get("http", {}).get("paths", []):
                if path.get("pathType") not in ("Exact", "Prefix", "ImplementationSpecific"):
                    problems.append(f"{where}: pathType {path.get('pathType')!r}")
                backend = path["backend"]["service"]
                svc = services.get(backend["name"])
                if svc is None:
                    problems.append(f"{where}: backend Service {backend['name']} not rendered")
                    continue
                port = backend["port"]
                ports = svc["spec"]["ports"]
                if port.get("name", "http") != "http":
                    problems.append(f"{where}: backend port {port} is not the public http port")
                if ("name" in port and port["name"] not in [p.get("name") for p in ports]) or \
                        ("number" in port and port["number"] not in [p["port"] for p in ports]):
                    problems.append(f"{where}: backend port {port} not on Service {backend['name']}")


def check_policies(docs: list[dict], problems: list[str]) -> None:
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    for d in docs:
        where = f"{d['kind']}/{d['metadata']['name']}"
        if d["kind"] in ("PodDisruptionBudget", "NetworkPolicy"):
            sel = d["spec"]["selector" if d["kind"] == "PodDisruptionBudget" else "podSelector"]["matchLabels"]
            pods = _selected(sel, docs)
            if not pods:
                problems.append(f"{where}: selector matches no pods")
            if d["kind"] == "NetworkPolicy":
                for rule in d["spec"].get("ingress", []):
                    for peer in rule.get("from", []):
                        ps = peer.get("podSelector")
                        client = ps is not None and tuple(ps["matchLabels"].items()) in CLIENT_LABELS
                        if ps is not None and "namespaceSelector" not in peer and not client and \
                                not _selected(ps["matchLabels"], docs):
                            problems.append(f"{where}: peer podSelector matches no pods")
                    for port in rule.get("ports", []):
                        if not all(_port_exists(port["port"], t) for _, t in pods):
                            problems.append(f"{where}: port {port['port']!r} not on the selected pods")
        if d["kind"] == "HorizontalPodAutoscaler":
            target = d["spec"]["scaleTargetRef"]
            dep = deployments.get(target["name"])
            if target["kind"] != "Deployment" or dep is None:
                problems.append(f"{where}: scaleTargetRef {target} not rendered")
            elif "replicas" in dep["spec"]:
                problems.append(f"{where}: Deployment sets replicas too (they would fight)")
            cpu = [c.get("resources", {}).get("requests", {}).get("cpu") for c in
                   (dep or {}).get("spec", {}).get("template", {}).get("spec", {}).get("containers", [])]
            if not all(cpu):
                problems.append(f"{where}: CPU utilisation target without a CPU request")


def check_claims(docs: list[dict], problems: list[str]) -> None:
    """Every claim a pod mounts is rendered, and one that several pods share is ReadWriteMany."""
    claims = {d["metadata"]["name"]: d for d in docs if d["kind"] == "PersistentVolumeClaim"}
    for w, t in pod_templates(docs):
        for vol in t["spec"].get("volumes", []):
            name = (vol.get("persistentVolumeClaim") or {}).get("claimName")
            if name is None:
                continue
            if name not in claims:
                problems.append(f"{w['metadata']['name']}: volume claim {name} not rendered")
            elif w["kind"] == "Deployment" and "ReadWriteMany" not in claims[name]["spec"].get("accessModes", []):
                problems.append(f"{w['metadata']['name']}: claim {name} shared by replicas is not ReadWriteMany")
    used = {(v.get("persistentVolumeClaim") or {}).get("claimName") for _, t in pod_templates(docs)
            for v in t["spec"].get("volumes", [])}
    for name in set(claims) - used:
        problems.append(f"PersistentVolumeClaim/{name} mounted by no pod")


def check_no_secrets(docs: list[dict], problems: list[str]) -> None:
    for d in docs:
        if d["kind"] == "Secret":
            problems.append(f"Secret/{d['metadata']['name']} rendered")
        if d["kind"] == "ConfigMap":
            for key in d.get("data", {}):
                if SECRET_LOOKING.search(key):
                    problems.append(f"ConfigMap/{d['metadata']['name']}: secret-looking key {key}")


def check_all(docs: list[dict], *, namespace: str, secret_keys: dict[str, set[str]]) -> list[str]:
    problems: list[str] = []
    check_metadata(docs, namespace, problems)
    check_workloads(docs, problems)
    check_env_refs(docs, secret_keys, problems)
    services = check_services(docs, problems)
    check_ingress(docs, services, problems)
    for route in (d for d in docs if d["kind"] == "HTTPRoute"):
        check_httproute(route, services, problems, docs)
    for policy in (d for d in docs if d["kind"] == "BackendTrafficPolicy"):
        check_backend_traffic_policy(policy, docs, problems)
    check_policies(docs, problems)
    check_no_secrets(docs, problems)
    check_claims(docs, problems)
    unknown = {d["kind"] for d in docs} - {
        "Namespace", "ServiceAccount", "ConfigMap", "Service", "Deployment", "StatefulSet", "Ingress",
        "HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy", "PersistentVolumeClaim", *CRD_KINDS}
    if unknown:
        problems.append(f"kinds without checks here: {unknown}")
    return problems


def env_example_keys(text: str) -> set[str]:
    """Keys of ``secrets.env.example``; every value must be empty."""
    keys = set()
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep and value == "", f"secrets.env.example must have empty values: {line!r}"
        keys.add(key)
    return keys


def mutated(doc: dict, path: list, value: Any) -> dict:
    """A deep copy of ``doc`` with ``path`` set to ``value`` (negative tests of the checks)."""
    out = copy.deepcopy(doc)
    node = out
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value
    return out
