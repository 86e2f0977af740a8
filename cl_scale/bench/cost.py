"""``cl-scale bench --cost``: an instance's CPU per chat message, like for like, and its floor.

The main benchmark's CPU row compares one stock instance with three ``cl-scale run`` processes behind
nginx, each holding its share of 5,000 idle clients, and subtracts the idle rate measured before the
burst. This one isolates what a message costs. One Redis, the same echo app, rounds interleaved
(each side first in turn), the instances' own CPU (``/proc``) per message:

- (a) stock ``chainlit run``, one instance: in memory, nothing written anywhere;
- cl-scale, one instance: per message, the journal entry before the handler and the session write
  before the reply — two Redis round trips, the two durability guarantees;
- cl-scale with the journal off, one instance: the session write only;
- cl-scale, three instances with the senders spread over them: the same work split over three
  processes (each pays its own event-loop wake-ups), as in the main table.

Each at one sender (one message at a time) and at ``concurrent`` senders at once. The floor beside
them: the CPU one Redis round trip through redis-py (the instance's client and its options; EVALSHA of
a one-``HSET`` script) costs a process on this machine when its event loop was asleep before it (as an
instance's is between messages), measured here in the benchmark's own process — stock plus two of
those is what a design keeping both guarantees cannot go below with this client.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import shutil
import statistics
import sys
import time
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path

MARK_START, MARK_END = "<!-- bench-cost:start -->", "<!-- bench-cost:end -->"
#: side -> (label, instances, env of the cl-scale instances; None = stock ``chainlit run``)
SIDES = {
    "stock": ("(a) stock chainlit, 1 instance", 1, None),
    "cl-scale": ("cl-scale run, 1 instance", 1, {}),
    "no-journal": ("cl-scale run, journal off, 1 instance", 1, {"CL_SCALE_JOURNAL": "0"}),
    "cl-scale-3": ("3 x cl-scale run, senders spread", 3, {}),
}


def params(quick: bool) -> dict:
    return {"rounds": 2 if quick else 10, "echoes": 10 if quick else 100, "concurrent": 5 if quick else 30,
            "concurrent_echoes": 4 if quick else 20, "round_trips": 300 if quick else 3000, "quick": quick}


async def _round_trip_cpu_ms(redis_url: str, n: int) -> dict:
    """CPU of this process per redis-py EVALSHA round trip (the call, the socket write, the wait, the
    answer's parse) with the client an instance uses (``wire.connect``: socket timeouts, health checks):
    ``idle``, issued from an event loop that was asleep (as an instance's is between messages: CPU of
    a 2 ms sleep then the call, less that of the sleep alone, interleaved), and ``tight``, back to back.
    What each Redis write on a message's path costs its instance at least."""
    from cl_scale.wire.connect import connect

    def cpu() -> float:
        ru = resource.getrusage(resource.RUSAGE_SELF)
        return ru.ru_utime + ru.ru_stime

    client = connect(redis_url)
    try:
        script = client.register_script("redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) return 1")
        call = lambda: script(keys=["cl-scale-bench:rt"], args=["f", "v"])  # noqa: E731
        await call()
        sleep_only = after_sleep = tight = 0.0
        for _ in range(max(1, n // 100)):
            t = cpu()
            for _ in range(100):
                await asyncio.sleep(0.002)
            sleep_only += cpu() - t
            t = cpu()
            for _ in range(100):
                await asyncio.sleep(0.002)
                await call()
            after_sleep += cpu() - t
            t = cpu()
            for _ in range(100):
                await call()
            tight += cpu() - t
        calls = max(1, n // 100) * 100
        return {"idle": max(0.0, after_sleep - sleep_only) / calls * 1000, "tight": tight / calls * 1000}
    finally:
        await client.delete("cl-scale-bench:rt")
        await client.aclose()


async def _echoes(client, prefix: str, n: int, latencies: list[float]) -> None:
    """``n`` echoes one after the other (each waits for its answer)."""
    for i in range(n):
        text = f"{prefix}{i}"
        t = time.perf_counter()
        await client.ask(text, contains=f"echo={text} ", timeout=60)
        latencies.append((time.perf_counter() - t) * 1000)


async def _measure(work: Path, p: dict, log) -> dict:
    from cl_scale.bench.measure import cpu_seconds
    from cl_scale.bench.setups import command_for
    from cl_scale.ops.client import ChainlitClient
    from cl_scale.ops.cluster import ProcessCluster
    from cl_scale.ops.processes import RedisServer, init_chainlit_files

    app = work / "app"
    app.mkdir()
    shutil.copy(resources.files("cl_scale.bench.apps").joinpath("echo.py"), app / "app.py")
    init_chainlit_files(app)
    redis = RedisServer(work).start()
    cluster = ProcessCluster(app, work / "run", redis=redis)
    clients: list = []
    try:
        groups = {}
        for side, (_, count, env) in SIDES.items():
            log(f"starting {side}")
            first = len(cluster.instances)
            if env is None:
                cluster.start(count, prefix=side, command=command_for("stock", redis.url), ready_path="/health")
            else:
                cluster.start(count, prefix=side, env=env)
            groups[side] = cluster.instances[first:]
        redis_pid = redis.proc.pid

        async def senders(side: str, k: int) -> list:
            out = []
            for j in range(k):
                inst = groups[side][j % len(groups[side])]
                c = ChainlitClient(inst.url, reconnection=False)
                clients.append(c)
                await c.connect()
                await c.wait_for(lambda c=c: any("started on" in str(m.get("output")) for m in c.messages()), 30)
                out.append(c)
            return out

        results: dict = {}
        for mode, k, per in (("one", 1, p["echoes"]), ("concurrent", p["concurrent"], p["concurrent_echoes"])):
            conns = {side: await senders(side, k) for side in SIDES}
            cpu = {side: 0.0 for side in SIDES}
            rcpu = {side: 0.0 for side in SIDES}
            lat: dict[str, list[float]] = {side: [] for side in SIDES}
            order = list(SIDES)
            for rnd in range(p["rounds"]):
                log(f"{mode}: round {rnd + 1}/{p['rounds']}")
                for side in order[rnd % len(order):] + order[:rnd % len(order)]:
                    pids = [i.proc.pid for i in groups[side]]
                    before, rbefore = cpu_seconds(pids), cpu_seconds([redis_pid]) if redis_pid else 0.0
                    await asyncio.gather(*(_echoes(c, f"c{rnd}-{j}-", per, lat[side])
                                           for j, c in enumerate(conns[side])))
                    cpu[side] += cpu_seconds(pids) - before
                    rcpu[side] += (cpu_seconds([redis_pid]) - rbefore) if redis_pid else 0.0
            messages = p["rounds"] * k * per
            results[mode] = {side: {"cpu_ms_per_msg": round(cpu[side] * 1000 / messages, 3),
                                    "redis_cpu_ms_per_msg": round(rcpu[side] * 1000 / messages, 3),
                                    "p50_ms": round(statistics.median(lat[side]), 2), "messages": messages}
                             for side in SIDES}
        log("one Redis round trip through redis-py")
        rt = await _round_trip_cpu_ms(redis.url, p["round_trips"])
        results["round_trip_cpu_ms"] = round(rt["idle"], 4)
        results["round_trip_tight_cpu_ms"] = round(rt["tight"], 4)
        return results
    finally:
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
        cluster.stop()
        redis.stop()


def run(out_dir: Path, *, quick: bool = False, log=print) -> dict:
    p = params(quick)
    started = time.time()
    work = out_dir / "out" / "cost-work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    measured = asyncio.run(_measure(work, p, log))
    results = {"generated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "duration_s": round(time.time() - started, 1),
               "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]}, "params": p, **measured}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "cost.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(results, out_dir / "plots" / "cost.png")
    return results


def floor_ms(results: dict, mode: str) -> float:
    """Stock's CPU per message plus the two Redis round trips cl-scale makes per message."""
    return results[mode]["stock"]["cpu_ms_per_msg"] + 2 * results["round_trip_cpu_ms"]


def readme_section(results: dict) -> str:
    p = results["params"]
    one, conc = results["one"], results["concurrent"]
    lines = [f"| instance CPU per chat message | one sender | {p['concurrent']} senders at once | Redis CPU per message |",
             "|---|---|---|---|"]
    for side, (label, _, _) in SIDES.items():
        cells = []
        for mode in (one, conc):
            ratio = "" if side == "stock" else f" ({mode[side]['cpu_ms_per_msg'] / mode['stock']['cpu_ms_per_msg']:.2f}x)"
            cells.append(f"{mode[side]['cpu_ms_per_msg']:.2f} ms{ratio}")
        lines.append(f"| {label} | {cells[0]} | {cells[1]} | {one[side]['redis_cpu_ms_per_msg']:.3f} ms |")
    rt = results["round_trip_cpu_ms"]
    floors = [floor_ms(results, mode) for mode in ("one", "concurrent")]
    lines.append(f"| floor: (a) + 2 Redis round trips from an idle event loop ({rt:.3f} ms each) | {floors[0]:.2f} ms "
                 f"({floors[0] / one['stock']['cpu_ms_per_msg']:.2f}x) | {floors[1]:.2f} ms "
                 f"({floors[1] / conc['stock']['cpu_ms_per_msg']:.2f}x) | |")
    lines += ["", f"_{results['machine']['cpus']} CPUs, {results['generated']}; {p['rounds']} interleaved rounds of "
                  f"{p['echoes']} echoes (one sender) and {p['concurrent']} x {p['concurrent_echoes']} echoes (senders "
                  f"at once) per side{' (quick run)' if p.get('quick') else ''}. Regenerate: `cl-scale bench --cost`._",
              "",
              f"- One sender: cl-scale is {one['cl-scale']['cpu_ms_per_msg'] - floors[0]:+.2f} ms per message from the "
              f"floor; the journal (one of the two writes) costs "
              f"{one['cl-scale']['cpu_ms_per_msg'] - one['no-journal']['cpu_ms_per_msg']:.2f} ms; three processes instead "
              f"of one {conc['cl-scale-3']['cpu_ms_per_msg'] - conc['cl-scale']['cpu_ms_per_msg']:+.2f} ms at "
              f"{p['concurrent']} senders. The same round trip back to back costs "
              f"{results['round_trip_tight_cpu_ms']:.3f} ms: most of a write's cost is waking the process for its answer."]
    return "\n".join(lines)


def plot(results: dict, target: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, mode, title in ((axes[0], "one", "one sender"),
                            (axes[1], "concurrent", f"{results['params']['concurrent']} senders at once")):
        values = [results[mode][side]["cpu_ms_per_msg"] for side in SIDES]
        ax.bar(range(len(SIDES)), values, color=["tab:gray", "tab:red", "tab:orange", "tab:purple"])
        ax.axhline(floor_ms(results, mode), color="black", linestyle="--", label="(a) + 2 Redis round trips")
        ax.set_xticks(range(len(SIDES)), ["stock", "cl-scale", "no journal", "3 x cl-scale"])
        ax.set_title(title)
        ax.legend(loc="lower right")
    axes[0].set_ylabel("instance CPU per chat message (ms)")
    fig.tight_layout()
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target, dpi=110)
    plt.close(fig)
    return target
