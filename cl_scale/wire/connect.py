"""Build asyncio Redis clients from any URL cl-scale accepts (redis, rediss, unix, sentinel)."""

from __future__ import annotations

from urllib.parse import parse_qs, urlparse

import redis.asyncio as aioredis
from redis.asyncio.sentinel import Sentinel


def why_unreachable(exc: BaseException) -> str:
    """Why a Redis connection failed, in words that name the fix: a TLS certificate the client does
    not trust (``ssl_ca_certs``) or a TLS/plain mismatch reads differently from "nothing listens"."""
    text = " ".join(str(e) for e in _chain(exc))
    if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
        return "TLS: the server's certificate is not trusted (give its CA with ?ssl_ca_certs=/path/ca.pem)"
    if "WRONG_VERSION_NUMBER" in text or "wrong version number" in text:
        return "TLS: the server does not speak TLS on this port (redis:// instead of rediss://?)"
    if "Connection reset by peer" in text and "SSL" not in text:
        return "connection reset (a TLS port reached with redis://? use rediss://)"
    return f"unreachable ({exc.__class__.__name__})"


async def tls_problem(url: str, timeout: float = 5.0) -> str | None:
    """For a ``rediss://`` URL: why TLS to it cannot work (an untrusted certificate, a missing CA file,
    a plain port), or None (it works, or Redis is simply not up yet: that heals by itself; a TLS
    mistake does not, so a process should refuse to start on it)."""
    if not urlparse(url).scheme.startswith("rediss"):
        return None
    client = connect(url, timeout=timeout)
    try:
        await client.ping()
        return None
    except (FileNotFoundError, PermissionError, IsADirectoryError) as exc:  # the CA file named by ssl_ca_certs
        return f"TLS: cannot read {getattr(exc, 'filename', None) or exc}"
    except Exception as exc:
        missing = next((e for e in _chain(exc) if isinstance(e, (FileNotFoundError, PermissionError))), None)
        if missing is not None:
            return f"TLS: cannot read {getattr(missing, 'filename', None) or missing}"
        why = why_unreachable(exc)
        return why if why.startswith("TLS") else None
    finally:
        await client.aclose()


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


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
