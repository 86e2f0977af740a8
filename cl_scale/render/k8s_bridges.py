"""Kubernetes objects of the broker bridges (``bridges:`` in values): a Deployment and a
NetworkPolicy each.

A bridge pod runs ``cl-scale bridge URL`` from the app image (which installs ``cl-scale[bridges]``
when bridges are configured), non-root with a read-only root filesystem, labelled as a Redis client
(``k8s_exposure.REDIS_CLIENT_LABEL``) so the bundled Redis admits it. Its Redis URL and password,
worker keys and broker password come from the same places as the app pods' (ConfigMap value or the
Secret), never from a rendered value. Readiness is ``/readyz`` (broker and Redis answer), liveness
``/healthz``; Prometheus scrapes ``/metrics`` on the health port, the only port the NetworkPolicy
opens (to ``networkPolicy.metricsNamespace``).
"""

from __future__ import annotations

from typing import Any

from cl_scale.config.values import Bridge, Values
from cl_scale.contract import APP_UID
from cl_scale.render.certs import redis_mounts
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
from cl_scale.render.k8s_exposure import REDIS_CLIENT_LABEL

#: Non-root; fsGroup so the 0440 certificate files of Secret volumes are readable.
POD_SECURITY = {"runAsNonRoot": True, "runAsUser": APP_UID, "runAsGroup": APP_UID, "fsGroup": APP_UID,
                "seccompProfile": {"type": "RuntimeDefault"}}
PASSWORD_KEY = {"kafka": "CL_SCALE_KAFKA_PASSWORD", "amqp": "CL_SCALE_AMQP_PASSWORD"}


def bridge_name(v: Values, b: Bridge) -> str:
    return f"{v.name}-bridge-{b.name}"


def _kind(b: Bridge) -> str:
    return "kafka" if b.url.startswith("kafka") else "amqp"


def _selector(v: Values, b: Bridge) -> dict[str, str]:
    return {**selector(v, "bridge"), "cl-scale.io/bridge": b.name}



def _probe(path: str, period: int, failures: int) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": "health"}, "periodSeconds": period, "timeoutSeconds": 3,
            "failureThreshold": failures}


def deployment(v: Values, b: Bridge) -> dict[str, Any]:
    url_env = (secret_env(v, "CL_SCALE_REDIS_URL", optional=False) if v.redis.urlFromSecret
               else {"name": "CL_SCALE_REDIS_URL", "value": k8s_literal(redis_url(v))})
    args = ["bridge", k8s_literal(b.url), "--health-host", "0.0.0.0", "--health-port", str(b.healthPort),
            "--batch-size", str(b.batchSize), "--name", "$(POD_NAME)"]
    if b.requireSignature:
        args.append("--require-signature")
    container = {
        "name": "bridge",
        "image": v.app.image,
        "imagePullPolicy": v.app.imagePullPolicy,
        "command": ["cl-scale"],
        "args": args,
        "ports": [{"name": "health", "containerPort": b.healthPort, "protocol": "TCP"}],
        "env": [
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "HOME", "value": "/tmp"},
            url_env,
            secret_env(v, "REDIS_PASSWORD", optional=not v.redis.enabled),
            secret_env(v, "CL_SCALE_WORKER_KEYS"),
            secret_env(v, PASSWORD_KEY[_kind(b)]),
        ],
        "readinessProbe": _probe("/readyz", period=5, failures=2),
        "livenessProbe": _probe("/healthz", period=10, failures=3),
        "resources": {"requests": {"cpu": "50m", "memory": "96Mi"}, "limits": {"memory": "384Mi"}},
        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]}},
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}, *secret_volumes(redis_mounts(v))[1]],
    }
    pod_labels = {**labels(v, "bridge"), "cl-scale.io/bridge": b.name, REDIS_CLIENT_LABEL[0]: REDIS_CLIENT_LABEL[1]}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(v, bridge_name(v, b), "bridge"),
        "spec": {
            "replicas": b.replicas,
            "revisionHistoryLimit": 5,
            "selector": {"matchLabels": _selector(v, b)},
            # a RabbitMQ queue must never have two bridges at once (order): replace, do not overlap
            "strategy": ({"type": "Recreate"} if _kind(b) == "amqp" else
                         {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}),
            "template": {
                "metadata": {"labels": pod_labels, "annotations": {
                    "prometheus.io/scrape": "true", "prometheus.io/port": str(b.healthPort),
                    "prometheus.io/path": "/metrics"}},
                "spec": {
                    "serviceAccountName": app_name(v),
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "terminationGracePeriodSeconds": 30,
                    "securityContext": POD_SECURITY,
                    "containers": [container],
                    "volumes": [{"name": "tmp", "emptyDir": {}}, *secret_volumes(redis_mounts(v))[0]],
                },
            },
        },
    }


def network_policy(v: Values, b: Bridge) -> dict[str, Any]:
    """Nothing may connect to a bridge but Prometheus (health port, ``networkPolicy.metricsNamespace``);
    kubelet probes are always allowed. Egress stays open (the broker and Redis may be anywhere)."""
    rules = []
    if v.networkPolicy.metricsNamespace:
        rules.append({"from": [{"namespaceSelector": {"matchLabels": {
            "kubernetes.io/metadata.name": v.networkPolicy.metricsNamespace}}}],
            "ports": [{"protocol": "TCP", "port": b.healthPort}]})
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata(v, bridge_name(v, b), "bridge"),
        "spec": {"podSelector": {"matchLabels": _selector(v, b)}, "policyTypes": ["Ingress"], "ingress": rules},
    }


def secret_keys(v: Values) -> dict[str, str]:
    """Secret keys the bridges read besides the app's: broker passwords (empty if the broker has none)."""
    return {PASSWORD_KEY[k]: f"password of the {'Kafka' if k == 'kafka' else 'RabbitMQ'} user in the bridges' URLs "
                             "(may stay empty)"
            for k in sorted({_kind(b) for b in v.bridges})}
