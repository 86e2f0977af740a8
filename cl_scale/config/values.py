"""The values schema (docs/values-schema.md): one validated object every renderer reads.

Why so strict: every string here ends up in nginx.conf, a manifest or a compose file. Validation is
the first wall (a bad host or image is rejected with a clear reason); quoting in the renderers is
the second. Unknown keys and wrong types are errors (``extra="forbid"``, strict ints/bools), never
silently ignored or coerced ("3" is not a replica count).

Field names are the camelCase keys of the YAML. The one exception is ``nginx.realIp.from`` (a
Python keyword): the attribute is ``from_``, the key stays ``from`` (dump with ``by_alias=True``).
Every field has a ``description``: ``cl_scale.config.loader.documented_yaml`` turns them into the
comments of the generated ``cl-scale.yaml``.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StringConstraints,
    model_validator,
)

from cl_scale.contract import reserved_env_reason

# --------------------------------------------------------------------------- reusable checks

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_HOST_LABEL = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Loose OCI reference: registry[:port]/path[:tag][@digest]; no whitespace, quotes or shell/nginx
# metacharacters. The registry does the exact check; we only keep the value inert.
_IMAGE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-/]*(:[A-Za-z0-9_][A-Za-z0-9._\-/]{0,127})?"
                    r"(@[A-Za-z0-9]+:[A-Fa-f0-9]{32,})?$")
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_NGINX_SIZE = re.compile(r"^[0-9]+[kKmMgG]?$")
_NGINX_TIME = re.compile(r"^([0-9]+)(ms|s|m|h)?$")
_K8S_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")
_K8S_RESOURCE = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[a-z0-9]([-a-z0-9._]*[a-z0-9])?$")
_REDIS_MEMORY = re.compile(r"^[0-9]+(b|k|kb|m|mb|g|gb)?$", re.IGNORECASE)
_COOKIE_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")
# nginx drops request headers with underscores by default, and maps '-' to '_' in $http_*.
_HEADER_NAME = re.compile(r"^[A-Za-z0-9]+(-[A-Za-z0-9]+)*$")
class FieldError(ValueError):
    """A cross-field check that knows which key is wrong: the loader reports ``key``/``value``
    (absolute dotted path) instead of the enclosing model, so ``file:line`` points at that key."""

    def __init__(self, key: str, value: Any, why: str):
        super().__init__(why)
        self.key, self.value, self.why = key, value, why


def _scalar_to_str(v: Any) -> Any:
    """YAML and ``--set`` type ``20`` or ``1.5`` as numbers; for size/quantity/env strings the
    number is what the user meant. Booleans become ``true``/``false`` (env values)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    return v


def _int_range(lo: int, hi: int, why: str = ""):
    def check(v: int) -> int:
        if not lo <= v <= hi:
            raise ValueError(f"must be between {lo} and {hi}{' (' + why + ')' if why else ''}")
        return v
    return AfterValidator(check)


def _short_name(v: str) -> str:
    # k8s objects get suffixes (-redis, -headless, pod ordinals, controller hashes): keep room.
    if len(v) > 40:
        raise ValueError("must be at most 40 characters (k8s object names get suffixes)")
    return v


def _no_control(v: str) -> str:
    if _CONTROL.search(v):
        raise ValueError("must not contain newlines or control characters")
    return v


def _dns_label(v: str) -> str:
    if len(v) > 63 or not _DNS_LABEL.match(v):
        raise ValueError("must be a DNS-1123 label: lowercase letters, digits and '-', "
                         "start and end with a letter or digit, at most 63 characters")
    return v


def _dns_subdomain(v: str) -> str:
    if len(v) > 253 or not all(_DNS_LABEL.match(p) and len(p) <= 63 for p in v.split(".")):
        raise ValueError("must be a DNS-1123 subdomain: lowercase dot-separated labels of "
                         "letters, digits and '-', at most 253 characters")
    return v


def _rfc1123_host(v: str, *, wildcard: bool = False, lowercase: bool = False) -> str:
    if not v or _CONTROL.search(v) or any(c in v for c in " \t;'\"{}$\\"):
        raise ValueError("must be a DNS name (RFC 1123): no spaces, newlines, ';', quotes or braces")
    name = v[2:] if wildcard and v.startswith("*.") else v
    labels = name.split(".")
    if len(v) > 253 or not all(len(p) <= 63 and _HOST_LABEL.match(p) for p in labels):
        raise ValueError("must be a DNS name (RFC 1123): dot-separated labels of letters, digits "
                         "and '-'" + (", optionally starting with '*.'" if wildcard else ""))
    if lowercase and v != v.lower():
        raise ValueError("must be lowercase (Kubernetes rejects upper-case hosts)")
    return v


def _ingress_host(v: str) -> str:
    return _rfc1123_host(v, wildcard=True, lowercase=True)


