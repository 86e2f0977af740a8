"""Tests use the same process management as ``cl-scale up`` (real binaries, stopped by PID)."""

from cl_scale.cluster.procs import Instance, Nginx, Proc, RedisServer, free_port, http_status, wait_port  # noqa: F401
