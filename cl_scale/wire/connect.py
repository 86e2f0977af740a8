"""Build asyncio Redis clients from any URL cl-scale accepts (redis, rediss, unix, sentinel)."""

from __future__ import annotations

from urllib.parse import parse_qs, urlparse

import redis.asyncio as aioredis
from redis.asyncio.sentinel import Sentinel


def connect(url: str, *, timeout: float | None = 2.0, **options) -> aioredis.Redis:
    """A client whose commands fail after ``timeout`` seconds instead of hanging on a stalled Redis.

    ``timeout=None`` is for pub/sub listeners, which legitimately wait for messages.
    """
    opts = dict(socket_connect_timeout=timeout or 5.0, socket_timeout=timeout, health_check_interval=10,
                socket_keepalive=True, retry_on_timeout=False)
    opts.update(options)
    parsed = urlparse(url)
    if parsed.scheme in ("redis+sentinel", "rediss+sentinel"):
        # redis+sentinel://[:password@]host1:26379,host2:26379/service_name/db
        hosts = []
        for item in parsed.netloc.rsplit("@", 1)[-1].split(","):
            host, _, port = item.partition(":")
            hosts.append((host, int(port or 26379)))
        parts = [p for p in parsed.path.split("/") if p]
        service = parts[0] if parts else "mymaster"
        db = int(parts[1]) if len(parts) > 1 else 0
        password = parsed.password or parse_qs(parsed.query).get("password", [None])[0]
        sentinel = Sentinel(hosts, sentinel_kwargs={"password": password} if password else None,
                            ssl=parsed.scheme.startswith("rediss"), **opts)
        return sentinel.master_for(service, db=db, password=password)
    if parsed.scheme == "unix":  # redis-py's unix-socket connection takes no TCP keepalive option
        opts.pop("socket_keepalive", None)
    return aioredis.Redis.from_url(url, **opts)
