"""``cl-scale bench --autogen``: distributed AutoGen group chats into a scaled Chainlit, measured.

Every model token is the wall-clock time at which the agent produced it, so a Chainlit client that
receives it knows the chunk's latency (AutoGen publish -> host -> ``cl-scale autogen`` -> outbox ->
owner instance -> websocket). Rows: AutoGen alone in one process (its ``SingleThreadedAgentRuntime``,
the same manager and agents, a sink that only records: what AutoGen's own single-process sample
costs), then cl-scale with the agents as separate processes on AutoGen's gRPC runtime, 3 instances,
for 1, 10 and 100 concurrent chats. Agents stream at a model-like pace; lost = chunks or turns a
client never received.

Writes ``autogen.json`` and ``plots/autogen.png``; ``--readme`` regenerates the README block.
"""


import asyncio
import json
import os
import shutil
import signal
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from cl_scale.bench.measure import summary

MARK_START, MARK_END = "<!-- bench-autogen:start -->", "<!-- bench-autogen:end -->"
KEY = "bench:autogen-bench-key-0123456789"
APP = """import chainlit as cl


@cl.on_chat_start
async def start():
    await cl.Message(content="ready", author="System").send()


@cl.on_message
async def on_message(message: cl.Message):
    pass
"""


def params(quick: bool) -> dict:
    if quick:
        return {"chats": [1, 3], "rounds": 2, "tokens": 5, "pace_s": 0.02, "quick": True}
    return {"chats": [1, 10, 100], "rounds": 3, "tokens": 20, "pace_s": 0.02}


# --------------------------------------------------------------------------- the agents' side


def stamp_client(tokens: int, pace: float):
    """A model that streams ``tokens`` tokens, each its own production time, ``pace`` seconds apart."""
    from autogen_core.models import CreateResult, RequestUsage
    from autogen_ext.models.replay import ReplayChatCompletionClient

    class StampClient(ReplayChatCompletionClient):
        async def create_stream(self, messages, **kwargs):
            parts = []
            for _ in range(tokens):
                if pace:
                    await asyncio.sleep(pace)
                parts.append(f"{time.time():.6f} ")
                yield parts[-1]
            yield CreateResult(finish_reason="stop", content="".join(parts), cached=False,
                               usage=RequestUsage(prompt_tokens=0, completion_tokens=tokens))

    return lambda: StampClient(["unused"])


async def register(runtime, roles, p: dict) -> None:
    """The manager and/or the two agents on ``runtime`` (any AutoGen runtime)."""
    from autogen_core import TypeSubscription

    from cl_scale.integrations.autogen import GROUP_TOPIC, MANAGER_TYPE, GroupChatAgent, GroupChatManager

    for role in roles:
        if role == "manager":
            await GroupChatManager.register(runtime, MANAGER_TYPE, lambda: GroupChatManager(
                ["writer", "editor"], rounds=p["rounds"], silence_seconds=60.0))
            await runtime.add_subscription(TypeSubscription(topic_type=GROUP_TOPIC, agent_type=MANAGER_TYPE))
        else:
            factory = stamp_client(p["tokens"], p["pace_s"])
            await GroupChatAgent.register(runtime, role, lambda role=role, factory=factory: GroupChatAgent(
                role.title(), "bench", factory, beat_seconds=5.0))
            await runtime.add_subscription(TypeSubscription(topic_type=role, agent_type=role))


def agent_main(argv: list[str]) -> None:
    """``python -m cl_scale.bench.autogen ROLE HOST PARAMS_JSON``: one agent process of the benchmark."""
    from cl_scale.integrations.autogen import stay_connected

    role, host, p = argv[0], argv[1], json.loads(argv[2])

    async def main() -> None:
        stopping = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, stopping.set)

        async def setup(runtime) -> None:
            await register(runtime, [role], p)
            print(f"{role}: attached", flush=True)

        await stay_connected(host, setup, stopping)

    asyncio.run(main())


# --------------------------------------------------------------------------- measuring


class Tally:
    """Chunk latencies (now - the token's own timestamp) and finished turns, across clients."""

    def __init__(self):
        self.latencies: list[float] = []
        self.chunks: dict[tuple, int] = {}
        self.finished: dict[str, float] = {}  # message id -> when its final text arrived

    def listener(self, session: str):
        def on(event, data) -> None:
            if not isinstance(data, dict) or not str(data.get("id", "")).startswith("ag-"):
                return
            now = time.time()
            if event in ("stream_start", "stream_token"):  # Chainlit sends the first token in stream_start
                try:
                    token = data.get("token", "") if event == "stream_token" else data.get("output", "")
                    self.latencies.append((now - float(token.split()[0])) * 1000)
                except (ValueError, IndexError):
                    return
                key = (session, data["id"])
                self.chunks[key] = self.chunks.get(key, 0) + 1
            elif event == "new_message" and data.get("output"):
                self.finished.setdefault(f"{session}/{data['id']}", now)
        return on


