"""Kubernetes objects of distributed AutoGen group chats (``autogen:`` in values).

- the AutoGen host (``cl-scale autogen-host``): one pod (its registrations live in memory; after a
  restart every process registers again by itself), a ClusterIP Service on ``autogen.hostPort``;
- ``cl-scale autogen`` (users' messages in, agents' output into their chats): labelled as a Redis
  client, signing with the worker key from the Secret, probed on its health port;
- one Deployment per ``autogen.agents`` entry, running the user's command with ``CL_SCALE_AUTOGEN_HOST``
  and the app's ``extraSecrets`` (model API keys).

NetworkPolicy: only pods labelled ``cl-scale.io/autogen=true`` (the two kinds above) reach the host;
nothing reaches the agents or the bridge (kubelet probes always may). Egress stays open (models, Redis).
"""

from __future__ import annotations

from typing import Any

from cl_scale.config.values import AutogenAgent, Values
from cl_scale.render.certs import redis_mounts
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
from cl_scale.render.k8s_exposure import REDIS_CLIENT_LABEL

AUTOGEN_LABEL = ("cl-scale.io/autogen", "true")
HOST, BRIDGE, AGENT = "autogen-host", "autogen-bridge", "autogen-agent"
_HARDENED = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}}


def host_name(v: Values) -> str:
    return f"{v.name}-autogen-host"


def host_address(v: Values) -> str:
    return f"{host_name(v)}:{v.autogen.hostPort}"


def agent_name(v: Values, a: AutogenAgent) -> str:
    return f"{v.name}-autogen-{a.name}"


def _agent_selector(v: Values, a: AutogenAgent) -> dict[str, str]:
    return {**selector(v, AGENT), "cl-scale.io/autogen-agent": a.name}



def _deployment(v: Values, name: str, component: str, sel: dict, container: dict, replicas: int, *,
                pod_labels: dict, recreate: bool = False, volumes: list | None = None) -> dict[str, Any]:
    strategy = ({"type": "Recreate"} if recreate else
                {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}})
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(v, name, component),
        "spec": {
            "replicas": replicas,
            "revisionHistoryLimit": 5,
            "selector": {"matchLabels": sel},
            "strategy": strategy,
            "template": {
                "metadata": {"labels": {**labels(v, component), **pod_labels}},
                "spec": {
                    "serviceAccountName": app_name(v),
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "terminationGracePeriodSeconds": 30,
                    "securityContext": POD_SECURITY,
                    "containers": [{**container, "securityContext": _HARDENED,
                                    "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"},
                                                     *container.get("volumeMounts", [])]}],
                    "volumes": [{"name": "tmp", "emptyDir": {}}, *(volumes or [])],
                },
            },
        },
    }


def host_deployment(v: Values) -> dict[str, Any]:
    port = v.autogen.hostPort
    probe = {"tcpSocket": {"port": "grpc"}, "periodSeconds": 10, "timeoutSeconds": 3, "failureThreshold": 3}
    container = {
        "name": "host", "image": v.app.image, "imagePullPolicy": v.app.imagePullPolicy,
        "command": ["cl-scale"], "args": ["autogen-host", "--address", f"0.0.0.0:{port}"],
        "ports": [{"name": "grpc", "containerPort": port, "protocol": "TCP"}],
        "env": [{"name": "HOME", "value": "/tmp"}],
        "readinessProbe": probe, "livenessProbe": probe,
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
    }
    # never two hosts: agents would split between them
    return _deployment(v, host_name(v), HOST, selector(v, HOST), container, 1, pod_labels={}, recreate=True)


def host_service(v: Values) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Service", "metadata": metadata(v, host_name(v), HOST),
        "spec": {"type": "ClusterIP", "selector": selector(v, HOST),
                 "ports": [{"name": "grpc", "port": v.autogen.hostPort, "targetPort": "grpc", "protocol": "TCP"}]},
    }


def bridge_deployment(v: Values) -> dict[str, Any]:
    a = v.autogen
    url_env = (secret_env(v, "CL_SCALE_REDIS_URL", optional=False) if v.redis.urlFromSecret
               else {"name": "CL_SCALE_REDIS_URL", "value": k8s_literal(redis_url(v))})
    probe = {"httpGet": {"path": "/readyz", "port": "health"}, "periodSeconds": 5, "timeoutSeconds": 3,
             "failureThreshold": 2}
    volumes, mounts = secret_volumes(redis_mounts(v))
    container = {
        "name": "autogen", "image": v.app.image, "imagePullPolicy": v.app.imagePullPolicy,
        "command": ["cl-scale"],
        "args": ["autogen", "--host-address", host_address(v), "--health-host", "0.0.0.0",
                 "--health-port", str(a.healthPort), "--name", "$(POD_NAME)"],
        "ports": [{"name": "health", "containerPort": a.healthPort, "protocol": "TCP"}],
        "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "HOME", "value": "/tmp"}, url_env,
                secret_env(v, "REDIS_PASSWORD", optional=not v.redis.enabled),
                secret_env(v, "CL_SCALE_WORKER_KEYS", optional=False)],
        # ready = Redis answers and it serves the sink or stands by to take it over
        "readinessProbe": probe,
        "livenessProbe": {**probe, "httpGet": {"path": "/healthz", "port": "health"}, "periodSeconds": 10,
                          "failureThreshold": 3},
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
        "volumeMounts": mounts,
    }
    return _deployment(v, f"{v.name}-autogen", BRIDGE, selector(v, BRIDGE), container, a.bridgeReplicas,
                       pod_labels=dict([AUTOGEN_LABEL, REDIS_CLIENT_LABEL]), volumes=volumes)


def agent_deployment(v: Values, agent: AutogenAgent) -> dict[str, Any]:
    container = {
        "name": "agent", "image": agent.image or v.app.image, "imagePullPolicy": v.app.imagePullPolicy,
        "command": [k8s_literal(c) for c in agent.command],
        "envFrom": [{"secretRef": {"name": name}} for name in v.app.extraSecrets],
        "env": [{"name": "HOME", "value": "/tmp"}, {"name": "CL_SCALE_AUTOGEN_HOST", "value": host_address(v)},
                *({"name": k, "value": k8s_literal(val)} for k, val in agent.env.items())],
        "resources": {kind: dict(q) for kind, q in
                      (("requests", agent.resources.requests), ("limits", agent.resources.limits)) if q},
    }
    if not container["envFrom"]:
        del container["envFrom"]
    return _deployment(v, agent_name(v, agent), AGENT, _agent_selector(v, agent), container, agent.replicas,
                       pod_labels={**dict([AUTOGEN_LABEL]), "cl-scale.io/autogen-agent": agent.name})


def network_policies(v: Values) -> list[dict[str, Any]]:
    """The host admits the labelled AutoGen pods on its port; the bridge and agents admit nothing."""
    def policy(name: str, component: str, rules: list) -> dict[str, Any]:
        return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": metadata(v, name, component),
                "spec": {"podSelector": {"matchLabels": selector(v, component)}, "policyTypes": ["Ingress"],
                         "ingress": rules}}

    host = [{"from": [{"podSelector": {"matchLabels": dict([AUTOGEN_LABEL])}}],
             "ports": [{"protocol": "TCP", "port": "grpc"}]}]
    return [policy(host_name(v), HOST, host), policy(f"{v.name}-autogen", BRIDGE, []),
            policy(f"{v.name}-autogen-agents", AGENT, [])]


def objects(v: Values) -> list[dict[str, Any]]:
    return [host_service(v), host_deployment(v), bridge_deployment(v),
            *(agent_deployment(v, a) for a in v.autogen.agents)]
