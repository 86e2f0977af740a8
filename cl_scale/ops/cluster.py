"""A process cluster on this machine: Redis, N instances and (optionally) nginx, as one unit.

The one cluster class: ``cl-scale up`` (``ops.local``), the benchmark's setups and the tests all
start, restart, kill and stop processes through it. Every process is ours (ephemeral loopback
ports, own process group) and is stopped by PID.
"""

from __future__ import annotations

import secrets
import signal
from pathlib import Path

from cl_scale.ops.processes import InstanceProcess, NginxProcess, RedisServer


class ProcessCluster:
    """:param app_dir: the app's directory (Chainlit writes ``.chainlit/`` and ``.files/`` there).
    :param work_dir: logs, the nginx prefix and (when started here) Redis's data go under it.
    :param redis: a running ``RedisServer`` (or anything with ``.url``) to use; None: start one on
                  ``start``, or use ``redis_url``.
    :param env: environment of every instance (on top of this process's).
    """

    def __init__(self, app_dir: Path, work_dir: Path, *, redis=None, redis_url: str | None = None,
                 env: dict | None = None):
        self.app_dir, self.work_dir = Path(app_dir), Path(work_dir)
        self.redis = redis
        self._redis_url = redis_url
        self.owns_redis = False
        # Instances of one cluster share CHAINLIT_AUTH_SECRET (a session's token works on any of them).
        self.env = {"CHAINLIT_AUTH_SECRET": secrets.token_urlsafe(32), **(env or {})}
        self.instances: list[InstanceProcess] = []
        self.nginx: NginxProcess | None = None

    @property
    def redis_url(self) -> str:
        return self.redis.url if self.redis is not None else self._redis_url

    # -- starting -------------------------------------------------------------------------------
    def start_redis(self) -> str:
        if self.redis is None and not self._redis_url:
            data = self.work_dir / "redis"
            data.mkdir(parents=True, exist_ok=True)
            self.redis = RedisServer(data).start()
            self.owns_redis = True
        return self.redis_url

    def start(self, n: int, *, app: str = "app.py", nginx: bool = False, sticky: str = "ip_hash",
              env: dict | None = None, command=None, ready_path: str = "/readyz", nginx_port: int | None = None,
              nginx_sets: list[str] | None = None, prefix: str = "inst", timeout: float = 90.0,
              progress=lambda text: None) -> "ProcessCluster":
        """Start ``n`` more instances (waiting until each is ready), then nginx in front of all of
        them if asked. ``command(instance) -> argv`` runs something else than ``cl-scale run``."""
        self.start_redis()
        logs = self.work_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        first = len(self.instances)
        new = []
        for i in range(first, first + n):
            inst = InstanceProcess(self.app_dir, self.redis_url, f"{prefix}{i + 1}", app=app,
                                   env={**self.env, **(env or {})}, log_dir=logs, ready_path=ready_path)
            if command is not None:
                inst.command = command(inst)
            self.instances.append(inst)  # before it starts: stop() reaches it whatever happens next
            new.append(inst.start())
        for inst in new:
            progress(f"waiting for {inst.name} on port {inst.port}")
            inst.wait_ready(timeout=timeout)
        if nginx:
            progress(f"starting nginx on port {nginx_port or 'a free port'}")
            self.start_nginx(sticky=sticky, port=nginx_port, sets=nginx_sets)
        return self

    def start_nginx(self, *, sticky: str = "ip_hash", port: int | None = None, sets: list[str] | None = None,
                    edit=None, name: str = "nginx") -> NginxProcess:
        proxy = NginxProcess(self.work_dir / name, [f"127.0.0.1:{i.port}" for i in self.instances], sticky,
                             port=port, sets=sets, edit=edit).start()
        if name == "nginx":
            self.nginx = proxy
        return proxy

    # -- changing -------------------------------------------------------------------------------
    def by_name(self, name: str) -> InstanceProcess:
        return next(i for i in self.instances if i.name == name)

    def restart(self, inst: InstanceProcess, sig: int = signal.SIGTERM) -> InstanceProcess:
        """Stop one instance (SIGTERM: it drains), start it again on the same port, wait until ready."""
        inst.stop(sig)
        replacement = InstanceProcess(inst.app_dir, self.redis_url, inst.name, port=inst.port, app=inst.app,
                                      env=inst.env, command=inst.command, log_dir=inst.log_dir,
                                      ready_path=inst.ready_path).start().wait_ready()
        self.instances[self.instances.index(inst)] = replacement
        return replacement

    @property
    def pids(self) -> list[int]:
        return [i.proc.pid for i in self.instances if i.proc]

    # -- stopping -------------------------------------------------------------------------------
    def stop(self, *, drain: bool = False) -> None:
        """nginx, then the instances (SIGTERM and a bounded drain, or SIGKILL), then our Redis."""
        if self.nginx:
            self.nginx.stop()
        for inst in self.instances:
            inst.stop() if drain else inst.kill()
        if self.owns_redis and self.redis is not None:
            self.redis.stop()
