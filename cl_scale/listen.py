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


def raise_open_file_limit() -> int:
    """Raise this process's soft open-file limit to its hard limit; return the soft limit now.

    Why: every websocket client holds one file descriptor for as long as it is connected, and the usual
    soft default (1024) refuses the thousandth client with "Too many open files" while the hard limit
    (containerd and systemd give 524288 or more) would allow hundreds of times that. Raising soft up to
    hard needs no privilege; children (instances started by ``cl-scale up``/the bench) inherit it."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):  # e.g. above fs.nr_open: keep what we have
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]
