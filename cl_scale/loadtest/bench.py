"""``cl-scale bench``: the same workload against three setups, on this machine, in one run.

(a) ``stock``        stock ``chainlit run``, one instance (in-memory Socket.IO manager);
(b) ``stock-redis``  3 stock Chainlit instances with python-socketio's ``AsyncRedisManager``, nginx ip_hash;
(c) ``cl-scale``     3 ``cl-scale run`` instances, nginx ip_hash (cl-scale's rendered config).

Figures:
* echo round trip p50/p99 and a 2000-token stream — one client on instance 1 of each setup (so only
  the server side differs), all setups measured in rotating rounds so machine noise hits them alike;
* worker push latency p50/p99 (receive time − send timestamp): (c) through the worker SDK; (b) what a
  user would otherwise do, a raw ``AsyncRedisManager(write_only=True)`` emit of ``new_message`` to the
  socket (it bypasses Chainlit: not persisted, not in chat context, lost if the socket moved); (a) n/a;
* concurrent websocket clients held with zero failures (through the balancer for (b)/(c), loopback
  sources 127.0.N.1 so ip_hash spreads them), held across Engine.IO pings;
* memory per idle connection: RSS delta of the instance processes / clients;
* CPU per message: CPU time delta of the instance processes (and Redis, separately) / messages.

Writes ``results.json`` and ``plots/*.png`` under the output directory (default: the source tree's
``bench/``).
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

from cl_scale.errors import UserError
from cl_scale.loadtest import APP

PY = sys.executable
CHAINLIT = str(Path(PY).parent / "chainlit")
SETUPS = ("stock", "stock-redis", "cl-scale")
LABELS = {"stock": "(a) stock chainlit, 1 instance", "stock-redis": "(b) 3 x stock AsyncRedisManager",
          "cl-scale": "(c) 3 x cl-scale run"}
WORKER_KEY = ("bench", "bench-secret-" + "x" * 20)
MARK_START, MARK_END = "<!-- bench:start -->", "<!-- bench:end -->"


def default_out() -> Path:
    source_bench = Path(__file__).resolve().parents[2] / "bench"
    return source_bench if source_bench.is_dir() else Path.cwd() / "bench"


def params(quick: bool, clients: int | None) -> dict:
    if quick:
        p = {"echoes": 20, "streams": 1, "tokens": 2000, "pushes": 10, "clients": 30, "hold_s": 2.0,
             "cpu_messages": 60, "cpu_senders": 6}
    else:
        p = {"echoes": 500, "streams": 10, "tokens": 2000, "pushes": 300, "clients": 2000, "hold_s": 35.0,
             "cpu_messages": 3000, "cpu_senders": 30}
    if clients is not None:
        p["clients"] = clients
    p["quick"] = quick
    return p


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


# -- processes ------------------------------------------------------------------------------------
def _tree(pid: int):
    import psutil

    try:
        proc = psutil.Process(pid)
        return [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return []


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        for p in _tree(pid):
            try:
                total += p.memory_info().rss
            except Exception:  # noqa: BLE001 - a child that just exited
                pass
    return total


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        for p in _tree(pid):
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except Exception:  # noqa: BLE001
                pass
    return total


class Setup:
    def __init__(self, name: str, instances: list, nginx=None):
        self.name, self.instances, self.nginx = name, instances, nginx

    @property
    def direct_url(self) -> str:
        return self.instances[0].url

    @property
    def entry_url(self) -> str:
        return self.nginx.url if self.nginx else self.instances[0].url

    @property
    def pids(self) -> list[int]:
        return [i.proc.pid for i in self.instances]

    def stop(self) -> None:
        if self.nginx:
            self.nginx.stop()
        for inst in self.instances:
            inst.kill()


def start_setup(name: str, tmp: Path, redis, clients: int = 0) -> Setup:
    from cl_scale.cluster.procs import Instance, Nginx

    app_dir = tmp / name
    app_dir.mkdir()
    shutil.copy(APP, app_dir / "app.py")
    subprocess.run([PY, "-c", "import chainlit.config, chainlit.markdown as m; m.init_markdown(chainlit.config.config.root)"],
                   cwd=app_dir, check=True, capture_output=True, timeout=120)
    count = 1 if name == "stock" else 3
    instances = []
    for i in range(count):
        inst = Instance(app_dir, redis.url, f"{name}{i + 1}", env={"CL_SCALE_WORKER_KEYS": ":".join(WORKER_KEY)})
        if name == "stock":
            inst.command = [CHAINLIT, "run", "app.py", "--headless", "--host", "127.0.0.1", "--port", str(inst.port)]
        elif name == "stock-redis":
            inst.command = [PY, "-m", "cl_scale.loadtest.stock_redis_chainlit", "app.py"]
            inst.env.update({"REDIS_URL": redis.url, "CHAINLIT_PORT": str(inst.port), "CHAINLIT_HOST": "127.0.0.1"})
        instances.append(inst.start())
    setup = Setup(name, instances)
    try:
        for inst in instances:
            inst.wait_ready(timeout=90, path="/readyz" if name == "cl-scale" else "/health")
        if count > 1:
            # Each proxied websocket holds 2 nginx connections; one worker may accept most of them.
            worker_connections = max(4096, 2 * clients + 512)
            setup.nginx = Nginx(tmp / f"nginx-{name}", [f"127.0.0.1:{i.port}" for i in instances],
                                sets=[f"nginx.workerConnections={worker_connections}"]).start()
    except BaseException:
        setup.stop()
        raise
    return setup


# -- latency: echo, stream, push ----------------------------------------------------------------------
async def _started(client):
    await client.connect(timeout=30)
    await client.wait_for(lambda: client.messages(), 30)
    return client


async def echo_once(client, tag: str) -> float:
    t0 = time.perf_counter()
    await client.ask(tag, contains=f"echo={tag} ", timeout=30)
    return (time.perf_counter() - t0) * 1000


async def stream_once(client, tokens: int) -> float:
    seen = lambda: client.counts.get("stream_start", 0) + client.counts.get("stream_token", 0)  # noqa: E731
    target = seen() + tokens
    t0 = time.perf_counter()
    await client.send(f"stream {tokens}")
    await client.wait_for(lambda: seen() >= target, 180)
    return time.perf_counter() - t0


async def measure_latency(setups: dict[str, Setup], redis_url: str, p: dict) -> dict:
    from cl_scale.client import ChainlitClient

    clients = {}
    for name, setup in setups.items():
        client = await _started(ChainlitClient(setup.direct_url))
        for i in range(10):  # warm-up
            await client.ask(f"w{i}", contains=f"echo=w{i} ", timeout=30)
        clients[name] = client
    names = list(setups)
    rtts = {n: [] for n in names}
    streams = {n: [] for n in names}
    rounds = 10
    per_round = max(1, p["echoes"] // rounds)
    try:
        for r in range(rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                for i in range(per_round):
                    rtts[name].append(await echo_once(clients[name], f"r{r}e{i}"))
        for s in range(p["streams"]):
            for name in names[s % len(names):] + names[:s % len(names)]:
                streams[name].append(await stream_once(clients[name], p["tokens"]))
                await asyncio.sleep(0.5)  # let the final new_message land
        pushes = await measure_push({n: clients[n] for n in names if n != "stock"}, redis_url, p["pushes"])
    finally:
        for client in clients.values():
            await client.close()
    return {n: {"echo_p50_ms": statistics.median(rtts[n]), "echo_p99_ms": percentile(rtts[n], 0.99),
                "echo_samples": len(rtts[n]), "stream_s": statistics.median(streams[n]) if streams[n] else None,
                "stream_samples": len(streams[n]), **pushes.get(n, {"push_p50_ms": None, "push_p99_ms": None,
                                                                     "push_samples": 0, "push_path": "n/a"})}
            for n in names}


async def measure_push(clients: dict, redis_url: str, count: int) -> dict:
    """Timestamped messages from outside the app into one chat; latency = receive time - timestamp."""
    import socketio

    from cl_scale.worker import Publisher

    out = {}
    for name, client in clients.items():
        samples = []
        if name == "cl-scale":
            pub = Publisher(redis_url, key_id=WORKER_KEY[0], key=WORKER_KEY[1])

            async def send(text, pub=pub, client=client):
                await pub.send(client.session_id, text, author="Bench")

            close, path = pub.aclose, "cl_scale.worker.Publisher.send (SDK -> owner -> Message.send)"
        else:
            mgr = socketio.AsyncRedisManager(redis_url, write_only=True)
            sid = client.sio.get_sid("/")

            async def send(text, mgr=mgr, sid=sid):
                await mgr.emit("new_message", {"id": str(uuid.uuid4()), "threadId": "", "parentId": None,
                                               "name": "Bench", "type": "assistant_message", "output": text,
                                               "createdAt": datetime.now(timezone.utc).isoformat()},
                               to=sid, namespace="/")

            async def close(mgr=mgr):
                if getattr(mgr, "redis", None) is not None:
                    await mgr.redis.aclose()

            path = "socketio.AsyncRedisManager(write_only=True).emit('new_message', to=sid) (bypasses Chainlit)"
        try:
            for i in range(count):
                tag = f"push-{i}-"
                start = len(client.events)
                await send(f"{tag} {time.time():.6f}")
                at_mono = await client.wait_for(lambda: next((t for t, e, d in client.events[start:]
                                                              if e == "new_message" and isinstance(d, dict)
                                                              and str(d.get("output", "")).startswith(tag + " ")),
                                                             None), 30)
                # events carry monotonic times: convert the receive instant back to wall clock.
                received = time.time() - (time.monotonic() - at_mono)
                sent = float(next(str(d["output"]) for t, e, d in client.events[start:]
                                  if e == "new_message" and isinstance(d, dict)
                                  and str(d.get("output", "")).startswith(tag + " ")).split()[1])
                samples.append((received - sent) * 1000)
        finally:
            await close()
        out[name] = {"push_p50_ms": statistics.median(samples), "push_p99_ms": percentile(samples, 0.99),
                     "push_samples": len(samples), "push_path": path}
    return out


# -- capacity: clients held, memory per connection, CPU per message ---------------------------------------
class RawClient:
    """A light Chainlit websocket client (aiohttp, Engine.IO framing) for thousands of idle sessions."""

    def __init__(self, http, url: str):
        self.http, self.url, self.session_id = http, url, str(uuid.uuid4())
        self.ws = None
        self.reader = None
        self.closed_by_server = False
        self.replies: asyncio.Queue = asyncio.Queue()

    async def connect(self) -> None:
        async with self.http.post(f"{self.url}/set-session-cookie", json={"session_id": self.session_id}) as resp:
            if resp.status != 200:
                raise ConnectionError(f"set-session-cookie: HTTP {resp.status}")
        self.ws = await self.http.ws_connect(f"{self.url}/ws/socket.io/?EIO=4&transport=websocket",
                                             headers={"Cookie": f"X-Chainlit-Session-id={self.session_id}"},
                                             autoping=True, heartbeat=None)
        opening = await self.ws.receive_str()
        if not opening.startswith("0"):
            raise ConnectionError(f"Engine.IO open: {opening[:60]}")
        await self.ws.send_str("40" + json.dumps({"clientType": "webapp", "sessionId": self.session_id,
                                                  "threadId": None, "userEnv": "{}", "chatProfile": None}))
        while True:
            packet = await self.ws.receive_str()
            if packet == "2":
                await self.ws.send_str("3")
            elif packet.startswith("40"):
                break
            elif packet.startswith("44"):
                raise ConnectionError(f"refused: {packet[:80]}")
        await self.ws.send_str('42["connection_successful"]')
        while True:  # on_chat_start's greeting: the session really runs
            packet = await self.ws.receive_str()
            if packet == "2":
                await self.ws.send_str("3")
            elif packet.startswith('42["new_message"'):
                break
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        import aiohttp

        try:
            async for msg in self.ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    break
                if msg.data == "2":
                    await self.ws.send_str("3")
                elif msg.data.startswith('42["new_message"'):
                    self.replies.put_nowait(msg.data)
        except Exception:  # noqa: BLE001
            pass
        self.closed_by_server = True

    async def ask(self, text: str, timeout: float = 60) -> None:
        await self.ws.send_str("42" + json.dumps(["client_message", {"message": {
            "id": str(uuid.uuid4()), "threadId": "", "output": text, "name": "User", "type": "user_message",
            "createdAt": datetime.now(timezone.utc).isoformat()}, "fileReferences": []}]))
        deadline = time.monotonic() + timeout
        while True:
            data = await asyncio.wait_for(self.replies.get(), max(0.01, deadline - time.monotonic()))
            if f"echo={text} " in data:
                return

    async def close(self) -> None:
        if self.reader:
            self.reader.cancel()
        if self.ws is not None:
            try:
                await asyncio.wait_for(self.ws.close(), 2)
            except Exception:  # noqa: BLE001
                pass


def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


async def measure_capacity(setup: Setup, redis_pid: int | None, p: dict, spread: int = 60) -> dict:
    """Hold ``p['clients']`` idle sessions, then a burst of echoes; RSS and CPU deltas of the instances."""
    import aiohttp

    n, url = p["clients"], setup.entry_url
    spread = spread if setup.nginx else 1
    sessions = []
    for k in range(spread):
        src = f"127.0.{k + 1}.1" if setup.nginx else None
        conn = aiohttp.TCPConnector(limit=0, force_close=True, local_addr=(src, 0) if src else None)
        sessions.append(aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=None, connect=30,
                                                                                          sock_read=60)))
    clients = [RawClient(sessions[i % spread], url) for i in range(n)]
    await asyncio.sleep(1.0)
    rss_before = rss_bytes(setup.pids)
    errors: dict[str, int] = {}
    connected: list[RawClient] = []
    gate = asyncio.Semaphore(40)
    t0 = time.perf_counter()

    async def one(c: RawClient):
        async with gate:
            try:
                await asyncio.wait_for(c.connect(), 60)
                connected.append(c)
            except Exception as exc:  # noqa: BLE001
                key = f"{type(exc).__name__}: {str(exc)[:80]}"
                errors[key] = errors.get(key, 0) + 1

    try:
        await asyncio.gather(*(one(c) for c in clients))
        connect_s = time.perf_counter() - t0
        await asyncio.sleep(p["hold_s"])  # idle across Engine.IO pings (25 s interval in the full run)
        dropped = sum(1 for c in connected if c.closed_by_server)
        rss_after = rss_bytes(setup.pids)
        # CPU per message: a burst of echoes from a few of the held sessions.
        senders = [c for c in connected if not c.closed_by_server][:p["cpu_senders"]]
        per_sender = max(1, p["cpu_messages"] // max(1, len(senders)))
        cpu0, rcpu0 = cpu_seconds(setup.pids), cpu_seconds([redis_pid]) if redis_pid else 0.0
        send_errors = 0

        async def chat(c: RawClient, k: int):
            nonlocal send_errors
            for i in range(per_sender):
                try:
                    await c.ask(f"cpu{k}-{i}")
                except Exception:  # noqa: BLE001
                    send_errors += 1

        t1 = time.perf_counter()
        await asyncio.gather(*(chat(c, k) for k, c in enumerate(senders)))
        burst_s = time.perf_counter() - t1
        messages = per_sender * len(senders)
        cpu = cpu_seconds(setup.pids) - cpu0
        rcpu = (cpu_seconds([redis_pid]) - rcpu0) if redis_pid else 0.0
    finally:
        await asyncio.gather(*(c.close() for c in connected), return_exceptions=True)
        for s in sessions:
            await s.close()
    failures = sum(errors.values()) + dropped
    return {"nginx_errors": nginx_errors(setup), 
        "clients_attempted": n, "clients_held": len(connected) - dropped, "client_failures": failures,
        "client_errors": errors, "connect_s": round(connect_s, 2), "hold_s": p["hold_s"],
        "rss_before_mb": round(rss_before / 2**20, 1), "rss_after_mb": round(rss_after / 2**20, 1),
        "mem_per_conn_kb": round((rss_after - rss_before) / max(1, len(connected)) / 1024, 1),
        "cpu_messages": messages, "cpu_message_errors": send_errors,
        "cpu_ms_per_msg": round(cpu * 1000 / max(1, messages), 3),
        "redis_cpu_ms_per_msg": round(rcpu * 1000 / max(1, messages), 3),
        "burst_msgs_per_s": round(messages / burst_s, 1) if burst_s else None,
    }


def nginx_errors(setup: Setup) -> dict[str, int]:
    """Distinct nginx error-log messages (client/address details stripped), to show where a limit is."""
    import re

    if not setup.nginx:
        return {}
    log = setup.nginx.prefix / "logs" / "error.log"
    counts: dict[str, int] = {}
    for line in (log.read_text(errors="replace").splitlines() if log.exists() else []):
        m = re.search(r"\[(warn|error|alert|crit|emerg)\] [0-9#]+: (?:\*\d+ )?([^,]*)", line)
        if m:
            counts[m.group(2)[:120]] = counts.get(m.group(2)[:120], 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1])[:5])


# -- run -----------------------------------------------------------------------------------------------
def run(out_dir: Path, *, quick: bool = False, clients: int | None = None, only: list[str] | None = None,
        log=print) -> dict:
    from cl_scale.cluster.procs import RedisServer

    names = [n for n in SETUPS if not only or n in only]
    if not names:
        raise UserError(f"no setup selected: choose from {', '.join(SETUPS)}")
    p = params(quick, clients)
    fd_limit = raise_fd_limit()
    if fd_limit < p["clients"] * 3 + 256:
        raise UserError(f"--clients {p['clients']}: open-file limit {fd_limit} is too low (need ~3 per client); "
                        "raise `ulimit -n`")
    started = time.time()
    setups: dict[str, Setup] = {}
    with tempfile.TemporaryDirectory(prefix="cl-scale-bench-") as tmpdir:
        tmp = Path(tmpdir)
        redis = RedisServer(tmp).start()
        try:
            for name in names:
                log(f"starting {LABELS[name]}")
                setups[name] = start_setup(name, tmp, redis, p["clients"])
            log("measuring echo / stream / push latency")
            latency = asyncio.run(measure_latency(setups, redis.url, p))
            capacity = {}
            for name in names:
                log(f"holding {p['clients']} clients on {LABELS[name]}")
                capacity[name] = asyncio.run(measure_capacity(setups[name], redis.proc.pid, p))
                log(f"  {name}: {json.dumps(capacity[name])}")
        finally:
            for setup in setups.values():
                setup.stop()
            redis.stop()
    report = {
        "generated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "duration_s": round(time.time() - started, 1),
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0], "platform": sys.platform},
        "params": p,
        "labels": {n: LABELS[n] for n in names},
        "notes": [
            "echo/stream/push: one client on instance 1 of each setup (no balancer hop), setups measured in "
            "rotating rounds; capacity: through nginx ip_hash for (b)/(c), loopback sources 127.0.N.1",
            "push for (b) is a raw AsyncRedisManager emit to the socket id: no persistence, no chat context, "
            "no retry, lost if the user reconnected elsewhere; (a) has no outside path (n/a)",
            "memory per connection = RSS delta of the instance processes / clients held; CPU per message = "
            "instance CPU time delta / echo messages (Redis CPU reported separately; nginx not counted)",
        ],
        "setups": {n: {"instances": len(setups[n].instances), **latency[n], **capacity[n]} for n in names},
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(report, out_dir / "plots")
    return report


# -- outputs --------------------------------------------------------------------------------------------
ROWS = [
    ("echo round trip p50", "echo_p50_ms", "{:.1f} ms"),
    ("echo round trip p99", "echo_p99_ms", "{:.1f} ms"),
    ("stream 2000 tokens", "stream_s", "{:.2f} s"),
    ("worker push p50", "push_p50_ms", "{:.1f} ms"),
    ("worker push p99", "push_p99_ms", "{:.1f} ms"),
    ("websocket clients held (0 failures)", None, None),
    ("memory per idle connection", "mem_per_conn_kb", "{:.0f} KB"),
    ("CPU per message (instances)", "cpu_ms_per_msg", "{:.2f} ms"),
    ("CPU per message (Redis)", "redis_cpu_ms_per_msg", "{:.2f} ms"),
]


def _cell(setup: dict, key: str | None, fmt: str | None) -> str:
    if key is None:
        held, tried, fails = setup.get("clients_held"), setup.get("clients_attempted"), setup.get("client_failures")
        return f"{held}/{tried}" + ("" if not fails else f" ({fails} failed)")
    value = setup.get(key)
    return "n/a" if value is None else fmt.format(value)


def markdown_table(report: dict) -> str:
    names = list(report["setups"])
    lines = ["| | " + " | ".join(report.get("labels", {}).get(n, n) for n in names) + " |",
             "|---|" + "---|" * len(names)]
    for label, key, fmt in ROWS:
        lines.append(f"| {label} | " + " | ".join(_cell(report["setups"][n], key, fmt) for n in names) + " |")
    p, m = report["params"], report["machine"]
    lines.append("")
    lines.append(f"_{m['cpus']} CPUs, Python {m['python']}, {report['generated']}; {p['echoes']} echoes, "
                 f"{p['streams']} streams, {p['pushes']} pushes, {p['clients']} clients"
                 f"{' (quick run)' if p.get('quick') else ''}. Regenerate: `cl-scale bench` (`make bench`)._")
    return "\n".join(lines)


def update_readme(readme: Path, results: Path) -> None:
    if not results.is_file():
        raise UserError(f"{results}: no results yet; run `cl-scale bench` first")
    if not readme.is_file():
        raise UserError(f"--readme {readme}: no such file")
    text = readme.read_text()
    if MARK_START not in text or MARK_END not in text or text.index(MARK_START) > text.index(MARK_END):
        raise UserError(f"{readme}: needs the markers {MARK_START} and {MARK_END} (in that order)")
    try:
        report = json.loads(results.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{results}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    head, rest = text.split(MARK_START, 1)
    _, tail = rest.split(MARK_END, 1)
    readme.write_text(f"{head}{MARK_START}\n{markdown_table(report)}\n{MARK_END}{tail}")


def plot(report: dict, plots: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots.mkdir(parents=True, exist_ok=True)
    names = list(report["setups"])
    short = {"stock": "(a) stock", "stock-redis": "(b) stock Redis mgr", "cl-scale": "(c) cl-scale"}
    labels = [short.get(n, n) for n in names]
    data = report["setups"]
    x = list(range(len(names)))
    written = []

    def fmt(v) -> str:
        return "n/a" if v is None else (f"{v:.0f}" if abs(v) >= 1000 else f"{v:.3g}")

    def bars(ax, key, title, unit, color=None):
        vals = [data[n].get(key) for n in names]
        ax.bar(labels, [v or 0 for v in vals], color=color)
        for i, v in enumerate(vals):
            ax.annotate(fmt(v), (i, v or 0), ha="center", va="bottom", fontsize=8)
        ax.set_title(title)
        ax.set_ylabel(unit)
        ax.tick_params(axis="x", labelsize=8)

    def pair(ax, k50, k99, title):
        for off, key, lab in ((-0.2, k50, "p50"), (0.2, k99, "p99")):
            vals = [data[n].get(key) for n in names]
            ax.bar([i + off for i in x], [v or 0 for v in vals], 0.4, label=lab)
            for i, v in enumerate(vals):
                ax.annotate(fmt(v), (i + off, v or 0), ha="center", va="bottom",
                            fontsize=8)
        ax.set_xticks(x, labels, fontsize=8)
        ax.set_ylabel("ms")
        ax.set_title(title)
        ax.legend()

    specs = [
        ("echo.png", lambda ax: pair(ax, "echo_p50_ms", "echo_p99_ms", "echo round trip")),
        ("stream.png", lambda ax: bars(ax, "stream_s", f"stream {report['params']['tokens']} tokens", "seconds",
                                       "tab:green")),
        ("push.png", lambda ax: pair(ax, "push_p50_ms", "push_p99_ms", "worker push latency")),
        ("clients.png", lambda ax: bars(ax, "clients_held", f"websocket clients held (of "
                                        f"{report['params']['clients']})", "clients", "tab:purple")),
        ("memory.png", lambda ax: bars(ax, "mem_per_conn_kb", "memory per idle connection", "KB", "tab:orange")),
        ("cpu.png", lambda ax: bars(ax, "cpu_ms_per_msg", "instance CPU per message", "ms", "tab:red")),
    ]
    fig_all, axes = plt.subplots(2, 3, figsize=(15, 8))
    for (fname, draw), ax in zip(specs, axes.flat):
        fig, single = plt.subplots(figsize=(6, 4))
        draw(single)
        fig.tight_layout()
        fig.savefig(plots / fname, dpi=100)
        plt.close(fig)
        written.append(plots / fname)
        draw(ax)
    fig_all.suptitle(f"cl-scale bench ({report['machine']['cpus']} CPUs"
                     f"{', quick run' if report['params'].get('quick') else ''})")
    fig_all.tight_layout()
    fig_all.savefig(plots / "summary.png", dpi=100)
    plt.close(fig_all)
    written.append(plots / "summary.png")
    return written
