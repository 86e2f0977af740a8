"""How traffic reaches the app pods on Kubernetes: the Ingress or HTTPRoute, the stickiness each
controller really implements, and the NetworkPolicy that admits the balancer and cluster clients.

Why a module of its own: every choice here encodes one controller's documented behaviour (cited in
``docs/kubernetes.md``), and a wrong one fails silently on a real cluster — a client bounced between
pods, an Envoy timeout cutting long-polls, a NetworkPolicy that drops every request. ``check`` refuses
the combinations that would (one :class:`ConfigError` naming the key) before anything is rendered.

Public traffic goes to the ``http`` port only. ``/metrics`` and the worker gateway are served on the
``admin`` port (``CL_SCALE_ADMIN_PORT``), which no Ingress or HTTPRoute routes to; the NetworkPolicy
admits labelled cluster clients (:data:`GATEWAY_CLIENT_LABEL`) and Prometheus' namespace there.
"""

from __future__ import annotations

from typing import Any

from cl_scale.config.values import Values
from cl_scale.errors import ConfigError
from cl_scale.render.k8s_common import (
    SERVICE_PORT,
    affinity_cookie,
    app_name,
    metadata,
    nginx_seconds,
    selector,
)

#: Pods with this label (in the app's namespace) may call the worker gateway on the app pods' admin port.
GATEWAY_CLIENT_LABEL = ("cl-scale.io/gateway-client", "true")
#: Pods with this label may reach the bundled Redis (worker SDKs, bridges).
REDIS_CLIENT_LABEL = ("cl-scale.io/redis-client", "true")
#: Default proxy namespace of each controller whose manifests fix one.
DEFAULT_NAMESPACE = {"ingress-nginx": "ingress-nginx"}
ENVOY_GATEWAY_API = "gateway.envoyproxy.io/v1alpha1"


def controller(v: Values) -> str:
    """The Ingress controller whose stickiness is rendered (``ingress.controller``, or from the class)."""
    if v.ingress.controller != "auto":
        return v.ingress.controller
    known = {"nginx": "ingress-nginx", "traefik": "traefik"}
    if v.ingress.className not in known:
        raise ConfigError("ingress.controller", "auto", f"cannot tell which controller serves ingress.className="
                          f"{v.ingress.className!r}: set ingress-nginx, traefik, or none (with websocketOnly=true)")
    return known[v.ingress.className]


def proxy_namespace(v: Values) -> str | None:
    if v.networkPolicy.ingressNamespace:
        return v.networkPolicy.ingressNamespace
    return None if v.ingress.kind == "gateway" else DEFAULT_NAMESPACE.get(controller(v))


def check(v: Values) -> None:
    """Refuse what a real cluster would silently get wrong."""
    if not v.ingress.enabled:
        return
    gateway = v.ingress.kind == "gateway"
    if v.sticky.mode == "header":
        raise ConfigError("sticky.mode", "header", "Kubernetes balancers cannot fall back to another key when "
                          "the header is missing, and Chainlit's browser client never sends it (every browser "
                          "would land on one pod): use cookie or ip_hash")
    if gateway:
        unsticky = v.ingress.gateway.affinity == "none"
        what = "ingress.gateway.affinity"
    else:
        unsticky = controller(v) == "none"
        what = "ingress.controller"
        if controller(v) == "traefik" and v.ingress.className == "nginx":
            raise ConfigError("ingress.className", "nginx", "ingress.controller=traefik: set the class Traefik watches")
        if controller(v) == "ingress-nginx" and v.ingress.className == "traefik":
            raise ConfigError("ingress.className", "traefik", "ingress.controller=ingress-nginx would write "
                              "annotations Traefik ignores: set ingress.controller=traefik")
    if unsticky and not v.websocketOnly:
        raise ConfigError(what, "none", "without stickiness Engine.IO long-polling breaks (its requests land on "
                          "different pods): set websocketOnly=true")
    if v.networkPolicy.enabled and not proxy_namespace(v) and not v.networkPolicy.ingressCIDRs:
        example = "envoy-gateway-system for Envoy Gateway" if gateway else "the namespace Traefik runs in"
        raise ConfigError("networkPolicy.ingressNamespace", None, "required: the namespace of the balancer's "
                          f"proxy pods ({example}), or networkPolicy.ingressCIDRs for a controller on the host "
                          "network; otherwise the NetworkPolicy drops every request")


