"""Redis URLs as cl-scale accepts them, and the one place that knows where a password can hide in one.

Accepted forms (``contract.REDIS_SCHEMES``)::

    redis://[user[:password]@]host[:port][/db]         rediss:// (TLS) likewise
    unix://[user[:password]@]/path/to/socket[?db=0&password=...]
    redis+sentinel://[:password@]host1:26379,host2:26379/service/db

A password may sit in the userinfo of any of them or in the query string (``password=``), and a
sentinel URL lists several ``host:port`` pairs, which ``urllib`` cannot give a port for. Every
function here works on the text, so none of them can raise on a multi-host netloc.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from cl_scale.contract import REDIS_SCHEMES

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_HOSTPORT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(:[0-9]{1,5})?$")
_SECRET_PARAMS = ("password", "passwd", "pass", "secret", "token", "auth")
MAX_SHOWN = 200  # a refused URL is shown at most this long (a 100 KB URL is not echoed whole)


def _split_netloc(netloc: str) -> tuple[str | None, str]:
    """(userinfo or None, hosts): userinfo ends at the *last* '@'."""
    if "@" in netloc:
        userinfo, _, hosts = netloc.rpartition("@")
        return userinfo, hosts
    return None, netloc


def _unsplit(parts) -> str:
    """``urlunsplit`` drops the ``//`` of ``unix:///path`` (empty netloc): keep the form users wrote."""
    text = urlunsplit(parts)
    if not parts.netloc and parts.scheme and text.startswith(f"{parts.scheme}:/") \
            and not text.startswith(f"{parts.scheme}://"):
        text = f"{parts.scheme}://" + text[len(parts.scheme) + 1:]
    return text


def _secret_param(name: str) -> bool:
    return any(word in name.lower() for word in _SECRET_PARAMS)


def has_password(url: str) -> bool:
    parts = urlsplit(url)
    userinfo, _ = _split_netloc(parts.netloc)
    if userinfo is not None and ":" in userinfo and userinfo.partition(":")[2]:
        return True
    return any(_secret_param(k) and v for k, v in parse_qsl(parts.query, keep_blank_values=True))


def redacted(url: str) -> str:
    """The URL with every password replaced by ``***`` and cut to ``MAX_SHOWN`` characters: safe
    for logs, status output and error messages."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    userinfo, hosts = _split_netloc(parts.netloc)
    netloc = parts.netloc
    if userinfo is not None and ":" in userinfo:
        user = userinfo.partition(":")[0]
        netloc = f"{user}:***@{hosts}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(_secret_param(k) for k, _ in pairs):
            query = urlencode([(k, "***" if _secret_param(k) else v) for k, v in pairs], safe="*")
    shown = _unsplit(parts._replace(netloc=netloc, query=query))
    return shown if len(shown) <= MAX_SHOWN else shown[:MAX_SHOWN] + "..."


def with_password(url: str, password: str | None) -> str:
    """Put ``REDIS_PASSWORD`` into a URL that has none, so the password can live in a Secret while
    the URL lives in a ConfigMap. ``unix://`` gets it as ``?password=``; every other form in the
    userinfo (sentinel: the password of the sentinels and of the master)."""
    if not password or has_password(url):
        return url
    parts = urlsplit(url)
    if parts.scheme == "unix":
        query = parse_qsl(parts.query, keep_blank_values=True) + [("password", password)]
        return _unsplit(parts._replace(query=urlencode(query)))
    userinfo, hosts = _split_netloc(parts.netloc)
    user = (userinfo or "").partition(":")[0]
    return _unsplit(parts._replace(netloc=f"{user}:{quote(password, safe='')}@{hosts}"))


def check(url: str, *, allow_password: bool) -> None:
    """Raise ``ValueError(why)`` unless ``url`` is a Redis URL cl-scale can use. The reason never
    contains the URL (callers show it redacted). ``allow_password=False`` for values files, whose
    URLs end up in manifests: the password belongs in a Secret."""
    if not isinstance(url, str) or not url:
        raise ValueError("must be a Redis URL like redis://host:6379/0")
    if _CONTROL.search(url) or any(c.isspace() for c in url):
        raise ValueError("must not contain whitespace or control characters")
    if len(url) > 2048:
        raise ValueError("must be at most 2048 characters")
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise ValueError(f"is not a valid URL ({exc})") from None
    if parts.scheme not in REDIS_SCHEMES:
        raise ValueError("scheme must be one of " + ", ".join(f"{s}://" for s in REDIS_SCHEMES))
    _, hosts = _split_netloc(parts.netloc)
    if parts.scheme == "unix":
        if not parts.path:
            raise ValueError("unix:// needs a socket path, e.g. unix:///run/redis.sock")
    else:
        items = hosts.split(",") if "+sentinel" in parts.scheme else [hosts]
        for item in items:
            m = _HOSTPORT.match(item)
            if not m:
                raise ValueError("needs host[:port], e.g. redis://redis.example.com:6379/0"
                                 + (" (sentinel: host1:26379,host2:26379)" if "+sentinel" in parts.scheme else ""))
            if m.group(2) and not 1 <= int(m.group(2)[1:]) <= 65535:
                raise ValueError("port must be between 1 and 65535")
        segments = [x for x in parts.path.split("/") if x]
        db = segments[1 if "+sentinel" in parts.scheme else 0:][:1]
        if "+sentinel" in parts.scheme and not segments:
            raise ValueError("sentinel URLs name the service: redis+sentinel://host:26379/mymaster/0")
        if db and not (db[0].isdigit() and int(db[0]) < 16384):
            raise ValueError("the database must be a number, e.g. /0")
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key == "db" and not value.isdigit():
            raise ValueError("the database (db=) must be a number")
    if not allow_password and has_password(url):
        raise ValueError("must not carry a password (it would be rendered into the Deployment / compose "
                         "file): put it in the Secret key REDIS_PASSWORD (k8s) or .env (compose)")