async def _chats(urls: list[str], n: int, p: dict, timeout: float) -> dict:
    from cl_scale.ops.client import ChainlitClient

    tally = Tally()
    clients = []
    try:
        for i in range(n):
            c = ChainlitClient(urls[i % len(urls)], reconnection=False)
            await c.connect(timeout=30)
            await c.wait_for(lambda c=c: any(m.get("output") == "ready" for m in c.messages()), 30)
            c.listeners.append(tally.listener(c.session_id))
            clients.append(c)
        start = time.time()
        await asyncio.gather(*(c.send("go") for c in clients))
        want = n * p["rounds"]
        deadline = time.monotonic() + timeout
        while len(tally.finished) < want and time.monotonic() < deadline:  # bounded
            await asyncio.sleep(0.1)
        elapsed = (max(tally.finished.values()) - start) if tally.finished else None
        got_chunks = sum(min(v, p["tokens"]) for v in tally.chunks.values())
        return {"chats": n, "turns": len(tally.finished), "turns_expected": want,
                "turns_per_s": round(len(tally.finished) / elapsed, 2) if elapsed else None,
                "chunks_per_s": round(got_chunks / elapsed, 1) if elapsed else None,
                "chunk_latency": summary(tally.latencies), "lost_turns": want - len(tally.finished),
                "lost_chunks": want * p["tokens"] - got_chunks}
    finally:
        for c in clients:
            await c.close()


async def _autogen_alone(p: dict) -> dict:
    """One chat on AutoGen's single-process runtime, a sink that records: no Chainlit, no Redis."""
    from autogen_core import (
        MessageContext,
        RoutedAgent,
        SingleThreadedAgentRuntime,
        TopicId,
        TypeSubscription,
        message_handler,
    )

    from cl_scale.integrations.autogen import GROUP_TOPIC, UI_TOPIC, UiEvent, UserTurn

    latencies, ends = [], []

    class Recorder(RoutedAgent):
        def __init__(self):
            super().__init__("records")

        @message_handler
        async def on_event(self, message: UiEvent, ctx: MessageContext) -> None:
            if message.kind == "chunk":
                latencies.append((time.time() - float(message.text.split()[0])) * 1000)
            elif message.kind == "end":
                ends.append(time.time())

    rt = SingleThreadedAgentRuntime()
    await register(rt, ["manager", "writer", "editor"], p)
    await Recorder.register(rt, "recorder", Recorder)
    await rt.add_subscription(TypeSubscription(topic_type=UI_TOPIC, agent_type="recorder"))
    rt.start()
    start = time.time()
    await rt.publish_message(UserTurn(session_id="bench-session-0001", message_id="m1", text="go"),
                             TopicId(GROUP_TOPIC, "bench-session-0001"))
    deadline = time.monotonic() + 60
    while len(ends) < p["rounds"] and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    await rt.stop()
    elapsed = max(ends) - start if ends else None
    return {"chats": 1, "turns": len(ends), "turns_expected": p["rounds"],
            "turns_per_s": round(len(ends) / elapsed, 2) if elapsed else None,
            "chunks_per_s": round(len(latencies) / elapsed, 1) if elapsed else None,
            "chunk_latency": summary(latencies), "lost_turns": p["rounds"] - len(ends),
            "lost_chunks": p["rounds"] * p["tokens"] - len(latencies)}


