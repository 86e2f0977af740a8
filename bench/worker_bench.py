"""Worker delivery benchmark: latency p50/p99 and sustained msgs/s, cl-scale worker path vs a raw emit.

Setup: 3 ``cl-scale run`` instances on one Redis; one Chainlit-protocol client per instance.
(a) worker path: ``Publisher.send`` -> session outbox stream -> owner -> ``Message.send()``;
(b) anchor: python-socketio ``AsyncRedisManager(write_only=True)`` emitting ``new_message`` to the
    session's room on the broadcast channel (UI-only, not persisted, lost while a listener is down).
Latency rounds alternate (a)/(b) so machine noise lands on both. Throughput: M messages as fast as the
publisher goes, into the session connected to instance 1 (one instance), then split over the sessions of
all 3 instances at once; loss = sent - distinct ids received after a settle time. The
receiving clients run in this process on the same 2 cores, so they bound both paths alike.
Writes bench/worker.json and bench/plots/worker.png (committed; the README quotes them). Not a test.

    python bench/worker_bench.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import socketio

from cl_scale.client import ChainlitClient
from cl_scale.cluster.procs import Instance, RedisServer
from cl_scale.worker import Publisher

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "tests" / "apps" / "counter_app.py"
OUT = ROOT / "bench" / "plots"
KEYS = "bench:bench-secret-0123456789"
SESSIONS_PER_INSTANCE = 1


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


class Received:
    """Ids of new_message events a client got, with arrival time (perf_counter)."""

    def __init__(self, client: ChainlitClient):
        self.at: dict[str, float] = {}
        self.count = 0
        original = client._on_any

        async def hook(event, data=None):
            if event == "new_message" and isinstance(data, dict):
                self.at.setdefault(data.get("id"), time.perf_counter())
                self.count += 1
            return await original(event, data)

        client.sio.handlers["/"]["*"] = hook


async def wait_until(pred, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        await asyncio.sleep(0.002)
    return pred()


async def latency(pub, raw, client, rec, rounds: int) -> dict:
    out = {"worker": [], "raw_emit": []}
    sid = client.session_id
    for i in range(rounds):
        for name in (("worker", "raw_emit") if i % 2 == 0 else ("raw_emit", "worker")):
            mid = str(uuid.uuid4())
            t0 = time.perf_counter()
            if name == "worker":
                await pub.send(sid, f"lat {i}", message_id=mid)
            else:
                await raw.emit("new_message", {"id": mid, "output": f"lat {i}", "type": "assistant_message",
                                               "name": "raw"}, room=f"session:{sid}")
            if await wait_until(lambda: mid in rec.at, 10):
                out[name].append((rec.at[mid] - t0) * 1000)
    return {k: {"p50_ms": round(percentile(v, 0.5), 3), "p99_ms": round(percentile(v, 0.99), 3), "n": len(v),
                "lost": rounds - len(v)} for k, v in out.items()}


async def throughput(pub, raw, targets, total: int, path: str) -> dict:
    """``total`` messages split over the target sessions, all at once; elapsed = first send -> last arrival."""
    n = total // len(targets)
    ids = {c.session_id: [str(uuid.uuid4()) for _ in range(n)] for c, _ in targets}

    async def feed(client):
        sid = client.session_id
        if path == "worker":
            for k in range(0, n, 100):
                await pub.send_many([{"session_id": sid, "text": f"tp {j}", "message_id": ids[sid][j]}
                                     for j in range(k, min(n, k + 100))])
        else:
            for j in range(n):
                await raw.emit("new_message", {"id": ids[sid][j], "output": f"tp {j}", "type": "assistant_message",
                                               "name": "raw"}, room=f"session:{sid}")

    t0 = time.perf_counter()
    await asyncio.gather(*(feed(c) for c, _ in targets))
    sent_s = time.perf_counter() - t0
    done = lambda: all(all(i in rec.at for i in ids[c.session_id]) for c, rec in targets)  # noqa: E731
    await wait_until(done, 60 if path == "worker" else 10)
    got = [sum(1 for i in ids[c.session_id] if i in rec.at) for c, rec in targets]
    last = max((rec.at[i] for c, rec in targets for i in ids[c.session_id] if i in rec.at), default=t0)
    elapsed = last - t0
    total = n * len(targets)
    return {"messages": total, "received": sum(got), "lost": total - sum(got), "publish_s": round(sent_s, 3),
            "elapsed_s": round(elapsed, 3), "msgs_per_s": round(sum(got) / elapsed, 1) if elapsed > 0 else None}


async def run(args, urls: list[str], redis_url: str) -> dict:
    clients, recs = [], []
    for url in [u for u in urls for _ in range(SESSIONS_PER_INSTANCE)]:
        c = ChainlitClient(url)
        recs.append(Received(c))
        await c.connect()
        await c.wait_for(lambda c=c: c.messages(), 15)
        clients.append(c)
    pub = Publisher(redis_url, key_id="bench", key="bench-secret-0123456789", outbox_max=100_000)
    raw = socketio.AsyncRedisManager(redis_url, channel="clscale:sio:all", write_only=True)
    try:
        await pub.send(clients[0].session_id, "warm-up")
        await asyncio.sleep(1.0)
        # Latency: session on instance 1; the worker's message is picked up by its owner wherever it lands.
        lat = await latency(pub, raw, clients[0], recs[0], 100 if args.quick else 500)
        print("latency", json.dumps(lat), flush=True)
        n = 2000 if args.quick else 10_000
        tp = {}
        for path in ("worker", "raw_emit"):
            one = list(zip(clients, recs))[:SESSIONS_PER_INSTANCE]  # the sessions on instance 1
            tp[f"{path}_one_instance"] = await throughput(pub, raw, one, n, path)
            print(path, "one instance", json.dumps(tp[f"{path}_one_instance"]), flush=True)
            await asyncio.sleep(1.0)
            tp[f"{path}_three_instances"] = await throughput(pub, raw, list(zip(clients, recs)), n, path)
            print(path, "three instances", json.dumps(tp[f"{path}_three_instances"]), flush=True)
            await asyncio.sleep(1.0)
        return {"latency": lat, "throughput": tp}
    finally:
        await pub.aclose()
        for c in clients:
            await c.close()


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    lat = report["latency"]
    names = list(lat)
    x = range(len(names))
    ax1.bar([i - 0.2 for i in x], [lat[n]["p50_ms"] for n in names], 0.4, label="p50")
    ax1.bar([i + 0.2 for i in x], [lat[n]["p99_ms"] for n in names], 0.4, label="p99")
    ax1.set_xticks(list(x), names)
    ax1.set_ylabel("ms (publish -> client)")
    ax1.set_title("delivery latency")
    ax1.legend()
    tp = report["throughput"]
    keys = list(tp)
    ax2.bar(range(len(keys)), [tp[k]["msgs_per_s"] or 0 for k in keys],
            color=["tab:blue" if k.startswith("worker") else "tab:gray" for k in keys])
    for i, k in enumerate(keys):
        ax2.text(i, (tp[k]["msgs_per_s"] or 0), f"lost {tp[k]['lost']}", ha="center", va="bottom", fontsize=8)
    ax2.set_xticks(range(len(keys)), [k.replace("_", "\n", 1) for k in keys], fontsize=8)
    ax2.set_ylabel("msgs/s delivered")
    ax2.set_title("sustained throughput")
    fig.suptitle(f"cl-scale worker delivery ({report['note']})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="fewer rounds and messages")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="worker-bench-"))
    shutil.copy(APP, tmp / "app.py")
    subprocess.run([sys.executable, "-c", "import chainlit.config, chainlit.markdown as m; "
                    "m.init_markdown(chainlit.config.config.root)"], cwd=tmp, check=True, capture_output=True)
    redis = RedisServer(tmp).start()
    instances = []
    try:
        env = {"CL_SCALE_WORKER_KEYS": KEYS}
        instances = [Instance(tmp, redis.url, f"inst{i + 1}", env=env).start() for i in range(3)]
        for inst in instances:
            inst.wait_ready()
        results = asyncio.run(run(args, [i.url for i in instances], redis.url))
    finally:
        for inst in instances:
            inst.stop()
        redis.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    lat = results["latency"]
    report = {
        **results,
        "note": "2 cores shared by instances, Redis, publisher and receiving clients; loopback",
        "targets": {
            "p50_ratio_worker_vs_raw": round(lat["worker"]["p50_ms"] / lat["raw_emit"]["p50_ms"], 2),
            "p50_within_2x": lat["worker"]["p50_ms"] <= 2 * lat["raw_emit"]["p50_ms"],
            "one_instance_ge_2000_msgs_s_zero_loss": (results["throughput"]["worker_one_instance"]["msgs_per_s"] or 0)
            >= 2000 and results["throughput"]["worker_one_instance"]["lost"] == 0,
        },
        "quick": args.quick,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (ROOT / "bench" / "worker.json").write_text(json.dumps(report, indent=2))
    plot(report, OUT / "worker.png")
    print(json.dumps(report["targets"], indent=2))


if __name__ == "__main__":
    main()
