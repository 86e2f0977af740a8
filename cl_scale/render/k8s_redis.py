"""The bundled Redis (``redis.enabled: true``): a one-pod StatefulSet, its headless Service and
its NetworkPolicy. With an external Redis (``redis.url``) none of these objects exist.

Why these settings: Redis holds every session, the per-session outboxes and the cross-instance
pub/sub. ``noeviction`` means a full Redis refuses writes instead of silently dropping sessions;
the pub/sub output-buffer limit disconnects a stalled subscriber instead of letting it eat all
memory; AOF keeps sessions across a Redis restart.
"""

from __future__ import annotations

from typing import Any

from cl_scale.config.values import Values
from cl_scale.render.k8s_common import (
    REDIS_PORT,
    REDIS_UID,
    metadata,
    redis_memory_mib,
    redis_name,
    selector,
)
from cl_scale.render.k8s_exposure import REDIS_CLIENT_LABEL

# The passwords come from the Secret as env vars and are expanded by the shell (never rendered).
# Values arrive as positional parameters ("$1".."$3", then the worker ACL rules), so no value is
# ever part of the script text. An empty password would silently mean "no auth": refuse to start.
# With REDIS_WORKER_PASSWORD set, a least-privilege ``clscale-worker`` user is created (rules:
# ``cl_scale.wire.keyspace.Keyspace.acl_rules``): workers reach chats through outboxes but cannot publish
# on the Socket.IO channels, read chat contexts or delete anything.
START_SCRIPT = (
    'if [ -z "$REDIS_PASSWORD" ]; then '
    'echo "REDIS_PASSWORD is empty: set it in the Secret (k8s) or .env (compose)" >&2; exit 1; fi; '
    'mem="$1"; port="$2"; dir="$3"; shift 3; '
    'if [ -n "$REDIS_WORKER_PASSWORD" ]; then set -- --user clscale-worker on ">$REDIS_WORKER_PASSWORD" "$@"; '
    'else set --; fi; '
    'exec redis-server --port "$port" --dir "$dir" --requirepass "$REDIS_PASSWORD" '
    '--maxmemory "$mem" --maxmemory-policy noeviction '
    '--client-output-buffer-limit "pubsub 64mb 16mb 60" --appendonly yes "$@"'
)
_PING = 'REDISCLI_AUTH="$REDIS_PASSWORD" redis-cli -p "$1" ping | grep -q PONG'


def start_args(maxmemory: str, port: int, data_dir: str, prefix: str) -> list[str]:
    """``sh -c START_SCRIPT`` argv: the script, ``$0``, then its positional parameters."""
    from cl_scale.wire.keyspace import acl_rules

    return ["sh", "-c", START_SCRIPT, "redis", maxmemory, str(port), data_dir, *acl_rules(prefix, "worker")]


def key_prefix(v: Values) -> str:
    """The Redis key prefix the instances use (``CL_SCALE_PREFIX`` in ``app.env``, else the default)."""
    from cl_scale.contract import DEFAULT_PREFIX

    return v.app.env.get("CL_SCALE_PREFIX") or DEFAULT_PREFIX


def redis_statefulset(v: Values) -> dict[str, Any]:
    """One Redis pod with a persistent volume; non-root, read-only root filesystem (it writes only
    /data). Readiness is a real authenticated PING; liveness only checks the port, so a long AOF
    load (Redis answers LOADING) does not get the pod killed."""
    name = redis_name(v)
    container = {
        "name": "redis",
        "image": v.redis.image,
        "imagePullPolicy": "IfNotPresent",
        "command": start_args(v.redis.maxmemory, REDIS_PORT, "/data", key_prefix(v)),
        "env": [{"name": "REDIS_PASSWORD", "valueFrom": {"secretKeyRef": {
                    "name": v.auth.secretName, "key": "REDIS_PASSWORD"}}},
                {"name": "REDIS_WORKER_PASSWORD", "valueFrom": {"secretKeyRef": {
                    "name": v.auth.secretName, "key": "REDIS_WORKER_PASSWORD", "optional": True}}}],
        "ports": [{"name": "redis", "containerPort": REDIS_PORT, "protocol": "TCP"}],
        "readinessProbe": {
            "exec": {"command": ["sh", "-c", _PING, "ping", str(REDIS_PORT)]},
            "initialDelaySeconds": 2, "periodSeconds": 5, "timeoutSeconds": 3, "failureThreshold": 3,
        },
        "livenessProbe": {
            "tcpSocket": {"port": "redis"},
            "initialDelaySeconds": 10, "periodSeconds": 10, "timeoutSeconds": 3, "failureThreshold": 6,
        },
        "resources": {"requests": {"cpu": "50m", "memory": f"{redis_memory_mib(v.redis.maxmemory) + 64}Mi"}},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": "data", "mountPath": "/data"},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": metadata(v, name, "redis"),
        "spec": {
            "serviceName": name,
            "replicas": 1,
            "selector": {"matchLabels": selector(v, "redis")},
            "template": {
                "metadata": {"labels": metadata(v, name, "redis")["labels"]},
                "spec": {
                    "serviceAccountName": v.name,
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "terminationGracePeriodSeconds": 30,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": REDIS_UID,
                        "runAsGroup": REDIS_UID,
                        "fsGroup": REDIS_UID,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [container],
                    "volumes": [{"name": "tmp", "emptyDir": {}}],
                },
            },
            "volumeClaimTemplates": [{
                "metadata": {"name": "data", "labels": selector(v, "redis")},
                "spec": {
                    "accessModes": ["ReadWriteOnce"],
                    "resources": {"requests": {"storage": v.redis.storage}},
                },
            }],
        },
    }


def redis_service(v: Values) -> dict[str, Any]:
    """Headless: ``<name>-redis`` resolves to the ready Redis pod (StatefulSet serviceName)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(v, redis_name(v), "redis"),
        "spec": {
            "clusterIP": "None",
            "selector": selector(v, "redis"),
            "ports": [{"name": "redis", "port": REDIS_PORT, "targetPort": "redis", "protocol": "TCP"}],
        },
    }


def redis_network_policy(v: Values) -> dict[str, Any]:
    """App pods and pods labelled ``cl-scale.io/redis-client=true`` in this namespace (worker SDKs,
    bridges) may talk to Redis. Egress stays open (Redis needs none, but DNS-only egress rules differ
    per CNI and a wrong one breaks the pod silently)."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata(v, redis_name(v), "redis"),
        "spec": {
            "podSelector": {"matchLabels": selector(v, "redis")},
            "policyTypes": ["Ingress"],
            "ingress": [{
                "from": [{"podSelector": {"matchLabels": selector(v, "app")}},
                         {"podSelector": {"matchLabels": dict([REDIS_CLIENT_LABEL])}}],
                "ports": [{"protocol": "TCP", "port": "redis"}],
            }],
        },
    }