def _upstream_host(v: str) -> str:
    """An IP address or a DNS name: nginx puts it in ``server HOST:PORT``."""
    try:
        ipaddress.ip_address(v)
        return v
    except ValueError:
        return _rfc1123_host(v)


def _server_name(v: str) -> str:
    """nginx ``server_name``: ``_`` or space-separated DNS names (``*.`` wildcards allowed)."""
    if _CONTROL.search(v):
        raise ValueError("must not contain newlines or control characters")
    names = v.split(" ")
    if not v or any(not n for n in names):
        raise ValueError("must be '_' or DNS names separated by single spaces")
    for n in names:
        if n == "_":
            continue
        try:
            ipaddress.ip_address(n)
        except ValueError:
            _rfc1123_host(n, wildcard=True)
    return v


def _image(v: str) -> str:
    if not v or _CONTROL.search(v) or any(c.isspace() for c in v):
        raise ValueError("must be an image reference without whitespace or control characters")
    if len(v) > 512 or not _IMAGE.match(v):
        raise ValueError("must be an OCI image reference like registry.example.com/app:1.0 "
                         "(letters, digits, '.', '_', '-', '/', one ':tag', optional '@sha256:...')")
    return v


def _module(v: str) -> str:
    _no_control(v)
    if not v or v != v.strip():
        raise ValueError("must be a non-empty path without leading/trailing spaces")
    return v


def _pattern(regex: re.Pattern, what: str):
    def check(v: str) -> str:
        if not regex.match(v):
            raise ValueError(f"must be {what}")
        return v
    return AfterValidator(check)


def _read_timeout(v: str) -> str:
    m = _NGINX_TIME.match(v)
    if not m:
        raise ValueError("must be an nginx time like 3600s, 60m, 1h (digits + ms|s|m|h)")
    seconds = int(m.group(1)) * {"ms": 0.001, "s": 1, None: 1, "m": 60, "h": 3600}[m.group(2)]
    if seconds <= 45:
        raise ValueError("must exceed 45s (Socket.IO pingInterval 25s + pingTimeout 20s), or idle "
                         "websockets are cut")
    return v


def _path(v: str) -> str:
    _no_control(v)
    if not v or "$" in v:
        raise ValueError("must be a non-empty file path without '$' (nginx would expand it)")
    return v


def _cidr(v: str) -> str:
    try:
        ipaddress.ip_network(v, strict=False)
    except ValueError:
        raise ValueError("must be an IP address or CIDR like 10.0.0.0/8") from None
    return v


def _real_ip_header(v: str) -> str:
    if v != "proxy_protocol" and not _HEADER_NAME.match(v):
        raise ValueError("must be a header name (letters, digits, '-') or proxy_protocol")
    return v


_LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                        r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$")


def _label_key(v: str) -> str:
    if len(v) > 316 or not _LABEL_KEY.match(v):
        raise ValueError("must be a Kubernetes label key like app.kubernetes.io/name")
    return v


def _label_value(v: str) -> str:
    if not _LABEL_VALUE.match(v):
        raise ValueError("must be a Kubernetes label value (<= 63 of letters, digits, '-', '_', '.')")
    return v


def _env(v: dict[str, str]) -> dict[str, str]:
    for key, value in v.items():
        if not _ENV_KEY.match(key):
            raise FieldError(f"app.env.{key}", value, "env var names must match [A-Za-z_][A-Za-z0-9_]*")
        if (why := reserved_env_reason(key)) is not None:
            raise FieldError(f"app.env.{key}", "<hidden>", f"is {why}")
        if "\x00" in value:
            raise FieldError(f"app.env.{key}", value, "must not contain NUL")
    return v


def _resources(v: dict[str, str]) -> dict[str, str]:
    for key, value in v.items():
        if not _K8S_RESOURCE.match(key):
            raise ValueError(f"resource name {key!r} is not valid (cpu, memory, ephemeral-storage, vendor/name)")
        if not _K8S_QUANTITY.match(value):
            raise ValueError(f"{key}={value!r} is not a Kubernetes quantity like 250m, 512Mi, 1Gi, 2")
    return v


def _max_unavailable(v: int | str) -> int | str:
    if isinstance(v, int):
        if v < 1:
            raise ValueError("must be >= 1 (0 blocks node drains forever) or a percentage like 25%")
        return v
    if not re.match(r"^[0-9]{1,3}%$", v) or not 1 <= int(v[:-1]) <= 100:
        raise ValueError("must be an integer >= 1 or a percentage like 25%")
    return v


