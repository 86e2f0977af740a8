"""Shared pieces of the Kubernetes renderer: names, labels, YAML dumping and small formatters.

Why a module of its own: the app objects (``k8s.py``) and the bundled Redis (``k8s_redis.py``)
must agree on names, labels and selectors; one place makes that agreement impossible to break.
Nothing here splices text: manifests are dicts, dumped with :func:`dump_docs`.
"""

from __future__ import annotations

import re
from typing import Any, Iterable

import yaml

from cl_scale.config.values import Values
from cl_scale.contract import APP_UID, SECRET_ENV  # noqa: F401 (APP_UID re-exported)

MANAGED_BY = "cl-scale"
CHAINLIT_VERSION = "2.12.0"  # pinned range in pyproject: chainlit>=2.12.0,<2.13
CHAINLIT_COOKIE = "X-Chainlit-Session-id"
REDIS_UID = 999  # the redis user of the official redis images (alpine and debian)
REDIS_PORT = 6379
SERVICE_PORT = 80
SECRET_KEYS = tuple(SECRET_ENV)  # the keys of the Secret named by auth.secretName

_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


# --------------------------------------------------------------------------- names


def app_name(v: Values) -> str:
    return v.name


def redis_name(v: Values) -> str:
    return f"{v.name}-redis"


def env_configmap_name(v: Values) -> str:
    return f"{v.name}-env"


def chainlit_configmap_name(v: Values) -> str:
    return f"{v.name}-config"


def redis_url(v: Values) -> str:
    """The bundled Redis is reached through its headless Service (one ready pod)."""
    from cl_scale.render.certs import with_redis_tls

    if v.redis.enabled:
        return f"redis://{redis_name(v)}:{REDIS_PORT}/0"
    assert v.redis.url  # Values guarantees it when redis.enabled is false
    return with_redis_tls(v.redis.url, v)


def secret_env(v: Values, key: str, optional: bool = True) -> dict[str, Any]:
    """An env var read from key ``key`` of the Secret named by ``auth.secretName`` (never a value)."""
    ref: dict[str, Any] = {"name": v.auth.secretName, "key": key}
    if optional:
        ref["optional"] = True
    return {"name": key, "valueFrom": {"secretKeyRef": ref}}