# --------------------------------------------------------------------------- Ingress


def ingress_nginx_annotations(v: Values) -> dict[str, str]:
    """ingress-nginx: a consistent hash of the client address (``ip_hash``; ``upstream-hash-by`` is a
    High-risk annotation, refused where ``annotations-risk-level`` is Medium or lower: use cookie) or
    its own affinity cookie; long timeouts so idle websockets and 25 s long-polls survive."""
    ann: dict[str, str] = {}
    if v.sticky.mode == "ip_hash":
        ann["nginx.ingress.kubernetes.io/upstream-hash-by"] = "$remote_addr"
    else:  # cookie: ingress-nginx issues its own affinity cookie
        ann.update({
            "nginx.ingress.kubernetes.io/affinity": "cookie",
            "nginx.ingress.kubernetes.io/affinity-mode": "persistent",
            "nginx.ingress.kubernetes.io/session-cookie-name": affinity_cookie(v),
            "nginx.ingress.kubernetes.io/session-cookie-max-age": str(v.app.sessionTimeout),
            "nginx.ingress.kubernetes.io/session-cookie-expires": str(v.app.sessionTimeout),
            "nginx.ingress.kubernetes.io/session-cookie-path": "/",
            "nginx.ingress.kubernetes.io/session-cookie-change-on-failure": "true",
        })
    timeout = str(nginx_seconds(v.nginx.readTimeout))
    ann.update({
        "nginx.ingress.kubernetes.io/proxy-read-timeout": timeout,
        "nginx.ingress.kubernetes.io/proxy-send-timeout": timeout,
        "nginx.ingress.kubernetes.io/proxy-body-size": v.nginx.clientMaxBodySize,
        "nginx.ingress.kubernetes.io/proxy-buffering": "off",
    })
    return ann


def service_annotations(v: Values) -> dict[str, str]:
    """Traefik reads stickiness from the Service (its Ingress provider has no client-address hashing,
    so ``ip_hash`` becomes Traefik's sticky cookie too)."""
    if not v.ingress.enabled or v.ingress.kind != "ingress" or controller(v) != "traefik":
        return {}
    prefix = "traefik.ingress.kubernetes.io/service.sticky.cookie"
    return {
        prefix: "true",
        f"{prefix}.name": affinity_cookie(v),
        f"{prefix}.httponly": "true",
        f"{prefix}.samesite": "lax",
        f"{prefix}.secure": "true" if v.ingress.tls.enabled else "false",
        f"{prefix}.maxage": str(v.app.sessionTimeout),
    }


def ingress(v: Values) -> dict[str, Any]:
    """One ``/`` rule to the Service's public port (the admin port is never a backend)."""
    spec: dict[str, Any] = {"ingressClassName": v.ingress.className}
    if v.ingress.tls.enabled:
        spec["tls"] = [{"hosts": [v.ingress.host], "secretName": v.ingress.tls.secretName}]
    spec["rules"] = [{
        "host": v.ingress.host,
        "http": {"paths": [{
            "path": "/",
            "pathType": "Prefix",
            "backend": {"service": {"name": app_name(v), "port": {"name": "http"}}},
        }]},
    }]
    annotations = ingress_nginx_annotations(v) if controller(v) == "ingress-nginx" else {}
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": metadata(v, app_name(v), "app", annotations=annotations),
        "spec": spec,
    }


# --------------------------------------------------------------------------- Gateway API


def route_timeout(v: Values) -> str:
    """Gateway API duration for the route's request timeout: Envoy's default is 15 s, which cuts
    Engine.IO's long-polls (up to pingInterval + pingTimeout = 45 s) with 504s. The same bound as
    the nginx read timeout, in the ``^([0-9]{1,5}(h|m|s|ms)){1,4}$`` format."""
    seconds = nginx_seconds(v.nginx.readTimeout)
    return f"{seconds}s" if seconds < 100_000 else f"{min(seconds // 3600, 99_999)}h"


