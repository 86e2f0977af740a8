"""``cl-scale bench --failover``: what a user waits for when things die, and what the journal costs.

- SIGKILL of the instance streaming a reply → the interrupted notice on the instance the client
  reconnects to (default), and → the first token of the re-run answer (``cl_scale.rerun_interrupted``):
  median of ``kills`` runs, measured from the kill;
- a Redis primary SIGKILLed behind three sentinels: until the replica is promoted, and until every
  instance is ready again (``kills`` runs);
- the journal's cost, side by side in one run: two instances on one Redis, journal on and off
  (``CL_SCALE_JOURNAL``), interleaved rounds of echoes (p50, CPU per message) and 2000-token streams.

Writes ``failover.json`` and ``plots/failover.png``; ``--readme`` regenerates the README block.
"""

import asyncio
import json
import os
import shutil
import signal
import statistics
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

MARK_START, MARK_END = "<!-- bench-failover:start -->", "<!-- bench-failover:end -->"
APP = '''import asyncio
import os

import chainlit as cl
import cl_scale

cl_scale.rerun_interrupted = os.environ.get("RERUN") == "1"


@cl.on_chat_start
async def start():
    await cl.Message(content="ready").send()


@cl.on_message
async def on_message(message: cl.Message):
    if message.content.startswith("slow"):
        msg = cl.Message(content="")
        for i in range(60):
            await msg.stream_token(f"s{i} ")
            await asyncio.sleep(0.1)
        await msg.send()
    elif message.content.startswith("stream"):
        msg = cl.Message(content="")
        for i in range(2000):
            await msg.stream_token(f"t{i} ")
        await msg.send()
    else:
        await cl.Message(content=f"echo={message.content}").send()
'''


def params(quick: bool) -> dict:
    return {"kills": 3 if quick else 10, "echo_rounds": 2 if quick else 6, "echoes": 30 if quick else 100,
            "quick": quick}


async def _ready(client, timeout: float = 30) -> None:
    await client.wait_for(lambda: any(m.get("output") == "ready" for m in client.messages()), timeout)


async def _kill_mid_reply(work: Path, rerun: bool) -> float:
    """One run: seconds from SIGKILL to the notice (or the re-run's first token) on the survivor."""
    from cl_scale.ops.client import ChainlitClient
    from cl_scale.ops.cluster import ProcessCluster
    from cl_scale.ops.processes import RedisServer

    redis = RedisServer(work).start()
    cluster = ProcessCluster(work, work / f"c-{time.monotonic_ns()}", redis=redis, env={"RERUN": "1" if rerun else "0"})
    try:
        a, b = cluster.start(2).instances
        client = ChainlitClient(a.url, reconnection=False)
        await client.connect()
        await _ready(client)
        await client.send("slow")
        await client.wait_for(lambda: client.counts.get("stream_token", 0) >= 5, 30)
        killed = time.monotonic()
        a.kill()
        await client.close()
        again = ChainlitClient(b.url, session_id=client.session_id, thread_id=client.thread_id, reconnection=False)
        await again.connect()
        try:
            if rerun:
                await again.wait_for(lambda: again.counts.get("stream_start", 0) >= 1, 30)
            else:
                await again.wait_for(lambda: any("was interrupted" in str(m.get("output")) for m in again.messages()), 30)
            return time.monotonic() - killed
        finally:
            await again.close()
    finally:
        cluster.stop()
        redis.stop()


def _sentinel_failover(work: Path) -> tuple[float, float]:
    from cl_scale.ops.cluster import ProcessCluster
    from cl_scale.ops.processes import SentinelGroup, http_status

    group = SentinelGroup(work / f"redis-{time.monotonic_ns()}").start()
    cluster = ProcessCluster(work, work / f"s-{time.monotonic_ns()}", redis_url=group.url)
    try:
        instances = cluster.start(2).instances
        killed = time.monotonic()
        group.kill_primary()
        promoted = None
        while time.monotonic() - killed < 60:  # bounded
            if promoted is None and group.primary_port() == group.replica.port:
                promoted = time.monotonic() - killed
            if promoted is not None and all(http_status(i.url + "/readyz") == 200 for i in instances):
                return promoted, time.monotonic() - killed
            time.sleep(0.05)
        raise RuntimeError("the failover did not complete in 60 s")
    finally:
        cluster.stop()
        group.stop()


