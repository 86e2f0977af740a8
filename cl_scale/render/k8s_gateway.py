"""Kubernetes objects of the standalone worker gateway (``grpcGateway:`` in values): a Deployment, its
Service, a NetworkPolicy and (with several replicas) a PodDisruptionBudget.

The gateway is ``cl-scale gateway`` from the app image (which installs ``cl-scale[grpc]`` when it is
enabled): gRPC (``clscale.v1.Gateway``) and HTTP (``/cl-scale/v1``) for workers that have no Redis
access, e.g. outside the cluster (the DMZ shape). It is stateless: every replica signs with the same
worker key and routes through Redis, so any replica serves any worker. Its certificates come from
existing Secrets (``certs.gateway_mounts``), its tokens and key from the app's Secret by reference.

Probes use the plain ``--health-port`` (``/readyz`` = Redis answers): a kubelet probe cannot present
a client certificate to an mTLS port. Only labelled pods (``cl-scale.io/gateway-client=true``) and
``grpcGateway.clientCIDRs`` may reach the gateway ports.
"""

from __future__ import annotations

from typing import Any

from cl_scale.config.values import Values
from cl_scale.render.certs import gateway_args, gateway_mounts, redis_mounts
from cl_scale.render.k8s_bridges import POD_SECURITY
from cl_scale.render.k8s_common import (
    app_name,
    k8s_literal,
    labels,
    metadata,
    redis_url,
    secret_env,
    secret_volumes,
    selector,
)
from cl_scale.render.k8s_exposure import GATEWAY_CLIENT_LABEL, REDIS_CLIENT_LABEL

COMPONENT = "gateway"


def gateway_name(v: Values) -> str:
    return f"{v.name}-gateway"



def _probe(path: str, period: int, failures: int) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": "health"}, "periodSeconds": period, "timeoutSeconds": 3,
            "failureThreshold": failures}


def args(v: Values) -> list[str]:
    """The ``cl-scale gateway`` arguments (shared with compose)."""
    g = v.grpcGateway
    return ["gateway", "--host", "0.0.0.0", "--port", str(g.httpPort), "--grpc-port", str(g.grpcPort),
            "--health-port", str(g.healthPort), *gateway_args(v)]


def deployment(v: Values) -> dict[str, Any]:
    g = v.grpcGateway
    url_env = (secret_env(v, "CL_SCALE_REDIS_URL", optional=False) if v.redis.urlFromSecret
               else {"name": "CL_SCALE_REDIS_URL", "value": k8s_literal(redis_url(v))})
    mounts = [*redis_mounts(v), *gateway_mounts(v)]
    volumes, volume_mounts = secret_volumes(mounts)
    container = {
        "name": "gateway",
        "image": v.app.image,
        "imagePullPolicy": v.app.imagePullPolicy,
        "command": ["cl-scale"],
        "args": args(v),
        "ports": [{"name": "grpc", "containerPort": g.grpcPort, "protocol": "TCP"},
                  {"name": "http", "containerPort": g.httpPort, "protocol": "TCP"},
                  {"name": "health", "containerPort": g.healthPort, "protocol": "TCP"}],
        "env": [
            {"name": "HOME", "value": "/tmp"},
            url_env,
            secret_env(v, "REDIS_PASSWORD", optional=not v.redis.enabled),
            secret_env(v, "CL_SCALE_WORKER_KEYS", optional=False),
            secret_env(v, "CL_SCALE_GATEWAY_TOKENS", optional=False),
        ],
        "readinessProbe": _probe("/readyz", period=5, failures=2),
        "livenessProbe": _probe("/healthz", period=10, failures=3),
        "resources": {kind: dict(q) for kind, q in
                      (("requests", g.resources.requests), ("limits", g.resources.limits)) if q},
        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]}},
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}, *volume_mounts],
    }
    pod_labels = {**labels(v, COMPONENT), REDIS_CLIENT_LABEL[0]: REDIS_CLIENT_LABEL[1]}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(v, gateway_name(v), COMPONENT),
        "spec": {
            "replicas": g.replicas,
            "revisionHistoryLimit": 5,
            "selector": {"matchLabels": selector(v, COMPONENT)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {"labels": pod_labels},
                "spec": {
                    "serviceAccountName": app_name(v),
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    # in-flight StreamReply calls get this long to end; a cut stream is marked interrupted
                    "terminationGracePeriodSeconds": 30,
                    "securityContext": POD_SECURITY,
                    "topologySpreadConstraints": [{
                        "maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
                        "whenUnsatisfiable": "ScheduleAnyway",
                        "labelSelector": {"matchLabels": selector(v, COMPONENT)},
                        "matchLabelKeys": ["pod-template-hash"]}],
                    "containers": [container],
                    "volumes": [{"name": "tmp", "emptyDir": {}}, *volumes],
                },
            },
        },
    }


def service(v: Values) -> dict[str, Any]:
    """gRPC and HTTP ports (never the health port). A gRPC client keeps one HTTP/2 connection, so
    kube-proxy balances connections, not calls: workers spread over replicas by connecting separately."""
    g = v.grpcGateway
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(v, gateway_name(v), COMPONENT),
        "spec": {
            "type": g.serviceType,
            "selector": selector(v, COMPONENT),
            "ports": [{"name": "grpc", "port": g.grpcPort, "targetPort": "grpc", "protocol": "TCP"},
                      {"name": "http", "port": g.httpPort, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def network_policy(v: Values) -> dict[str, Any]:
    """The gateway ports admit labelled pods of the namespace and ``grpcGateway.clientCIDRs``; nothing
    else (kubelet probes are always allowed). Egress stays open (Redis may be anywhere)."""
    peers: list[dict[str, Any]] = [{"podSelector": {"matchLabels": dict([GATEWAY_CLIENT_LABEL])}}]
    peers += [{"ipBlock": {"cidr": cidr}} for cidr in v.grpcGateway.clientCIDRs]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata(v, gateway_name(v), COMPONENT),
        "spec": {"podSelector": {"matchLabels": selector(v, COMPONENT)}, "policyTypes": ["Ingress"],
                 "ingress": [{"from": peers, "ports": [{"protocol": "TCP", "port": "grpc"},
                                                       {"protocol": "TCP", "port": "http"}]}]},
    }


def pdb(v: Values) -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata(v, gateway_name(v), COMPONENT),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector(v, COMPONENT)},
                 "unhealthyPodEvictionPolicy": "AlwaysAllow"},
    }
