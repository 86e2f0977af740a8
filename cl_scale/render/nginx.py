"""nginx target: a sticky load balancer in front of N single-worker Chainlit instances.

Why every template expression is quoted: values end up as nginx directive arguments, and an
unquoted ``;``, ``}`` or newline would start a new directive. The jinja ``finalize`` hook quotes
the output of every ``{{ ... }}`` as an nginx string (``"..."`` with ``\\`` and ``"`` escaped) and
refuses ``$`` (nginx would expand a variable) and control characters. Only tokens built here from
validated parts (:class:`Raw`) are emitted as they are. Validation in ``Values`` is the first wall,
this is the second.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

import jinja2

from cl_scale.config.values import Values
from cl_scale.errors import UserError
from cl_scale.render import templates_dir

_UNSAFE = re.compile(r"[\x00-\x1f\x7f$]")
_UPSTREAM = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9][A-Za-z0-9.\-]*):([0-9]{1,5})$")


class Raw(str):
    """A token assembled by the renderer from validated parts (e.g. one holding ``$host``)."""


def nginx_quote(value: Any) -> str:
    """Quote ``value`` as one nginx string token: it can never end the directive or the block."""
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, bool) or value is None:
        raise ValueError(f"refusing to render {value!r} into nginx.conf")
    if isinstance(value, int):  # ports, counts: nothing to quote
        return str(value)
    text = str(value)
    if _UNSAFE.search(text):
        raise ValueError(f"refusing to render {text!r} into nginx.conf: '$' or control character")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir() / "nginx")),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        finalize=nginx_quote,
    )
    env.filters["q"] = nginx_quote
    return env


def default_upstreams(values: Values) -> list[str]:
    """Instance i of N listens on ``app.host:app.port+i``."""
    host = values.app.host
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    return [f"{host}:{values.app.port + i}" for i in range(values.replicas)]


def _check_upstreams(upstreams: list[str]) -> list[str]:
    if not upstreams:
        raise UserError("nginx: at least one upstream host:port is needed")
    for item in upstreams:
        m = _UPSTREAM.match(item)
        if not m or not 1 <= int(m.group(2)) <= 65535:
            raise UserError(f"nginx: upstream {item!r} must be host:port (port 1..65535)")
        if m.group(1).startswith("["):
            try:
                ipaddress.IPv6Address(m.group(1)[1:-1])
            except ValueError:
                raise UserError(f"nginx: upstream {item!r}: bad IPv6 address") from None
    return list(upstreams)


def _context(values: Values, upstreams: list[str]) -> dict[str, Any]:
    tls = values.nginx.tls
    if not isinstance(tls.listen, int) or isinstance(tls.listen, bool):
        raise UserError(f"nginx.tls.listen={tls.listen!r}: must be a port number")
    suffix = "" if tls.listen == 443 else f":{tls.listen}"
    context: dict[str, Any] = {
        "values": values,
        "upstreams": upstreams,
        "upstream_name": f"{values.name}_instances",
        "server_names": values.nginx.serverName.split(" "),
        "redirect": Raw(f"https://$host{suffix}$request_uri"),
    }
    if values.sticky.mode == "cookie":
        # Anchored so "FooX-Chainlit-Session-id" does not match; the name is regex-escaped.
        context["cookie_regex"] = f"~*(?:^|;\\s*){re.escape(values.sticky.cookieName)}=(?<sid>[^;]+)"
    if values.sticky.mode == "header":
        # Emitted raw (a variable name cannot be quoted): re-checked here, not only in Values.
        header = values.sticky.headerName
        if not re.fullmatch(r"[A-Za-z0-9]+(-[A-Za-z0-9]+)*", header):
            raise UserError(f"sticky.headerName={header!r}: must be an HTTP header name")
        context["header_var"] = Raw("$http_" + header.lower().replace("-", "_"))
    return context


# The rendered directory runs as-is with ``-p <dir>``: nginx creates its temp dirs but not these.
_RUNTIME_DIRS = {"run/.gitignore": "*\n!.gitignore\n", "logs/.gitignore": "*\n!.gitignore\n"}


def render(values: Values, upstreams: list[str] | None = None, *, stdio_logs: bool = False,
           listen_host: str | None = None) -> dict[str, str]:
    """``{"nginx.conf", "conf.d/chainlit.conf", run/, logs/}``.

    ``upstreams`` overrides the ``app.host:app.port+i`` servers (a local cluster on arbitrary
    ports, compose services); ``stdio_logs`` sends logs to stderr/stdout (containers) instead of
    files under the prefix; ``listen_host`` binds one address (e.g. 127.0.0.1) instead of all."""
    servers = _check_upstreams(upstreams if upstreams is not None else default_upstreams(values))
    if listen_host is not None:
        try:
            ipaddress.ip_address(listen_host)  # an address, nothing else
        except ValueError:
            raise UserError(f"nginx: listen address {listen_host!r} must be an IP address") from None
    env = _env()
    context = _context(values, servers)
    context["stdio_logs"] = stdio_logs
    http, https = values.nginx.listen, values.nginx.tls.listen
    if listen_host:
        host = f"[{listen_host}]" if ":" in listen_host else listen_host
        http, https = f"{host}:{http}", f"{host}:{https}"
    context["listen_http"], context["listen_https"] = http, https
    # real_ip_header proxy_protocol only works on listeners that speak the PROXY protocol.
    real_ip = values.nginx.realIp
    context["listen_options"] = Raw(" proxy_protocol" if real_ip.enabled and real_ip.header == "proxy_protocol"
                                    else "")
    try:
        out = {
            "nginx.conf": env.get_template("nginx.conf.j2").render(context),
            "conf.d/chainlit.conf": env.get_template("chainlit.conf.j2").render(context),
        }
    except ValueError as exc:  # nginx_quote refused a value the schema should have rejected
        raise UserError(f"nginx: {exc}") from None
    out.update(_RUNTIME_DIRS)
    return out
