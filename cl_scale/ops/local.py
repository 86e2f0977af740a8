"""``cl-scale up``: Redis + N ``cl-scale run`` instances + nginx on this machine, as one unit.

The supervisor starts the processes (``ops.cluster.ProcessCluster``), records them in ``<state dir>/cluster.json`` so that
``status`` and ``down`` — possibly from another shell, after ``up --detach`` — find them by PID, and
stops them all. Every process runs in its own session: Ctrl-C in the terminal reaches only the
supervisor, which then stops the children itself, in order (nginx, instances, Redis).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from cl_scale.errors import UserError
from cl_scale.ops.cluster import ProcessCluster
from cl_scale.ops.processes import http_status, init_chainlit_files, nginx_binary
from cl_scale.wire.redis_url import redacted

STATE_FILE = "cluster.json"


@dataclass
class ClusterSpec:
    """What ``cl-scale up`` was asked for."""

    app: Path | None  # None: the bundled demo app
    replicas: int = 3
    port: int = 8000
    redis_url: str | None = None
    state_dir: Path = Path(".cl-scale")
    sticky: str = "ip_hash"
    drain_seconds: int = 5


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    try:  # a zombie of ours is not alive
        status = Path(f"/proc/{pid}/status").read_text()
        return "\nState:\tZ" not in status
    except OSError:
        return True


class LocalCluster:
    """Starts, describes and stops one local cluster (a ``ProcessCluster`` plus its state directory)."""

    def __init__(self, spec: ClusterSpec):
        self.spec = spec
        self.state_dir = spec.state_dir.resolve()
        self.cluster: ProcessCluster | None = None

    # -- start ---------------------------------------------------------------------------------
    def check(self) -> None:
        """Refuse early, with one line, what would fail half-way."""
        if not 1 <= self.spec.replicas <= 32:
            raise UserError(f"--replicas {self.spec.replicas}: must be between 1 and 32 on one machine")
        if not 1 <= self.spec.port <= 65535:
            raise UserError(f"--port {self.spec.port}: must be a TCP port (1..65535)")
        if self.spec.app is not None and not self.spec.app.is_file():
            raise UserError(f"{self.spec.app}: no such app file")
        nginx_binary()
        existing = load_state(self.state_dir)
        if existing and any(_pid_alive(p) for p in all_pids(existing)):
            raise UserError(f"a cluster from {self.state_dir} is still running: `cl-scale down` first")
        if not _port_free(self.spec.port):
            raise UserError(f"--port {self.spec.port}: already in use; pick another one")

    def start(self, progress=lambda text: None) -> dict:
        self.check()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        # Logs, PIDs, a Redis dump and local secrets: never for a repository (as .pytest_cache does).
        (self.state_dir / ".gitignore").write_text("# written by cl-scale up\n*\n")
        try:
            app_dir, app_name = self._app()
            progress("preparing the app directory")
            init_chainlit_files(app_dir)
            # Commands run next to the cluster (send, dlq, gateway, doctor) find these in the state
            # directory: a development worker key (unless CL_SCALE_WORKER_KEYS is set), the doctor
            # token and the Redis URL. Readable by the owner only; never printed.
            keys = os.environ.get("CL_SCALE_WORKER_KEYS") or f"dev:{secrets.token_urlsafe(24)}"
            local = {"CL_SCALE_WORKER_KEYS": keys, "CL_SCALE_DOCTOR_TOKEN": secrets.token_urlsafe(24)}
            self.cluster = ProcessCluster(app_dir, self.state_dir, redis_url=self.spec.redis_url,
                                          env={"CL_SCALE_DRAIN_SECONDS": str(self.spec.drain_seconds), **local})
            if not self.spec.redis_url:
                progress("starting redis-server")
            write_local_secrets(self.state_dir, {**local, "CL_SCALE_REDIS_URL": self.cluster.start_redis()})
            self.cluster.start(self.spec.replicas, app=app_name, nginx=True, sticky=self.spec.sticky,
                               nginx_port=self.spec.port, progress=progress)
        except BaseException:
            self.stop()
            raise
        state = self.state()
        (self.state_dir / STATE_FILE).write_text(json.dumps(state, indent=2))
        return state

    def _app(self) -> tuple[Path, str]:
        if self.spec.app is not None:
            app = self.spec.app.resolve()
            return app.parent, app.name
        app_dir = self.state_dir / "demo-app"
        app_dir.mkdir(exist_ok=True)
        source = resources.files("cl_scale.examples").joinpath("demo_app.py").read_text()
        (app_dir / "app.py").write_text(source)
        return app_dir, "app.py"

    def state(self) -> dict:
        c = self.cluster
        redis = c.redis if c.owns_redis else None
        return {
            "url": f"http://127.0.0.1:{self.spec.port}",
            "state_dir": str(self.state_dir),
            "app": str(self.spec.app.resolve()) if self.spec.app else "bundled demo app",
            "redis": {"url": redacted(c.redis_url or ""), "pid": redis.proc.pid if redis else None,
                      "port": redis.port if redis else None, "managed": redis is not None},
            "nginx": {"pid": c.nginx.proc.pid if c.nginx and c.nginx.proc else None,
                      "port": self.spec.port, "prefix": str(self.state_dir / "nginx")},
            "instances": [{"name": i.name, "pid": i.proc.pid, "port": i.port, "url": i.url,
                           "log": str(i.log_dir / f"{i.name}.log")} for i in c.instances],
        }

    # -- stop ----------------------------------------------------------------------------------
    def stop(self) -> None:
        """Every process (instances drain first), then the state file."""
        if self.cluster is not None:
            self.cluster.stop(drain=True)
        (self.state_dir / STATE_FILE).unlink(missing_ok=True)


# -- local secrets: what commands run next to the cluster (doctor, send) need ------------------------
SECRETS_FILE = "secrets.env"


def write_local_secrets(state_dir: Path, values: dict[str, str]) -> dict[str, str]:
    """Secrets of the local cluster, readable by its owner only (``KEY=value`` lines)."""
    path = Path(state_dir) / SECRETS_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("".join(f"{k}={v}\n" for k, v in values.items()))
    return dict(values)


def local_secret(state_dir: Path, name: str) -> str | None:
    from cl_scale.worker.settings import local_secrets

    return local_secrets(state_dir).get(name)


# -- state file: status / down from any shell ------------------------------------------------------
def load_state(state_dir: Path) -> dict | None:
    path = Path(state_dir) / STATE_FILE
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        raise UserError(f"{path}: unreadable cluster state; remove it and stop leftovers by hand") from None


def all_pids(state: dict) -> list[int]:
    pids = [i["pid"] for i in state.get("instances", [])]
    pids.append(state.get("nginx", {}).get("pid"))
    pids.append(state.get("redis", {}).get("pid"))
    return [p for p in pids if p]


def _metric(url: str, name: str) -> float | None:
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url}/metrics", timeout=2) as resp:
            text = resp.read().decode()
    except OSError:
        return None
    match = re.search(rf"^{name} ([0-9.eE+-]+)$", text, re.M)
    return float(match.group(1)) if match else None


def worker_heartbeats(state_dir: Path) -> list[dict]:
    """The workers reporting to this cluster's Redis (``worker.registry``: SDK publishers, gateways,
    the workers announcing through them, bridges), each with its ``state``. [] if Redis is down."""
    import redis

    from cl_scale.worker import registry
    from cl_scale.worker.settings import WorkerSettings

    try:
        settings = WorkerSettings.from_env(state_dir=state_dir)
        client = redis.Redis.from_url(settings.redis_url, socket_timeout=2, socket_connect_timeout=2)
        try:
            raw = client.hgetall(settings.keys.workers)
        finally:
            client.close()
    except Exception:  # status reports what it can; Redis itself shows as DOWN in its own row
        return []
    return registry.read(raw)


def describe(state: dict, workers: list[dict] | None = None) -> dict:
    """The state file enriched with what is true now: alive, ready, sessions, workers. The cluster is
    healthy when its processes are and every broker bridge is connected and beating (other workers
    come and go: each shows its own state)."""
    out = json.loads(json.dumps(state))
    out["workers"] = workers or []
    for inst in out["instances"]:
        inst["alive"] = _pid_alive(inst["pid"])
        inst["ready"] = inst["alive"] and http_status(f"{inst['url']}/readyz") == 200
        sessions = _metric(inst["url"], "clscale_sessions") if inst["alive"] else None
        inst["sessions"] = int(sessions) if sessions is not None else None
    out["nginx"]["alive"] = _pid_alive(out["nginx"]["pid"])
    redis = out["redis"]
    redis["alive"] = _pid_alive(redis["pid"]) if redis.get("managed") else None
    out["healthy"] = (out["nginx"]["alive"] and all(i["ready"] for i in out["instances"])
                      and redis["alive"] is not False
                      and all(w.get("connected") and w["state"] == "healthy"
                              for w in out["workers"] if w.get("kind") == "bridge"))
    return out


def down(state_dir: Path, timeout: float = 20.0) -> list[int]:
    """Stop every process of the recorded cluster (SIGTERM, then SIGKILL); return the PIDs stopped."""
    state = load_state(state_dir)
    if state is None:
        raise UserError(f"no cluster recorded in {Path(state_dir).resolve()} (start one with `cl-scale up`)")
    order = [state["nginx"]["pid"], *[i["pid"] for i in state["instances"]], state["redis"].get("pid")]
    stopped = []
    for pid in [p for p in order if p]:
        if _pid_alive(pid):
            try:
                os.kill(pid, signal.SIGTERM)
                stopped.append(pid)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_pid_alive(p) for p in stopped):
        time.sleep(0.1)
    for pid in stopped:
        if _pid_alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(_pid_alive(p) for p in stopped):
        time.sleep(0.05)  # "stopped" is said once they are gone, not when they were asked to go
    left = [p for p in stopped if _pid_alive(p)]
    if left:
        raise UserError(f"could not stop processes {left} (still alive after SIGKILL)")
    (Path(state_dir) / STATE_FILE).unlink(missing_ok=True)
    return stopped
