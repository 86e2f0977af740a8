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

from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

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