Str = Annotated[str, BeforeValidator(_scalar_to_str)]
DnsLabel = Annotated[str, AfterValidator(_dns_label)]
DnsSubdomain = Annotated[str, AfterValidator(_dns_subdomain)]
Port = Annotated[StrictInt, _int_range(1, 65535, "a TCP port")]
Image = Annotated[str, AfterValidator(_image)]
NginxSize = Annotated[Str, _pattern(_NGINX_SIZE, "an nginx size like 20m, 512k, 1g or a byte count")]
NginxTime = Annotated[Str, _pattern(_NGINX_TIME, "an nginx time like 2s, 500ms, 1m, 1h")]
Quantity = Annotated[Str, _pattern(_K8S_QUANTITY, "a Kubernetes quantity like 1Gi, 512Mi")]
FilePath = Annotated[str, AfterValidator(_path)]


class _Model(BaseModel):
    """Common config: unknown keys are errors; assignment is validated too (tests, --set)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True,
                              validate_default=True)


# --------------------------------------------------------------------------- the schema

class App(_Model):
    module: Annotated[str, AfterValidator(_module)] = Field(
        "app.py", description="Path of the Chainlit app inside the image / on disk.")
    image: Image = Field(
        "registry.example.com/chainlit-app:0.1.0",
        description="Container image of the app (k8s, compose). Build it from the generated Dockerfile.")
    imagePullPolicy: Literal["Always", "IfNotPresent", "Never"] = Field(
        "IfNotPresent", description="Kubernetes imagePullPolicy: Always | IfNotPresent | Never.")
    port: Port = Field(
        8000, description="Container port (k8s, compose). For nginx/local: port of the first "
                          "instance; instance i listens on port+i.")
    host: Annotated[str, AfterValidator(_upstream_host)] = Field(
        "127.0.0.1", description="nginx target only: address of the instances (upstream host).")
    sessionTimeout: Annotated[StrictInt, _int_range(1, 30 * 86400)] = Field(
        3600, description="Seconds: Chainlit's session timeout and the Redis session TTL.")
    env: Annotated[dict[str, Str], AfterValidator(_env)] = Field(
        default_factory=dict, description="Extra NON-secret env vars for every instance (name: value). "
                                          "Secrets go in the auth.secretName Secret / .env.")
    adminPort: Port = Field(
        9090, description="k8s: second container port serving only /metrics and the worker gateway "
                          "(/cl-scale/v1), never routed by the Ingress/HTTPRoute.")
    extraSecrets: list[DnsSubdomain] = Field(
        default_factory=list, description="k8s: existing Secrets loaded whole into the app's environment "
                                          "(envFrom), e.g. your LLM API keys. Keys of the auth.secretName "
                                          "Secret are loaded too: add yours to secrets.env.")
    chainlitConfig: Str | None = Field(
        None, description="k8s: the whole .chainlit/config.toml (multi-line string). null: the image's own "
                          ".chainlit/ (config.toml, translations), copied into the writable directory at "
                          "pod start; Chainlit writes its default if the image has none.")


class RedisTls(_Model):
    caSecret: DnsSubdomain | None = Field(
        None, description="External rediss:// Redis with a private CA: an existing Secret whose key ca.crt is "
                          "that CA. Mounted read-only in every pod that talks to Redis (k8s Secret volume / "
                          "compose secret from ./certs/redis-ca.crt) and given to the client as ssl_ca_certs.")
    clientCertSecret: DnsSubdomain | None = Field(
        None, description="Redis with tls-auth-clients: an existing kubernetes.io/tls Secret (tls.crt, tls.key) "
                          "presented as the client certificate (compose: ./certs/redis-client.crt/.key).")


class Redis(_Model):
    enabled: StrictBool = Field(
        True, description="Run a bundled Redis (k8s StatefulSet / compose service). "
                          "false: redis.url is required.")
    url: str | None = Field(
        None, description="External Redis URL: redis://, rediss://, unix:// or redis+sentinel://. "
                          "Keep the password in the Secret (REDIS_PASSWORD), not in the URL.")
    image: Image = Field("redis:7.2-alpine", description="Image of the bundled Redis.")
    storage: Quantity = Field("1Gi", description="PVC size of the bundled Redis (k8s quantity).")
    maxmemory: Annotated[Str, _pattern(_REDIS_MEMORY, "a Redis memory size like 256mb, 1gb")] = Field(
        "256mb", description="maxmemory of the bundled Redis (policy noeviction: sessions are never evicted).")
    urlFromSecret: StrictBool = Field(
        False, description="External Redis: read the whole URL from the Secret's CL_SCALE_REDIS_URL key "
                           "instead of redis.url (a URL with a user name, or a host you keep private).")
    tls: RedisTls = Field(default_factory=RedisTls, description="Certificates for an external rediss:// Redis.")

    @model_validator(mode="after")
    def _check_url(self) -> "Redis":
        if self.url is not None:
            _check_redis_url(self.url)
        if not self.enabled and not self.url and not self.urlFromSecret:
            raise FieldError("redis.enabled", self.enabled, "redis.enabled=false requires redis.url "
                             "(an external Redis), or redis.urlFromSecret=true")
        if self.urlFromSecret and (self.enabled or self.url):
            raise FieldError("redis.urlFromSecret", True, "only with redis.enabled=false and no redis.url "
                             "(the URL then comes from the Secret)")
        if self.enabled and self.url:
            raise FieldError("redis.url", self.url, "redis.url is set but redis.enabled=true (bundled "
                             "Redis): set redis.enabled=false to use the external Redis")
        tls_given = self.tls.caSecret or self.tls.clientCertSecret
        if tls_given and self.enabled:
            raise FieldError("redis.tls.caSecret" if self.tls.caSecret else "redis.tls.clientCertSecret",
                             tls_given, "certificates are for an external rediss:// Redis (redis.enabled=false); "
                             "the bundled Redis is reached inside the cluster without TLS")
        if tls_given and self.url and not self.url.startswith("rediss://"):
            raise FieldError("redis.url", _shown(self.url), "redis.tls needs a rediss:// URL (TLS)")
        if self.url and tls_given and re.search(r"[?&]ssl_(ca_certs|certfile|keyfile)=", self.url):
            raise FieldError("redis.url", _shown(self.url), "names certificate files itself: drop ssl_* from the "
                             "URL (redis.tls mounts them and adds the paths)")
        return self


def _shown(url: str) -> str:
    from cl_scale.wire.redis_url import redacted

    return redacted(url)


def _check_redis_url(url: str) -> None:
    from cl_scale.wire.redis_url import check, redacted

    try:
        check(url, allow_password=False)
    except ValueError as exc:
        raise FieldError("redis.url", redacted(url), str(exc)) from None


class Sticky(_Model):
    mode: Literal["ip_hash", "cookie", "header"] = Field(
        "ip_hash", description="How the balancer keeps a client on one instance: ip_hash (client "
                               "address), cookie (Chainlit's session cookie), header (a request header).")
    cookieName: Annotated[str, _pattern(_COOKIE_NAME, "a cookie name (letters, digits, '_', '.', '-')")] = Field(
        "X-Chainlit-Session-id", description="cookie mode: the cookie hashed by the balancer (Chainlit's session cookie).")
    headerName: Annotated[str, _pattern(_HEADER_NAME, "an HTTP header name (letters, digits, single '-')")] = Field(
        "X-Session-Affinity", description="header mode: the request header hashed by the balancer.")


class IngressTls(_Model):
    enabled: StrictBool = Field(False, description="Terminate TLS at the ingress/gateway.")
    secretName: DnsSubdomain = Field("chainlit-tls", description="Secret holding the TLS certificate.")


class Gateway(_Model):
    name: DnsSubdomain = Field("gateway", description="parentRef name of the Gateway for the HTTPRoute.")
    namespace: DnsLabel | None = Field(None, description="parentRef namespace (null: same namespace).")
    affinity: Literal["sessionPersistence", "envoyGateway", "none"] = Field(
        "sessionPersistence", description="How the route keeps a client on one pod: sessionPersistence "
        "(the HTTPRoute field; Gateway API experimental-channel CRDs v1.1-v1.6.1, Envoy Gateway >= 1.2, "
        "NGINX Gateway Fabric >= 2.4 with NGINX Plus), envoyGateway (an Envoy Gateway "
        "BackendTrafficPolicy hashing the client address or a cookie; standard CRDs suffice), none "
        "(no stickiness: needs websocketOnly=true). See docs/kubernetes.md.")


class Ingress(_Model):
    enabled: StrictBool = Field(True, description="Expose the app through an Ingress or HTTPRoute.")
    kind: Literal["ingress", "gateway"] = Field(
        "ingress", description="ingress (Ingress with ingress-nginx annotations) | gateway "
                               "(Gateway API HTTPRoute with sessionPersistence).")
    host: Annotated[str, AfterValidator(_ingress_host)] = Field(
        "chat.example.com", description="Public DNS name (RFC 1123, lowercase, '*.' wildcard allowed).")
    className: DnsSubdomain = Field("nginx", description="ingressClassName.")
    controller: Literal["auto", "ingress-nginx", "traefik", "none"] = Field(
        "auto", description="Which controller serves className, so its own stickiness is rendered: "
        "ingress-nginx (annotations on the Ingress), traefik (sticky cookie on the Service), none (no "
        "stickiness: needs websocketOnly=true). auto: nginx -> ingress-nginx, traefik -> traefik; any "
        "other className must name its controller.")
    tls: IngressTls = Field(default_factory=IngressTls, description="TLS at the ingress.")
    gateway: Gateway = Field(default_factory=Gateway, description="Gateway API settings (kind: gateway).")


class NginxTls(_Model):
    enabled: StrictBool = Field(False, description="Serve HTTPS; plain HTTP then redirects (301) to it.")
    listen: Port = Field(8443, description="HTTPS port.")
    certificate: FilePath = Field("/etc/nginx/tls/tls.crt", description="PEM certificate (chain) path.")
    certificateKey: FilePath = Field("/etc/nginx/tls/tls.key", description="PEM private key path.")


class RealIp(_Model):
    enabled: StrictBool = Field(False, description="Trust the client address sent by a front load "
                                                   "balancer (needed for ip_hash behind another LB).")
    from_: list[Annotated[str, AfterValidator(_cidr)]] = Field(
        default_factory=list, alias="from", description="CIDRs of the front load balancer.")
    header: Annotated[str, AfterValidator(_real_ip_header)] = Field(
        "X-Forwarded-For", description="Header carrying the client address (or proxy_protocol).")

    @model_validator(mode="after")
    def _needs_from(self) -> "RealIp":
        if self.enabled and not self.from_:
            raise FieldError("nginx.realIp.from", self.from_,
                             "nginx.realIp.enabled=true needs at least one CIDR here")
        return self


class Nginx(_Model):
    listen: Port = Field(8080, description="Port nginx listens on (HTTP).")
    serverName: Annotated[str, AfterValidator(_server_name)] = Field(
        "_", description="server_name: '_' (any) or DNS names separated by spaces.")
    clientMaxBodySize: NginxSize = Field("20m", description="client_max_body_size (uploads).")
    maxFails: Annotated[StrictInt, _int_range(0, 100)] = Field(
        3, description="max_fails per upstream server (0: never mark it failed).")
    failTimeout: NginxTime = Field(
        "2s", description="fail_timeout: short so a restarted instance is used again quickly.")
    readTimeout: Annotated[Str, AfterValidator(_read_timeout)] = Field(
        "3600s", description="proxy_read_timeout/proxy_send_timeout; must exceed Socket.IO "
                             "pingInterval+pingTimeout (25s+20s).")
    workerConnections: Annotated[StrictInt, _int_range(512, 1048576)] = Field(
        4096, description="worker_connections per nginx worker; each websocket client holds 2 (client + "
                          "upstream), so clients ~= workers x this / 2; above ~ulimit -n also raise the open-file limit.")
    tls: NginxTls = Field(default_factory=NginxTls, description="HTTPS server.")
    realIp: RealIp = Field(default_factory=RealIp, description="Real client address from a front balancer.")


class Resources(_Model):
    requests: Annotated[dict[str, Str], AfterValidator(_resources)] = Field(
        default_factory=lambda: {"cpu": "250m", "memory": "512Mi"},
        description="Container resource requests (k8s quantities).")
    limits: Annotated[dict[str, Str], AfterValidator(_resources)] = Field(
        default_factory=lambda: {"memory": "1Gi"}, description="Container resource limits (k8s quantities).")


class Hpa(_Model):
    enabled: StrictBool = Field(False, description="Create a HorizontalPodAutoscaler.")
    minReplicas: Annotated[StrictInt, _int_range(1, 100)] = Field(3, description="HPA minimum replicas.")
    maxReplicas: Annotated[StrictInt, _int_range(1, 100)] = Field(10, description="HPA maximum replicas.")
    targetCPUUtilizationPercentage: Annotated[StrictInt, _int_range(1, 1000)] = Field(
        70, description="Target average CPU utilisation (percent of requests).")
    scaleDownStabilizationSeconds: Annotated[StrictInt, _int_range(0, 3600)] = Field(
        600, description="Slow scale-down: every removed pod moves its sessions.")

    @model_validator(mode="after")
    def _order(self) -> "Hpa":
        if self.minReplicas > self.maxReplicas:
            raise FieldError("hpa.minReplicas", self.minReplicas,
                             f"must be <= hpa.maxReplicas ({self.maxReplicas})")
        return self


class Pdb(_Model):
    enabled: StrictBool = Field(True, description="Create a PodDisruptionBudget.")
    maxUnavailable: Annotated[StrictInt | str, AfterValidator(_max_unavailable)] = Field(
        1, description="Pods that may be down at once during voluntary disruptions.")


class NetworkPolicy(_Model):
    enabled: StrictBool = Field(True, description="Only the balancer, peers and labelled clients may reach "
                                                  "app pods and Redis.")
    ingressNamespace: DnsLabel | None = Field(
        None, description="Namespace of the balancer's proxy pods, allowed to reach the app port. null: "
                          "ingress-nginx for the ingress-nginx controller; required for traefik and "
                          "Gateway API (Envoy Gateway: envoy-gateway-system).")
    ingressPodLabels: dict[Annotated[str, AfterValidator(_label_key)], Annotated[Str, AfterValidator(_label_value)]] = Field(
        default_factory=dict, description="Only pods with these labels in ingressNamespace (default: all).")
    ingressCIDRs: list[Annotated[str, AfterValidator(_cidr)]] = Field(
        default_factory=list, description="Address ranges allowed to reach the app port: a controller on "
                                          "the host network (hostNetwork) sends from node addresses, which "
                                          "no namespace selector matches; list the nodes' CIDRs.")
    metricsNamespace: DnsLabel | None = Field(
        None, description="Namespace of Prometheus, allowed to scrape the admin port (null: none).")


class Auth(_Model):
    secretName: DnsSubdomain = Field(
        "chainlit-secrets", description="Secret holding CHAINLIT_AUTH_SECRET, REDIS_PASSWORD, CL_SCALE_WORKER_KEYS "
                           "(and the bridges' CL_SCALE_KAFKA_PASSWORD / CL_SCALE_AMQP_PASSWORD).")
    existingSecret: StrictBool = Field(
        False, description="true: the Secret already exists; false: kustomization.yaml generates it "
                           "from secrets.env (never rendered with values).")


class Drain(_Model):
    seconds: Annotated[StrictInt, _int_range(0, 3600)] = Field(
        30, description="Graceful drain on SIGTERM (k8s terminationGracePeriodSeconds = seconds + 15).")


def _check_bridge(i: int, bridge: "Bridge") -> None:
    """A broker URL ``cl-scale bridge`` accepts, without a password (that lives in the Secret); errors
    show the URL redacted."""
    from cl_scale.bridge.settings import BrokerSettings
    from cl_scale.errors import ConfigError

    key = f"bridges[{i}].url"
    try:
        settings = BrokerSettings.parse(bridge.url, password_here=False)
    except ConfigError as exc:
        raise FieldError(key, exc.value, exc.why) from None
    userinfo = bridge.url.split("//", 1)[-1].split("/", 1)[0].rpartition("@")[0]
    if ":" in userinfo:
        raise FieldError(key, settings.shown, "no password in values: put it in the Secret ("
                         + ("CL_SCALE_KAFKA_PASSWORD" if settings.kind == "kafka" else "CL_SCALE_AMQP_PASSWORD") + ")")
    if settings.kind == "amqp" and bridge.replicas != 1:
        raise FieldError(f"bridges[{i}].replicas", bridge.replicas, "a RabbitMQ bridge runs one replica: several "
                         "consumers of one queue would interleave a session's messages (add queues instead)")


class Bridge(_Model):
    name: Annotated[str, AfterValidator(_dns_label), AfterValidator(_short_name)] = Field(
        ..., description="DNS-1123 label: k8s Deployment <name>-bridge-<this> / compose service bridge-<this>.")
    url: Annotated[str, StringConstraints(min_length=1, max_length=2000)] = Field(
        ..., description="cl-scale bridge URL: kafka://host:9092/TOPIC?group=NAME or "
                         "amqp(s)://user@host:5672/VHOST?queue=NAME (password from the Secret).")
    replicas: Annotated[StrictInt, _int_range(1, 50)] = Field(
        1, description="Kafka: replicas share the topic's partitions. RabbitMQ: 1 (one consumer keeps a queue's order).")
    batchSize: Annotated[StrictInt, _int_range(1, 10_000)] = Field(
        200, description="At most this many messages per batch (one Redis round trip).")
    requireSignature: StrictBool = Field(
        False, description="Refuse messages without a valid cl-scale-kid/cl-scale-sig header.")
    healthPort: Port = Field(9100, description="Port of /healthz, /readyz and /metrics.")


class Uploads(_Model):
    storage: Literal["local", "shared", "redis"] = Field(
        "local", description="Where uploads live so any instance can serve them after their owner dies: local "
        "(the owner's disk: lost with it), shared (a volume every instance mounts: k8s ReadWriteMany PVC, "
        "compose named volume), redis (in Redis, at most maxMB per session; over it the upload gets 413).")
    maxMB: Annotated[StrictInt, _int_range(1, 1024)] = Field(
        20, description="storage redis: uploads kept per session, in MB (Redis memory: count it in redis.maxmemory).")
    size: Quantity = Field("10Gi", description="storage shared (k8s): size of the ReadWriteMany PVC.")
    storageClassName: DnsSubdomain | None = Field(
        None, description="storage shared (k8s): a storage class that offers ReadWriteMany (NFS, CephFS, EFS, "
                          "Azure Files, Filestore); null: the cluster's default.")


class GatewayTls(_Model):
    secretName: DnsSubdomain | None = Field(
        None, description="An existing kubernetes.io/tls Secret (tls.crt, tls.key): the gateway serves gRPC and "
                          "HTTP over TLS (compose: ./certs/gateway.crt/.key). null: plaintext, only for callers "
                          "inside the cluster (serviceType ClusterIP).")
    clientCaSecret: DnsSubdomain | None = Field(
        None, description="mTLS: an existing Secret whose key ca.crt signs the workers' client certificates; "
                          "callers without one are refused at the handshake (compose: ./certs/gateway-client-ca.crt).")


class GrpcGateway(_Model):
    enabled: StrictBool = Field(
        False, description="Run the worker gateway alone (`cl-scale gateway`): workers outside the cluster (the "
                           "DMZ shape) send through it over gRPC (clscale.v1.Gateway) and HTTP (/cl-scale/v1) with "
                           "the bearer tokens of CL_SCALE_GATEWAY_TOKENS; it signs with CL_SCALE_WORKER_KEYS.")
    replicas: Annotated[StrictInt, _int_range(1, 20)] = Field(
        2, description="Gateway pods (stateless: any replica serves any worker).")
    grpcPort: Port = Field(50051, description="gRPC port (container and Service).")
    httpPort: Port = Field(8100, description="HTTP port of /cl-scale/v1 (container and Service).")
    healthPort: Port = Field(9101, description="Plain HTTP /healthz and /readyz (probes; never TLS, never exposed).")
    serviceType: Literal["ClusterIP", "LoadBalancer", "NodePort"] = Field(
        "ClusterIP", description="k8s Service type. LoadBalancer/NodePort put the gateway outside the cluster and "
                                 "need tls.secretName.")
    clientCIDRs: list[Annotated[str, AfterValidator(_cidr)]] = Field(
        default_factory=list, description="k8s NetworkPolicy: address ranges of workers outside the cluster allowed "
                                          "to reach the gateway ports (pods labelled cl-scale.io/gateway-client=true "
                                          "in the namespace always are).")
    tls: GatewayTls = Field(default_factory=GatewayTls, description="TLS (and mTLS) of both gateway ports.")
    resources: Resources = Field(
        default_factory=lambda: Resources(requests={"cpu": "100m", "memory": "128Mi"}, limits={"memory": "512Mi"}),
        description="Container resources of a gateway pod.")

    @model_validator(mode="after")
    def _checks(self) -> "GrpcGateway":
        ports = {"grpcGateway.grpcPort": self.grpcPort, "grpcGateway.httpPort": self.httpPort,
                 "grpcGateway.healthPort": self.healthPort}
        seen: dict[int, str] = {}
        for key, port in ports.items():
            if port in seen:
                raise FieldError(key, port, f"must differ from {seen[port]}")
            seen[port] = key
        if self.enabled and self.serviceType != "ClusterIP" and not self.tls.secretName:
            raise FieldError("grpcGateway.serviceType", self.serviceType, "exposes the gateway outside the cluster: "
                             "set grpcGateway.tls.secretName (bearer tokens must not cross a network in plaintext)")
        if self.tls.clientCaSecret and not self.tls.secretName:
            raise FieldError("grpcGateway.tls.clientCaSecret", self.tls.clientCaSecret,
                             "mTLS needs the server certificate too: set grpcGateway.tls.secretName")
        return self


class AutogenAgent(_Model):
    name: Annotated[str, AfterValidator(_dns_label), AfterValidator(_short_name)] = Field(
        ..., description="DNS-1123 label: k8s Deployment <name>-autogen-<this> / compose service autogen-<this>.")
    command: Annotated[list[Annotated[Str, StringConstraints(min_length=1, max_length=1000)]],
                       Field(min_length=1, max_length=50)] = Field(
        ..., description="The agent process, e.g. [python, agents.py, writer]; it reaches the host at "
                         "$CL_SCALE_AUTOGEN_HOST (host:port).")
    image: Image | None = Field(None, description="Image of this agent (null: app.image).")
    replicas: Annotated[StrictInt, _int_range(1, 10)] = Field(
        1, description="AutoGen gives an agent type to one process at a time: extra replicas wait as warm "
                       "standbys and take over when it goes (stay_connected).")
    env: dict[str, Str] = Field(
        default_factory=dict, description="Non-secret env vars of this agent (its model keys: app.extraSecrets).")
    resources: Resources = Field(
        default_factory=lambda: Resources(requests={"cpu": "100m", "memory": "256Mi"}, limits={"memory": "1Gi"}),
        description="Container resources.")


class Autogen(_Model):
    enabled: StrictBool = Field(
        False, description="Distributed AutoGen group chats (docs/autogen.md): the AutoGen host "
                           "(`cl-scale autogen-host`), `cl-scale autogen` (users' messages in, agents' "
                           "output into their chats) and the agents below; instances publish users' messages.")
    hostPort: Port = Field(50060, description="gRPC port of the AutoGen host (Service <name>-autogen-host).")
    bridgeReplicas: Annotated[StrictInt, _int_range(1, 3)] = Field(
        1, description="`cl-scale autogen` processes (one serves, the others wait as standbys).")
    healthPort: Port = Field(9102, description="`cl-scale autogen`'s /healthz and /readyz (probes).")
    agents: list[AutogenAgent] = Field(
        default_factory=list, max_length=20,
        description="Agent processes (manager and participants), each a Deployment (k8s) / service (compose).")

    @model_validator(mode="after")
    def _checks(self) -> "Autogen":
        names = [a.name for a in self.agents]
        for i, agent in enumerate(self.agents):
            if agent.name in names[:i]:
                raise FieldError(f"autogen.agents[{i}].name", agent.name, "given twice")
            for key, value in agent.env.items():  # values never shown: one may be a misplaced secret
                where = f"autogen.agents[{i}].env.{key[:80]}"
                if not _ENV_KEY.match(key):
                    raise FieldError(where, "<hidden>", "env var names must match [A-Za-z_][A-Za-z0-9_]*")
                if (why := reserved_env_reason(key)) is not None and "secret" in why:
                    raise FieldError(where, "<hidden>", f"is {why}")
                if "\x00" in value:
                    raise FieldError(where, "<hidden>", "must not contain NUL")
        if self.healthPort == self.hostPort:
            raise FieldError("autogen.healthPort", self.healthPort, "must differ from autogen.hostPort")
        return self


class Values(_Model):
    """Root of ``cl-scale.yaml``."""

    name: Annotated[str, AfterValidator(_dns_label), AfterValidator(_short_name)] = Field(
        "chainlit", description="DNS-1123 label: prefix of every k8s object / compose service.")
    namespace: DnsLabel = Field("default", description="Kubernetes namespace.")
    replicas: Annotated[StrictInt, _int_range(1, 100, "each replica is one single-worker instance")] = Field(
        3, description="Number of app instances.")
    app: App = Field(default_factory=App, description="The Chainlit app.")
    redis: Redis = Field(default_factory=Redis, description="Redis: shared sessions and cross-instance messages.")
    sticky: Sticky = Field(default_factory=Sticky, description="Sticky sessions (Socket.IO needs them).")
    ingress: Ingress = Field(default_factory=Ingress, description="Kubernetes ingress / Gateway API.")
    nginx: Nginx = Field(default_factory=Nginx, description="nginx target (VM / compose).")
    resources: Resources = Field(default_factory=Resources, description="Kubernetes container resources.")
    hpa: Hpa = Field(default_factory=Hpa, description="Horizontal pod autoscaling.")
    pdb: Pdb = Field(default_factory=Pdb, description="Pod disruption budget.")
    networkPolicy: NetworkPolicy = Field(default_factory=NetworkPolicy, description="Kubernetes NetworkPolicy.")
    auth: Auth = Field(default_factory=Auth, description="Where secrets live.")
    drain: Drain = Field(default_factory=Drain, description="Graceful shutdown.")
    websocketOnly: StrictBool = Field(
        False, description="Browsers use websockets only (Chainlit's transports), never long-polling: a "
                           "balancer then needs no stickiness (ingress.controller / gateway.affinity none).")
    createNamespace: StrictBool = Field(
        True, description="k8s: render the Namespace object (not for 'default').")
    bridges: list[Bridge] = Field(
        default_factory=list, max_length=20,
        description="Broker bridges (Kafka/RabbitMQ into chats): a Deployment (k8s) / service (compose) each.")
    uploads: Uploads = Field(default_factory=Uploads, description="Where uploaded files live (failover).")
    autogen: Autogen = Field(default_factory=Autogen, description="Distributed AutoGen group chats.")
    grpcGateway: GrpcGateway = Field(default_factory=GrpcGateway,
                                     description="The standalone worker gateway (gRPC + HTTP): Deployment + Service "
                                                 "(k8s) / service (compose).")

    @model_validator(mode="after")
    def _cross_checks(self) -> "Values":
        last = self.app.port + self.replicas - 1
        if last > 65535:
            raise FieldError("app.port", self.app.port, f"app.port + replicas - 1 = {last} exceeds "
                             "65535 (instance i listens on app.port+i)")
        if self.app.adminPort == self.app.port:
            raise FieldError("app.adminPort", self.app.adminPort, "must differ from app.port")
        names = [b.name for b in self.bridges]
        for i, bridge in enumerate(self.bridges):
            if bridge.name in names[:i]:
                raise FieldError(f"bridges[{i}].name", bridge.name, "given twice")
            _check_bridge(i, bridge)
        g = self.grpcGateway
        if g.enabled and g.serviceType != "ClusterIP" and self.networkPolicy.enabled and not g.clientCIDRs:
            raise FieldError("grpcGateway.clientCIDRs", g.clientCIDRs, f"serviceType {g.serviceType} is for callers "
                             "outside the cluster, but the NetworkPolicy admits none: list their address ranges "
                             "(0.0.0.0/0 for any)")
        if self.nginx.tls.enabled and self.nginx.tls.listen == self.nginx.listen:
            raise FieldError("nginx.tls.listen", self.nginx.tls.listen, "must differ from nginx.listen")
        return self

    def dump(self) -> dict[str, Any]:
        """Plain YAML-ready data with the YAML key names (``from``, not ``from_``)."""
        return self.model_dump(mode="json", by_alias=True)
