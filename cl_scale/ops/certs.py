"""A private CA and certificates signed by it, made with ``openssl``: TLS for the servers tests and
benchmarks start on this machine (RabbitMQ's amqps, Redis's TLS port, the gRPC gateway)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path


class NoOpenSSL(RuntimeError):
    """``openssl`` is not installed; the message says what to install."""


def make_certificates(target: Path, *, clients: tuple[str, ...] = ("client",)) -> Path:
    """Under ``target``: ``ca.pem``/``ca.key``, ``server.pem``/``server.key`` for 127.0.0.1 and
    localhost, and ``<name>.pem``/``<name>.key`` client certificates, all signed by that CA."""
    if shutil.which("openssl") is None:
        raise NoOpenSSL("openssl not found: apt-get install openssl")
    target.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=target, capture_output=True, check=True, timeout=60)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=cl-scale test CA")
    (target / "server.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    (target / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for name, ext in [("server", "server.ext"), *[(c, "client.ext") for c in clients]]:
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", f"/CN={'localhost' if name == 'server' else name}")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.pem", "-days", "2", "-extfile", ext)
    return target
