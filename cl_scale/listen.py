"""Bind a listening socket before a server starts, so "port in use" or a bad address is one clear
line (exit 2) instead of a log line and a puzzling exit code."""

from __future__ import annotations

import socket

from cl_scale.errors import UserError


def bind(host: str, port: int, option: str | None = None) -> socket.socket:
    """A listening socket on ``host:port``; a bad host or a taken port is a ``UserError`` naming the option
    (``--host``/``--port``, or ``option`` when one flag holds both)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError):
        raise UserError(f"{option or '--host'} {host[:80]!r}: not an address this machine can listen on") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        why = "already in use" if exc.errno == 98 else (exc.strerror or exc.__class__.__name__)
        raise UserError(f"{option or f'--port {port}'}: cannot listen on {host}:{port} ({why})") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock
