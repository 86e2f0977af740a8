"""``cl-scale up``: Redis + N ``cl-scale run`` instances + nginx on this machine, as one unit.

The supervisor starts the processes (procs.py), records them in ``<state dir>/cluster.json`` so that
``status`` and ``down`` — possibly from another shell, after ``up --detach`` — find them by PID, and
stops them all. Every process runs in its own session: Ctrl-C in the terminal reaches only the
supervisor, which then stops the children itself, in order (nginx, instances, Redis).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from cl_scale.cluster.procs import Instance, Nginx, RedisServer, http_status, nginx_binary
from cl_scale.errors import UserError
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
    """Starts, describes and stops one local cluster."""

    def __init__(self, spec: ClusterSpec):
        self.spec = spec
        self.state_dir = spec.state_dir.resolve()
        self.redis: RedisServer | None = None
        self.instances: list[Instance] = []
        self.nginx: Nginx | None = None
        self.redis_url = spec.redis_url

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
        logs = self.state_dir / "logs"
        logs.mkdir(exist_ok=True)
        try:
            if not self.redis_url:
                progress("starting redis-server")
                redis_dir = self.state_dir / "redis"
                redis_dir.mkdir(exist_ok=True)
                self.redis = RedisServer(redis_dir).start()
                self.redis_url = self.redis.url
            app_dir, app_name = self._app()
            progress("preparing the app directory")
            _init_chainlit_files(app_dir)
            secret = secrets.token_urlsafe(32)  # CHAINLIT_AUTH_SECRET shared by the instances, never printed
            local = write_local_secrets(self.state_dir, {"CL_SCALE_DOCTOR_TOKEN": secrets.token_urlsafe(24)})
            env = {"CHAINLIT_AUTH_SECRET": secret, "CL_SCALE_DRAIN_SECONDS": str(self.spec.drain_seconds), **local}
            for i in range(self.spec.replicas):
                inst = Instance(app_dir, self.redis_url, f"inst{i + 1}", app=app_name, env=dict(env))
                inst.log_dir = logs
                self.instances.append(_start_instance(inst, logs))
            for inst in self.instances:
                progress(f"waiting for {inst.name} on port {inst.port}")
                inst.wait_ready(timeout=90)
            progress(f"starting nginx on port {self.spec.port}")
            self.nginx = Nginx(self.state_dir / "nginx", [f"127.0.0.1:{i.port}" for i in self.instances],
                               self.spec.sticky, port=self.spec.port).start()
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
        return {
            "url": f"http://127.0.0.1:{self.spec.port}",
            "state_dir": str(self.state_dir),
            "app": str(self.spec.app.resolve()) if self.spec.app else "bundled demo app",
            "redis": {"url": redacted(self.redis_url or ""), "pid": self.redis.proc.pid if self.redis else None,
                      "port": self.redis.port if self.redis else None, "managed": self.redis is not None},
            "nginx": {"pid": self.nginx.proc.pid if self.nginx and self.nginx.proc else None,
                      "port": self.spec.port, "prefix": str(self.state_dir / "nginx")},
            "instances": [{"name": i.name, "pid": i.proc.pid, "port": i.port, "url": i.url,
                           "log": str(self.state_dir / "logs" / f"{i.name}.log")} for i in self.instances],
        }

    # -- stop ----------------------------------------------------------------------------------
    def stop(self) -> None:
        if self.nginx:
            self.nginx.stop()
        for inst in self.instances:
            inst.stop()  # SIGTERM: each instance drains, then exits (bounded wait, then SIGKILL)
        if self.redis:
            self.redis.stop()
        state_file = self.state_dir / STATE_FILE
        if state_file.exists():
            state_file.unlink()


def _start_instance(inst: Instance, logs: Path) -> Instance:
    """Like ``Instance.start`` but with the log under the cluster's logs/ directory."""
    from cl_scale.cluster.procs import CL_SCALE, Proc

    # The Redis URL goes by environment, never argv (which any local user can read with ps).
    cmd = [CL_SCALE, "run", inst.app, "--port", str(inst.port), "--instance-id", inst.name]
    inst.proc = Proc(cmd, env={"CL_SCALE_INSTANCE_ID": inst.name, "CL_SCALE_REDIS_URL": inst.redis_url,
                               "PYTHONUNBUFFERED": "1", **inst.env},
                     cwd=str(inst.app_dir), log_path=logs / f"{inst.name}.log").start()
    return inst


def _init_chainlit_files(app_dir: Path) -> None:
    """Chainlit writes .chainlit/ and chainlit.md at start; do it once so N instances do not race."""
    subprocess.run([sys.executable, "-c", "import chainlit.config, chainlit.markdown as m; "
                    "m.init_markdown(chainlit.config.config.root)"],
                   cwd=app_dir, check=False, capture_output=True, timeout=120)


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
    path = Path(state_dir) / SECRETS_FILE
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None
    return next((line.partition("=")[2] for line in lines if line.partition("=")[0] == name), None) or None


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


def describe(state: dict) -> dict:
    """The state file enriched with what is true now: alive, ready, sessions."""
    out = json.loads(json.dumps(state))
    for inst in out["instances"]:
        inst["alive"] = _pid_alive(inst["pid"])
        inst["ready"] = inst["alive"] and http_status(f"{inst['url']}/readyz") == 200
        sessions = _metric(inst["url"], "clscale_sessions") if inst["alive"] else None
        inst["sessions"] = int(sessions) if sessions is not None else None
    out["nginx"]["alive"] = _pid_alive(out["nginx"]["pid"])
    redis = out["redis"]
    redis["alive"] = _pid_alive(redis["pid"]) if redis.get("managed") else None
    out["healthy"] = (out["nginx"]["alive"] and all(i["ready"] for i in out["instances"])
                      and redis["alive"] is not False)
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
    (Path(state_dir) / STATE_FILE).unlink(missing_ok=True)
    return stopped
