"""``cl-scale bench``: the same workload against three setups (``bench.setups``), on this machine, in
one run; worker delivery like for like (``bench.worker``); whole-process render time. Writes
``results.json`` and ``plots/*.png``; the README section is generated from that JSON (``bench.report``).
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from cl_scale.bench import measure, report, setups, worker
from cl_scale.errors import UserError
from cl_scale.listen import raise_open_file_limit


def default_out() -> Path:
    source_bench = Path(__file__).resolve().parents[2] / "bench"
    return source_bench if source_bench.is_dir() else Path.cwd() / "bench"


def params(quick: bool, clients: int | None) -> dict:
    if quick:
        p = {"echoes": 20, "streams": 1, "tokens": 2000, "clients": 30, "hold_s": 2.0, "cpu_messages": 60,
             "cpu_senders": 6, "push_rounds": 20, "push_messages": 200, "render_runs": 2}
    else:
        p = {"echoes": 500, "streams": 10, "tokens": 2000, "clients": 5000, "hold_s": 60.0, "cpu_messages": 3000,
             "cpu_senders": 30, "push_rounds": 500, "push_messages": 10_000, "render_runs": 15}
    if clients is not None:
        p["clients"] = clients
    p["quick"] = quick
    return p


def check_optional_dependencies() -> None:
    """Before anything starts: a missing optional package is one line naming the extra."""
    for module, package in (("matplotlib", "matplotlib"), ("psutil", "psutil")):
        try:
            __import__(module)
        except ImportError:
            raise UserError(f"cl-scale bench needs {package}: pip install 'cl-scale[loadtest]'") from None


def render_speed(runs: int) -> dict:
    """Median wall time of the whole ``cl-scale render TARGET`` process (start, imports, validation,
    render, write)."""
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for target in ("k8s", "nginx", "compose"):
            times = []
            for i in range(runs):
                t0 = time.perf_counter()
                subprocess.run([sys.executable, "-m", "cl_scale", "render", target, "--out", f"{tmp}/{target}-{i}"],
                               check=True, capture_output=True, timeout=120)
                times.append(time.perf_counter() - t0)
            out[target] = round(statistics.median(times), 3)
    return {"runs": runs, "median_s": out}


def run(out_dir: Path, *, quick: bool = False, clients: int | None = None, only: list[str] | None = None,
        log=print) -> dict:
    from cl_scale.ops.processes import RedisServer

    names = [n for n in setups.SETUPS if not only or n in only]
    if not names:
        raise UserError(f"no setup selected: choose from {', '.join(setups.SETUPS)}")
    check_optional_dependencies()
    p = params(quick, clients)
    fd_limit = raise_open_file_limit()
    # The limit is per process: this one holds a socket per client, the busiest nginx worker about as
    # many (two connections per client, spread over its workers), each instance its share.
    if fd_limit < p["clients"] + 512:
        raise UserError(f"--clients {p['clients']}: open-file limit {fd_limit} is too low (one per client per "
                        "process, plus 512); raise `ulimit -n`")
    started = time.time()
    running: dict = {}
    with tempfile.TemporaryDirectory(prefix="cl-scale-bench-") as tmpdir:
        tmp = Path(tmpdir)
        redis = RedisServer(tmp).start()
        try:
            for name in names:
                log(f"starting {setups.LABELS[name]}")
                running[name] = setups.start(name, tmp, redis, p["clients"])
            log("measuring echo and stream latency")
            latency = asyncio.run(measure.latency({n: c.instances[0].url for n, c in running.items()}, p))
            delivery = None
            if "cl-scale" in running:
                log("measuring worker delivery against a raw emit")
                delivery = asyncio.run(worker.measure([i.url for i in running["cl-scale"].instances], redis.url, p))
            capacity = {}
            for name, cluster in running.items():
                log(f"holding {p['clients']} clients on {setups.LABELS[name]}")
                capacity[name] = asyncio.run(measure.capacity(setups.entry_url(cluster), cluster.pids, redis.proc.pid,
                                                              p, spread=60 if cluster.nginx else 1))
                capacity[name]["nginx_errors"] = measure.nginx_errors(cluster.nginx.prefix) if cluster.nginx else {}
                log(f"  {name}: {json.dumps(capacity[name])}")
        finally:
            for cluster in running.values():
                cluster.stop()
            redis.stop()
    log("timing cl-scale render")
    results = {
        "generated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "duration_s": round(time.time() - started, 1),
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0], "platform": sys.platform},
        "params": p,
        "labels": {n: setups.LABELS[n] for n in names},
        "notes": [
            "echo/stream: one client on instance 1 of each setup (no balancer hop), setups measured in "
            "rotating rounds; capacity: through nginx ip_hash for (b)/(c), loopback sources 127.0.N.1",
            "memory per connection = RSS delta of the instance processes / clients held; CPU per message = "
            "(instance CPU time delta during the burst - idle CPU rate x burst time) / echo messages (gross "
            "figure in cpu_ms_per_msg_gross; Redis CPU reported separately; nginx not counted)",
            worker.__doc__.split("\n\n")[0].replace("\n", " "),
        ],
        "setups": {n: {"instances": len(running[n].instances), **latency[n], **capacity[n]} for n in names},
        "worker": delivery,
        "render": render_speed(p["render_runs"]),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    report.plot(results, out_dir / "plots")
    return results