def session_persistence(v: Values) -> dict[str, Any]:
    """Gateway API has no client-address hashing: ``ip_hash`` becomes a gateway-issued session cookie.
    Field names of the experimental channel v1.1-v1.6.1 (main renames them; see docs/kubernetes.md)."""
    return {"type": "Cookie", "sessionName": affinity_cookie(v), "cookieConfig": {"lifetimeType": "Session"}}


def http_route(v: Values) -> dict[str, Any]:
    """HTTPRoute to the public port, with ``timeouts`` (standard channel since v1.2) and, with
    ``affinity: sessionPersistence``, the experimental-channel ``sessionPersistence``."""
    parent: dict[str, Any] = {"name": v.ingress.gateway.name}
    if v.ingress.gateway.namespace:
        parent["namespace"] = v.ingress.gateway.namespace
    rule: dict[str, Any] = {
        "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
        "backendRefs": [{"name": app_name(v), "port": SERVICE_PORT}],
        "timeouts": {"request": route_timeout(v)},
    }
    if v.ingress.gateway.affinity == "sessionPersistence":
        rule["sessionPersistence"] = session_persistence(v)
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": metadata(v, app_name(v), "app"),
        "spec": {"parentRefs": [parent], "hostnames": [v.ingress.host], "rules": [rule]},
    }


def backend_traffic_policy(v: Values) -> dict[str, Any]:
    """Envoy Gateway (v1.1+, ``targetRefs``): a consistent hash on the client address (``ip_hash``)
    or on a cookie Envoy issues when absent (``cookie``; a ``ttl`` makes Envoy set it)."""
    if v.sticky.mode == "ip_hash":
        consistent: dict[str, Any] = {"type": "SourceIP"}
    else:
        consistent = {"type": "Cookie", "cookie": {"name": affinity_cookie(v), "ttl": f"{v.app.sessionTimeout}s"}}
    return {
        "apiVersion": ENVOY_GATEWAY_API,
        "kind": "BackendTrafficPolicy",
        "metadata": metadata(v, app_name(v), "app"),
        "spec": {
            "targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": app_name(v)}],
            "loadBalancer": {"type": "ConsistentHash", "consistentHash": consistent},
        },
    }


# --------------------------------------------------------------------------- NetworkPolicy


def _balancer_peers(v: Values) -> list[dict[str, Any]]:
    peers: list[dict[str, Any]] = []
    namespace = proxy_namespace(v)
    if namespace:
        peer: dict[str, Any] = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}}
        if v.networkPolicy.ingressPodLabels:
            peer["podSelector"] = {"matchLabels": dict(v.networkPolicy.ingressPodLabels)}
        peers.append(peer)
    peers += [{"ipBlock": {"cidr": cidr}} for cidr in v.networkPolicy.ingressCIDRs]
    return peers


def app_network_policy(v: Values) -> dict[str, Any]:
    """App port: the balancer (namespace, optional pod labels, or host-network CIDRs) and peer pods
    (session-bound HTTP is forwarded to the owning pod). Admin port: pods labelled
    ``cl-scale.io/gateway-client=true`` in this namespace and Prometheus' namespace. Egress stays open:
    the app calls Redis, DNS and LLM APIs cl-scale cannot know."""
    peers = [{"podSelector": {"matchLabels": selector(v, "app")}}]
    rules = [{"from": (_balancer_peers(v) if v.ingress.enabled else []) + peers,
              "ports": [{"protocol": "TCP", "port": "http"}]}]
    admin = [{"podSelector": {"matchLabels": dict([GATEWAY_CLIENT_LABEL])}}]
    if v.networkPolicy.metricsNamespace:
        admin.append({"namespaceSelector": {"matchLabels": {
            "kubernetes.io/metadata.name": v.networkPolicy.metricsNamespace}}})
    rules.append({"from": admin, "ports": [{"protocol": "TCP", "port": "admin"}]})
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata(v, app_name(v), "app"),
        "spec": {"podSelector": {"matchLabels": selector(v, "app")}, "policyTypes": ["Ingress"], "ingress": rules},
    }