def run(out_dir: Path, *, quick: bool = False, log=print) -> dict:
    from cl_scale.ops.cluster import ProcessCluster
    from cl_scale.ops.processes import CL_SCALE, Proc, RedisServer, free_port, init_chainlit_files, wait_port

    p = params(quick)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.time()
    work = out_dir / "out" / "autogen-work"
    shutil.rmtree(work, ignore_errors=True)  # the processes' logs say when they are attached: no old ones
    work.mkdir(parents=True)
    (work / "app.py").write_text(APP)
    init_chainlit_files(work)
    log("AutoGen alone (single-process runtime, 1 chat)")
    rows = {"autogen_alone": asyncio.run(_autogen_alone(p))}
    redis = RedisServer(work).start()
    cluster = ProcessCluster(work, work / "cluster", redis=redis,
                             env={"CL_SCALE_WORKER_KEYS": KEY, "CL_SCALE_PUBLISH_REQUESTS": "1"})
    procs: list = []
    try:
        log("starting redis, 3 instances, the AutoGen host, manager, writer, editor and cl-scale autogen")
        cluster.start(3)
        address = f"127.0.0.1:{free_port()}"
        procs.append(Proc([CL_SCALE, "autogen-host", "--address", address], log_path=work / "host.log").start())
        wait_port(int(address.rsplit(":", 1)[1]), 30)
        for role in ("manager", "writer", "editor"):
            procs.append(Proc([sys.executable, "-m", "cl_scale.bench.autogen", role, address, json.dumps(p)],
                              log_path=work / f"{role}.log").start())
        procs.append(Proc([CL_SCALE, "autogen", "--host-address", address, "--redis-url", redis.url],
                          env={"CL_SCALE_WORKER_KEYS": KEY}, log_path=work / "bridge.log").start())
        deadline = time.monotonic() + 60
        while not (all("attached" in proc.log() for proc in procs[1:4]) and "connected" in procs[4].log()):
            if time.monotonic() > deadline:
                raise RuntimeError("the AutoGen processes did not attach: see " + str(work))
            time.sleep(0.2)
        urls = [i.url for i in cluster.instances]
        for n in p["chats"]:
            log(f"{n} concurrent group chats through cl-scale")
            rows[f"cl_scale_{n}"] = asyncio.run(_chats(urls, n, p, timeout=60 + 3 * n))
    finally:
        for proc in reversed(procs):  # the host last: the others would only reconnect to it
            proc.stop()
        cluster.stop()
        redis.stop()
    results = {"generated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "duration_s": round(time.time() - started, 1),
               "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]}, "params": p, "rows": rows}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "autogen.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(results, out_dir / "plots" / "autogen.png")
    return results


# --------------------------------------------------------------------------- report


def _label(key: str) -> str:
    if key == "autogen_alone":
        return "AutoGen alone, one process (1 chat)"
    n = int(key.rsplit("_", 1)[1])
    return f"cl-scale, agents on AutoGen's gRPC runtime ({n} chat{'s' if n > 1 else ''})"


def readme_section(results: dict) -> str:
    p = results["params"]
    lines = ["| | turns/s | chunks/s | chunk latency p50 / p99 | turns received | lost chunks |", "|---|---|---|---|---|---|"]
    for key, r in results["rows"].items():
        lat = r["chunk_latency"]
        lines.append(f"| {_label(key)} | {r['turns_per_s'] or 0:.2f} | {r['chunks_per_s'] or 0:,.0f} | "
                     f"{lat['p50_ms'] or 0:.1f} / {lat['p99_ms'] or 0:.1f} ms | {r['turns']}/{r['turns_expected']} | "
                     f"{r['lost_chunks']} |")
    lines += ["", f"_{results['machine']['cpus']} CPUs, {results['generated']}; {p['rounds']} turns per chat, "
                  f"{p['tokens']} tokens per turn streamed {p['pace_s'] * 1000:.0f} ms apart"
                  f"{' (quick run)' if p.get('quick') else ''}. Regenerate: `cl-scale bench --autogen`._"]
    alone, one = results["rows"].get("autogen_alone"), results["rows"].get("cl_scale_1")
    if alone and one and alone["chunk_latency"]["p50_ms"] and one["chunk_latency"]["p50_ms"]:
        lines += ["", f"- One chat: the chunk latency through cl-scale (separate agent processes, the gRPC host, Redis, "
                      f"the owner instance, the websocket) is {one['chunk_latency']['p50_ms'] - alone['chunk_latency']['p50_ms']:.1f}"
                      f" ms above AutoGen's in-process delivery at p50."]
    return "\n".join(lines)


def plot(results: dict, target: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(results["rows"])
    labels = ["AutoGen alone" if k == "autogen_alone" else k.replace("cl_scale_", "cl-scale ×") for k in keys]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    x = range(len(keys))
    ax1.bar([i - 0.2 for i in x], [results["rows"][k]["chunk_latency"]["p50_ms"] or 0 for k in keys], width=0.4,
            label="p50")
    ax1.bar([i + 0.2 for i in x], [results["rows"][k]["chunk_latency"]["p99_ms"] or 0 for k in keys], width=0.4,
            label="p99")
    ax1.set_xticks(list(x), labels)
    ax1.set_ylabel("ms")
    ax1.set_title("chunk latency: agent -> Chainlit client")
    ax1.legend()
    ax2.bar(list(x), [results["rows"][k]["turns_per_s"] or 0 for k in keys], color="tab:green")
    ax2.set_xticks(list(x), labels)
    ax2.set_ylabel("turns / s")
    ax2.set_title("group chat turns completed per second")
    fig.tight_layout()
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target, dpi=110)
    plt.close(fig)
    return target


if __name__ == "__main__":
    agent_main(sys.argv[1:])