def secret_volumes(mounts) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(volumes, volumeMounts)`` of ``certs.CertMount`` s: only the named keys, read-only, mode 0440
    (the pod's fsGroup can read them, others cannot)."""
    volumes = [{"name": m.volume, "secret": {"secretName": m.secret, "defaultMode": 0o440,
                                             "items": [{"key": key, "path": key} for key, _ in m.files]}}
               for m in mounts]
    return volumes, [{"name": m.volume, "mountPath": m.directory, "readOnly": True} for m in mounts]


def affinity_cookie(v: Values) -> str:
    """Name of the cookie a Kubernetes balancer issues for cookie stickiness.

    ingress-nginx (``affinity: cookie``) and Gateway API implementations *set* their own cookie
    (its value encodes the chosen pod); they cannot hash an existing one. Reusing Chainlit's own
    session cookie name would overwrite Chainlit's session id, so that name is replaced by
    ``<name>-affinity``. Any other ``sticky.cookieName`` is used as given.
    """
    if v.sticky.cookieName.lower() == CHAINLIT_COOKIE.lower():
        return f"{v.name}-affinity"
    return v.sticky.cookieName


# --------------------------------------------------------------------------- labels


def image_version(image: str) -> str:
    """``app.kubernetes.io/version`` from an image reference: its tag, else a digest prefix,
    else ``latest``; trimmed to a valid label value (tags may be 128 characters long)."""
    ref, _, digest = image.partition("@")
    last = ref.rsplit("/", 1)[-1]
    tag = last.partition(":")[2]
    if not tag:
        tag = digest.partition(":")[2][:12] if digest else "latest"
    tag = tag[:63]
    tag = re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", tag)
    return tag if tag and _LABEL_VALUE.match(tag) else "unknown"


def selector(v: Values, component: str) -> dict[str, str]:
    """The stable label subset used in selectors: never the version (it changes per release)."""
    return {
        "app.kubernetes.io/name": "redis" if component == "redis" else "chainlit",
        "app.kubernetes.io/instance": v.name,
        "app.kubernetes.io/component": component,
    }


def labels(v: Values, component: str) -> dict[str, str]:
    image = v.redis.image if component == "redis" else v.app.image
    return {
        **selector(v, component),
        "app.kubernetes.io/part-of": v.name,
        "app.kubernetes.io/managed-by": MANAGED_BY,
        "app.kubernetes.io/version": image_version(image),
    }


def metadata(v: Values, name: str, component: str, **extra: Any) -> dict[str, Any]:
    """Name, namespace, the common labels, and ``extra`` keys that have a value (empty ones are left out)."""
    return {"name": name, "namespace": v.namespace, "labels": labels(v, component),
            **{k: val for k, val in extra.items() if val}}


# --------------------------------------------------------------------------- formatting


def k8s_literal(text: str) -> str:
    """Escape ``$`` so the kubelet's ``$(VAR)`` expansion in ``command``/``args``/``env.value``
    leaves a user's string exactly as written (``$$`` expands to ``$``)."""
    return text.replace("$", "$$")


def nginx_seconds(text: str) -> int:
    """nginx time (``3600s``, ``60m``, ``1h``, ``500ms``) -> whole seconds, rounded up."""
    m = re.fullmatch(r"([0-9]+)(ms|s|m|h)?", text)
    if not m:
        raise ValueError(f"not an nginx time: {text!r}")
    n, unit = int(m.group(1)), m.group(2) or "s"
    if unit == "ms":
        return -(-n // 1000)
    return n * {"s": 1, "m": 60, "h": 3600}[unit]


def redis_memory_mib(text: str) -> int:
    """Redis memory size (``256mb``, ``1gb``, ``100m``, ``1024``) -> MiB, rounded up."""
    m = re.fullmatch(r"([0-9]+)(b|k|kb|m|mb|g|gb)?", text.lower())
    if not m:
        raise ValueError(f"not a Redis memory size: {text!r}")
    unit = {None: 1, "b": 1, "k": 1000, "kb": 1024, "m": 1000**2, "mb": 1024**2,
            "g": 1000**3, "gb": 1024**3}[m.group(2)]
    return -(-int(m.group(1)) * unit // 1024**2)


# --------------------------------------------------------------------------- YAML


_TYPED_WORDS = {"y", "n", "yes", "no", "on", "off", "true", "false", "null", "~", "="}
_NUMBER_START = re.compile(r"^[-+]?(\.?[0-9]|\.(inf|nan)$)", re.IGNORECASE)


def looks_typed(text: str) -> bool:
    """Would some YAML reader take this plain scalar for a non-string? PyYAML (YAML 1.1) quotes
    what *it* would misread, but kustomize reads YAML 1.2 (``0o17`` -> 15, ``1e3`` -> 1000) and
    kubectl's go-yaml reads ``y``/``n`` as booleans. Anything number- or bool-like is quoted."""
    return text.lower() in _TYPED_WORDS or bool(_NUMBER_START.match(text))


class _Dumper(yaml.SafeDumper):
    """SafeDumper that prints multi-line strings as ``|`` blocks (readable config.toml) and
    quotes every string any YAML dialect could read as a number or boolean. PyYAML falls back to
    a double-quoted scalar whenever the requested style cannot hold the text exactly."""


def _str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    style = "|" if "\n" in data else ("'" if looks_typed(data) else None)
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _str)


def dump(obj: Any) -> str:
    return yaml.dump(obj, Dumper=_Dumper, sort_keys=False, default_flow_style=False,
                     width=1_000_000, allow_unicode=False)


def dump_docs(objs: Iterable[dict[str, Any]]) -> str:
    return "".join("---\n" + dump(o) for o in objs)
