"""The setups the benchmark compares, each a ``ProcessCluster`` on one shared redis-server.

(a) ``stock``        stock ``chainlit run``, one instance (in-memory Socket.IO manager);
(b) ``stock-redis``  3 stock Chainlit instances with python-socketio's ``AsyncRedisManager``, nginx ip_hash;
(c) ``cl-scale``     3 ``cl-scale run`` instances, nginx ip_hash (cl-scale's rendered config).
All run the same app (``bench/apps/echo.py``, plain Chainlit).
"""

from __future__ import annotations

import shutil
import sys
from importlib import resources
from pathlib import Path

from cl_scale.ops.cluster import ProcessCluster
from cl_scale.ops.processes import init_chainlit_files

SETUPS = ("stock", "stock-redis", "cl-scale")
LABELS = {"stock": "(a) stock chainlit, 1 instance", "stock-redis": "(b) 3 x stock AsyncRedisManager",
          "cl-scale": "(c) 3 x cl-scale run"}
SHORT = {"stock": "(a) stock", "stock-redis": "(b) stock Redis mgr", "cl-scale": "(c) cl-scale"}
WORKER_KEY = ("bench", "bench-secret-" + "x" * 20)
CHAINLIT = str(Path(sys.executable).parent / "chainlit")


def command_for(name: str, redis_url: str):
    """How a setup's instances start: None for ``cl-scale run``, else ``(instance) -> argv``."""
    if name == "stock":
        return lambda inst: [CHAINLIT, "run", "app.py", "--headless", "--host", "127.0.0.1", "--port", str(inst.port)]
    if name == "stock-redis":
        def stock_redis(inst):
            inst.env.update({"REDIS_URL": redis_url, "CHAINLIT_PORT": str(inst.port), "CHAINLIT_HOST": "127.0.0.1"})
            return [sys.executable, "-m", "cl_scale.bench.stock_redis", "app.py"]
        return stock_redis
    return None


def start(name: str, tmp: Path, redis, clients: int = 0, nginx: bool | None = None) -> ProcessCluster:
    """One setup, ready to measure. ``clients``: how many websockets nginx must hold (2 connections each).
    ``nginx``: put the rendered nginx in front (default: when there is more than one instance)."""
    app_dir = tmp / name
    app_dir.mkdir()
    shutil.copy(resources.files("cl_scale.bench.apps").joinpath("echo.py"), app_dir / "app.py")
    init_chainlit_files(app_dir)
    cluster = ProcessCluster(app_dir, tmp / f"{name}-run", redis=redis,
                             env={"CL_SCALE_WORKER_KEYS": ":".join(WORKER_KEY)})
    count = 1 if name == "stock" else 3
    try:
        cluster.start(count, prefix=name, command=command_for(name, redis.url),
                      ready_path="/readyz" if name == "cl-scale" else "/health",
                      nginx=count > 1 if nginx is None else nginx, nginx_sets=[f"nginx.workerConnections={max(4096, 2 * clients + 512)}"])
    except BaseException:
        cluster.stop()
        raise
    return cluster


def entry_url(cluster: ProcessCluster) -> str:
    """Where users come in: the balancer, or the single instance."""
    return cluster.nginx.url if cluster.nginx else cluster.instances[0].url
