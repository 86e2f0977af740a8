"""Where certificates are mounted, for every target: one table that the k8s renderer turns into Secret
volumes and the compose renderer into compose secrets, so a process finds its files at the same path
whichever renderer made its pod.

Why paths in the Redis URL and not env vars: redis-py reads ``ssl_ca_certs``/``ssl_certfile``/
``ssl_keyfile`` from the URL's query, and the URL is already the one setting every cl-scale process
reads (instances, bridges, gateway), so nothing new has to be taught to each of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlencode

from cl_scale.config.values import Values

ROOT = "/etc/cl-scale"


@dataclass(frozen=True)
class CertMount:
    """One Secret mounted as a directory.

    :param volume: k8s volume name (also the compose secret's prefix).
    :param secret: name of the existing Secret (k8s).
    :param directory: where its files appear in the container.
    :param files: ``(Secret key, compose source file under ./certs/)`` for each file.
    """

    volume: str
    secret: str
    directory: str
    files: tuple[tuple[str, str], ...]

    def path(self, key: str) -> str:
        return f"{self.directory}/{key}"


def redis_mounts(v: Values) -> list[CertMount]:
    t = v.redis.tls
    out = []
    if t.caSecret:
        out.append(CertMount("redis-ca", t.caSecret, f"{ROOT}/redis-ca", (("ca.crt", "redis-ca.crt"),)))
    if t.clientCertSecret:
        out.append(CertMount("redis-client", t.clientCertSecret, f"{ROOT}/redis-client",
                             (("tls.crt", "redis-client.crt"), ("tls.key", "redis-client.key"))))
    return out


def gateway_mounts(v: Values) -> list[CertMount]:
    t = v.grpcGateway.tls
    out = []
    if t.secretName:
        out.append(CertMount("gateway-tls", t.secretName, f"{ROOT}/gateway-tls",
                             (("tls.crt", "gateway.crt"), ("tls.key", "gateway.key"))))
    if t.clientCaSecret:
        out.append(CertMount("gateway-client-ca", t.clientCaSecret, f"{ROOT}/gateway-client-ca",
                             (("ca.crt", "gateway-client-ca.crt"),)))
    return out


def redis_url_params(v: Values) -> dict[str, str]:
    """Query parameters that point redis-py at the mounted Redis certificates."""
    params = {}
    for m in redis_mounts(v):
        if m.volume == "redis-ca":
            params["ssl_ca_certs"] = m.path("ca.crt")
        else:
            params.update(ssl_certfile=m.path("tls.crt"), ssl_keyfile=m.path("tls.key"))
    return params


def with_redis_tls(url: str, v: Values) -> str:
    """``url`` with the mounted certificate paths added (unchanged when ``redis.tls`` is empty)."""
    params = redis_url_params(v)
    if not params:
        return url
    return url + ("&" if "?" in url else "?") + urlencode(params, safe="/")


def gateway_args(v: Values) -> list[str]:
    """``cl-scale gateway`` TLS options for the mounted gateway certificates."""
    args: list[str] = []
    for m in gateway_mounts(v):
        if m.volume == "gateway-tls":
            args += ["--tls-cert", m.path("tls.crt"), "--tls-key", m.path("tls.key")]
        else:
            args += ["--tls-client-ca", m.path("ca.crt")]
    return args
