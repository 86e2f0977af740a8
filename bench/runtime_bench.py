"""Runtime benchmark: echo round trip and 2000-token streaming, three setups side by side, one run.

(a) stock ``chainlit run``, one instance, in memory;
(b) 3 stock Chainlit instances with python-socketio's ``AsyncRedisManager``;
(c) 3 ``cl-scale run`` instances.
The client talks to instance 1 directly in every setup, so only the server side differs.
Writes bench/runtime.json and bench/plots/runtime.png (committed; the README quotes them).

    python bench/runtime_bench.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cl_scale.client import ChainlitClient
from cl_scale.cluster.procs import Instance, RedisServer

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "tests" / "apps" / "counter_app.py"
OUT = ROOT / "bench" / "plots"
PY = sys.executable
CHAINLIT = str(Path(PY).parent / "chainlit")


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


async def echo_once(client: ChainlitClient, tag: str) -> float:
    t0 = time.perf_counter()
    await client.ask(tag, contains=f"echo={tag}", timeout=30)
    return (time.perf_counter() - t0) * 1000


async def stream_once(client: ChainlitClient, tokens: int) -> float:
    # The first token travels in stream_start, the others in stream_token.
    seen = lambda: client.counts.get("stream_start", 0) + client.counts.get("stream_token", 0)  # noqa: E731
    target = seen() + tokens
    t0 = time.perf_counter()
    await client.send(f"stream {tokens}")
    await client.wait_for(lambda: seen() >= target, 120)
    await client.wait_for(lambda: True, 1)
    return time.perf_counter() - t0


async def measure_interleaved(urls: dict[str, str], echoes: int, streams: int, tokens: int) -> dict:
    """All setups run at once and are measured in alternating rounds (order rotated each round),
    so machine noise — CPU steal, frequency changes — lands on every setup alike."""
    clients = {}
    for name, url in urls.items():
        client = ChainlitClient(url)
        await client.connect()
        await client.wait_for(lambda c=client: c.messages(), 20)
        for i in range(10):  # warm-up
            await client.ask(f"w{i}", contains=f"echo=w{i}")
        clients[name] = client
    names = list(urls)
    rtts = {n: [] for n in names}
    stream_times = {n: [] for n in names}
    rounds = 10
    per_round = max(1, echoes // rounds)
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            for i in range(per_round):
                rtts[name].append(await echo_once(clients[name], f"r{r}e{i}"))
    for s in range(streams):
        order = names[s % len(names):] + names[:s % len(names)]
        for name in order:
            stream_times[name].append(await stream_once(clients[name], tokens))
    for client in clients.values():
        await client.close()
    return {n: {"echo_p50_ms": statistics.median(rtts[n]), "echo_p99_ms": percentile(rtts[n], 0.99),
                "stream_s": statistics.median(stream_times[n]), "echo_samples": len(rtts[n]),
                "stream_samples": len(stream_times[n])} for n in names}


def run_setup(name: str, tmp: Path, redis: RedisServer, n: int, kind: str) -> list[Instance]:
    app_dir = tmp / name
    app_dir.mkdir()
    shutil.copy(APP, app_dir / "app.py")
    subprocess.run([PY, "-c", "import chainlit.config, chainlit.markdown as m; m.init_markdown(chainlit.config.config.root)"],
                   cwd=app_dir, check=True, capture_output=True)
    instances = []
    for i in range(n):
        inst = Instance(app_dir, redis.url, f"{name}{i + 1}")
        if kind == "stock":
            inst.command = [CHAINLIT, "run", "app.py", "--headless", "--port", str(inst.port)]
        elif kind == "stock-redis":
            inst.command = [PY, "-m", "cl_scale.loadtest.stock_redis_chainlit", "app.py"]
            inst.env = {"REDIS_URL": redis.url, "CHAINLIT_PORT": str(inst.port), "CHAINLIT_HOST": "127.0.0.1"}
        instances.append(inst.start())
    for inst in instances:
        inst.wait_ready(path="/readyz" if kind == "cl-scale" else "/health")
    return instances


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="few samples: checks the harness, not the figures")
    args = parser.parse_args()
    echoes, streams, tokens = (30, 1, 2000) if args.quick else (500, 12, 2000)
    OUT.mkdir(parents=True, exist_ok=True)
    results = {}
    setups = [("stock", 1, "stock"), ("stock-redis", 3, "stock-redis"), ("cl-scale", 3, "cl-scale")]
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        redis = RedisServer(tmp).start()
        running: dict[str, list[Instance]] = {}
        try:
            for name, n, kind in setups:
                running[name] = run_setup(name, tmp, redis, n, kind)
            # The client talks to instance 1 of each setup; its peers are live and subscribed.
            measured = asyncio.run(measure_interleaved({name: insts[0].url for name, insts in running.items()},
                                                       echoes, streams, tokens))
            for name, n, _ in setups:
                results[name] = {"instances": n, **measured[name]}
                print(name, json.dumps(results[name]), flush=True)
        finally:
            for insts in running.values():
                for inst in insts:
                    inst.kill()
            redis.stop()
    base, stock_redis, ours = results["stock"], results["stock-redis"], results["cl-scale"]
    report = {
        "machine": {"cpus": __import__("os").cpu_count(), "python": sys.version.split()[0]},
        "params": {"echoes": echoes, "streams": streams, "tokens": tokens, "quick": args.quick},
        "setups": results,
        "ratios": {
            "echo_p50_cl_scale_vs_stock": ours["echo_p50_ms"] / base["echo_p50_ms"],
            "echo_p99_cl_scale_vs_stock": ours["echo_p99_ms"] / base["echo_p99_ms"],
            "stream_cl_scale_vs_stock": ours["stream_s"] / base["stream_s"],
            "stream_speedup_vs_stock_redis_manager": stock_redis["stream_s"] / ours["stream_s"],
        },
    }
    (ROOT / "bench" / "runtime.json").write_text(json.dumps(report, indent=2))
    plot(report, OUT / "runtime.png")
    print(json.dumps(report["ratios"], indent=2))


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["setups"])
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    x = range(len(names))
    axes[0].bar([i - 0.2 for i in x], [report["setups"][n]["echo_p50_ms"] for n in names], 0.4, label="p50")
    axes[0].bar([i + 0.2 for i in x], [report["setups"][n]["echo_p99_ms"] for n in names], 0.4, label="p99")
    axes[0].set_xticks(list(x), names)
    axes[0].set_ylabel("ms")
    axes[0].set_title("echo round trip")
    axes[0].legend()
    axes[1].bar(names, [report["setups"][n]["stream_s"] for n in names], color="tab:green")
    axes[1].set_ylabel("seconds")
    axes[1].set_title(f"stream {report['params']['tokens']} tokens")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