async def _journal_cost(work: Path, p: dict) -> dict:
    import psutil

    from cl_scale.ops.client import ChainlitClient
    from cl_scale.ops.cluster import ProcessCluster
    from cl_scale.ops.processes import RedisServer

    redis = RedisServer(work).start()
    cluster = ProcessCluster(work, work / "journal", redis=redis)
    try:
        cluster.start(1, env={"CL_SCALE_JOURNAL": "1"}, prefix="on")
        cluster.start(1, env={"CL_SCALE_JOURNAL": "0"}, prefix="off")
        sides = {}
        for name, inst in zip(("on", "off"), cluster.instances):
            client = ChainlitClient(inst.url, reconnection=False)
            await client.connect()
            await _ready(client)
            sides[name] = (client, psutil.Process(inst.proc.pid))
        lat = {"on": [], "off": []}
        cpu = {"on": 0.0, "off": 0.0}
        streams = {"on": [], "off": []}
        for rnd in range(p["echo_rounds"]):
            for name in (("on", "off") if rnd % 2 == 0 else ("off", "on")):  # interleaved, alternating first
                client, proc = sides[name]
                before = sum(proc.cpu_times()[:2])
                for i in range(p["echoes"]):
                    t = time.perf_counter()
                    await client.ask(f"e{rnd}-{i}", contains=f"echo=e{rnd}-{i}", timeout=30)
                    lat[name].append((time.perf_counter() - t) * 1000)
                cpu[name] += sum(proc.cpu_times()[:2]) - before
                since = len(client.events)
                t = time.perf_counter()
                await client.send("stream")
                await client.wait_for(lambda c=client, s=since: any(
                    e == "new_message" and isinstance(d, dict) and str(d.get("output", "")).startswith("t0 ")
                    for _, e, d in c.events[s:]), 60)
                streams[name].append(time.perf_counter() - t)
        for client, _ in sides.values():
            await client.close()
        n = p["echo_rounds"] * p["echoes"]
        return {name: {"echo_p50_ms": round(statistics.median(lat[name]), 3),
                       "cpu_per_message_ms": round(cpu[name] / n * 1000, 3),
                       "stream_2000_s": round(statistics.median(streams[name]), 3)} for name in ("on", "off")}
    finally:
        cluster.stop()
        redis.stop()


def run(out_dir: Path, *, quick: bool = False, log=print) -> dict:
    from cl_scale.ops.processes import init_chainlit_files

    p = params(quick)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.time()
    work = out_dir / "out" / "failover-work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    (work / "app.py").write_text(APP)
    init_chainlit_files(work)
    runs: dict[str, list[float]] = {"notice_s": [], "rerun_first_token_s": [], "promoted_s": [], "ready_s": []}
    for i in range(p["kills"]):
        log(f"SIGKILL mid-reply {i + 1}/{p['kills']}: notice, then re-run")
        runs["notice_s"].append(round(asyncio.run(_kill_mid_reply(work, rerun=False)), 3))
        runs["rerun_first_token_s"].append(round(asyncio.run(_kill_mid_reply(work, rerun=True)), 3))
    if shutil.which("redis-sentinel"):
        for i in range(p["kills"]):
            log(f"Redis primary SIGKILL behind sentinels {i + 1}/{p['kills']}")
            promoted, ready = _sentinel_failover(work)
            runs["promoted_s"].append(round(promoted, 3))
            runs["ready_s"].append(round(ready, 3))
    log("journal on/off, side by side")
    cost = asyncio.run(_journal_cost(work, p))
    results = {"generated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "duration_s": round(time.time() - started, 1),
               "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]}, "params": p,
               "runs": runs, "medians": {k: (round(statistics.median(v), 3) if v else None) for k, v in runs.items()},
               "journal": cost}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "failover.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(results, out_dir / "plots" / "failover.png")
    return results


def readme_section(results: dict) -> str:
    m, j, p = results["medians"], results["journal"], results["params"]
    lines = ["| after a SIGKILL | median (s) |", "|---|---|",
             f"| instance streaming a reply killed → interrupted notice (client reconnecting at once to a survivor) "
             f"| {m['notice_s']:.2f} |",
             f"| … → first token of the re-run answer (`rerun_interrupted`) | {m['rerun_first_token_s']:.2f} |"]
    if m.get("promoted_s") is not None:
        lines += [f"| Redis primary killed → replica promoted by Sentinel | {m['promoted_s']:.2f} |",
                  f"| … → every instance ready again | {m['ready_s']:.2f} |"]
    on, off = j["on"], j["off"]
    lines += ["", "| journal | on | off | on / off |", "|---|---|---|---|"]
    for key, label in (("echo_p50_ms", "echo round trip p50 (ms)"), ("cpu_per_message_ms", "CPU per echo (ms)"),
                       ("stream_2000_s", "2000-token stream (s)")):
        lines.append(f"| {label} | {on[key]:.2f} | {off[key]:.2f} | {on[key] / off[key]:.2f} |")
    lines += ["", f"_{results['machine']['cpus']} CPUs, {results['generated']}; {p['kills']} kills each; journal: "
                  f"{p['echo_rounds']} interleaved rounds of {p['echoes']} echoes and one stream per side"
                  f"{' (quick run)' if p.get('quick') else ''}. Regenerate: `cl-scale bench --failover`._"]
    return "\n".join(lines)


def plot(results: dict, target: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = {k: v for k, v in results["runs"].items() if v}
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.boxplot(list(runs.values()))
    ax.set_xticks(range(1, len(runs) + 1), list(runs))
    ax.set_ylabel("seconds after SIGKILL")
    ax.set_title("what a user waits for when something dies")
    fig.tight_layout()
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target, dpi=110)
    plt.close(fig)
    return target
