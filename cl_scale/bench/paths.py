"""``cl-scale bench --paths``: the four ways a worker reaches a chat, side by side, in one run.

(1) ``sdk``: ``Publisher`` straight into the outbox; (2) ``gateway``: HTTP POST to ``/cl-scale/v1`` of
a standalone ``cl-scale gateway``; (3) ``grpc``: ``Send`` / ``SendBatch`` to the same process's gRPC
port; (4) ``grpc_stream``: the tokens of one long ``StreamReply`` per session; (5) ``kafka``: produce
to a topic (tansu) that ``cl-scale bridge`` consumes; (6) ``amqp``: publish to a RabbitMQ queue that
``cl-scale bridge`` consumes. One cl-scale instance, one Redis, the same Socket.IO client measuring
arrival on every path.

Latency: one message at a time, paths interleaved, publish -> received by the client. Sustained:
N messages per path into a fresh session, published in batches of 100 on every path (SDK
``send_many``; 100 gateway requests in flight; one ``SendBatch`` of 100; a ``StreamReply`` chunk of
100 tokens; 100 Kafka produces then one flush; 100 RabbitMQ publishes with confirms in flight), the same outbox bound on every path, delivery rate = messages / (first publish -> last arrival), every
lost message counted; only the path's own bridge runs during its sustained run (the other is
paused with SIGSTOP). Floors: the brokers alone (publish -> a plain consumer in this process), in
the same interleaved rounds, so a bridge's own cost reads as its latency minus its floor. Writes ``paths.json`` and ``plots/paths.png``; the README block is generated
from the JSON (``readme_section``).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

from cl_scale.bench.measure import summary
from cl_scale.bench.worker import Arrivals, _until

PATHS = ("sdk", "gateway", "grpc", "grpc_stream", "kafka", "amqp")
#: The brokers alone (publish -> a plain consumer, no cl-scale): what a bridge cannot be faster than.
FLOORS = ("kafka_floor", "amqp_floor")
FLOOR = "bench-floor"
#: tansu answers a fetch only when its wait ends (a Kafka broker answers as data arrives): a short
#: wait stands in for that here, for the bridge and the floor consumer alike (see the README note)
FETCH_WAIT_MS = 5
#: Tokens per streamed reply (a reply is one message: 1,000 ids of 36 bytes stay under its size limit).
STREAM_TOKENS = 1000
LABELS = {"sdk": "Redis SDK (`Publisher`)", "gateway": "HTTP gateway", "grpc": "gRPC gateway (`Send`/`SendBatch`)",
          "grpc_stream": "gRPC `StreamReply` (tokens)", "kafka": "Kafka bridge (tansu)", "amqp": "RabbitMQ bridge"}
KEY = ("bench", "bench-secret-" + "x" * 20)
TOKEN = "bench-token-" + "y" * 20
BATCH = 100
OUTBOX_MAX = 1_000_000
MARK_START, MARK_END = "<!-- bench-paths:start -->", "<!-- bench-paths:end -->"


def params(quick: bool) -> dict:
    return {"rounds": 20, "messages": 300, "quick": True} if quick else {"rounds": 300, "messages": 10_000,
                                                                         "quick": False}


class Senders:
    """One ``send(items)`` per path; ``items`` = [(session id, message id, text)], published as one batch."""

    def __init__(self, redis_url: str, gateway_url: str, kafka_bootstrap: str, topic: str, amqp_url: str, queue: str,
                 grpc_target: str):
        self.redis_url, self.gateway_url, self.grpc_target = redis_url, gateway_url, grpc_target
        self.kafka_bootstrap, self.topic, self.amqp_url, self.queue = kafka_bootstrap, topic, amqp_url, queue

    async def __aenter__(self) -> "Senders":
        import aio_pika
        import aiohttp
        from aiokafka import AIOKafkaProducer

        from cl_scale.worker import Publisher

        self.pub = Publisher(self.redis_url, KEY[0], KEY[1], outbox_max=OUTBOX_MAX)
        # aiohttp, not httpx: with 100 requests in flight httpx's client-side cost capped this path at
        # ~180 requests/s (the gateway itself answered >1,000/s to aiohttp)
        self.http = aiohttp.ClientSession(headers={"authorization": f"Bearer {TOKEN}"},
                                          timeout=aiohttp.ClientTimeout(total=30),
                                          connector=aiohttp.TCPConnector(limit=BATCH))
        self.producer = AIOKafkaProducer(bootstrap_servers=self.kafka_bootstrap, acks="all", linger_ms=0)
        await self.producer.start()
        import grpc

        from cl_scale.gateway.grpc_gateway import stubs

        self.pb, services = stubs()
        self.channel_grpc = grpc.aio.insecure_channel(self.grpc_target)
        self.grpc = services.GatewayStub(self.channel_grpc)
        self.metadata = [("authorization", f"Bearer {TOKEN}")]
        self.streams: dict[str, tuple] = {}  # session id -> (chunks, StreamReply call, tokens so far)
        self.ended: list = []
        self.amqp = await aio_pika.connect(self.amqp_url)
        self.channel = await self.amqp.channel(publisher_confirms=True)
        await self.channel.declare_queue(self.queue, durable=True)
        await self._floor_consumers()
        return self

    async def _floor_consumers(self) -> None:
        """The brokers alone: a plain consumer in this process on a topic/queue of its own (Kafka with
        the bridge's fetch wait), recording when each message id arrives, no cl-scale in between."""
        from aiokafka import AIOKafkaConsumer

        self.floor_at: dict[str, float] = {}
        self.floor_consumer = AIOKafkaConsumer(FLOOR, bootstrap_servers=self.kafka_bootstrap, group_id="floor",
                                               auto_offset_reset="earliest", fetch_max_wait_ms=FETCH_WAIT_MS)
        await self.floor_consumer.start()

        async def kafka_floor() -> None:
            async for record in self.floor_consumer:
                self.floor_at.setdefault(record.value.decode(), time.perf_counter())

        self.floor_task = asyncio.create_task(kafka_floor())
        self.floor_channel = await self.amqp.channel()
        queue = await self.floor_channel.declare_queue(FLOOR, durable=True)

        async def amqp_floor(message) -> None:
            self.floor_at.setdefault(message.body.decode(), time.perf_counter())
            await message.ack()

        await queue.consume(amqp_floor)

    async def floor(self, path: str, mid: str) -> None:
        """Publish ``mid`` the way ``send`` does on ``path`` (kafka/amqp), to the floor consumer."""
        import aio_pika

        if path == "kafka":
            await (await self.producer.send(FLOOR, mid.encode(), key=mid.encode()))
        else:
            await self.channel.default_exchange.publish(aio_pika.Message(mid.encode()), routing_key=FLOOR)

    async def stop_floors(self) -> None:
        """Stop the floor consumers (after the latency rounds): polling tansu costs CPU the sustained
        runs should have."""
        if self.floor_consumer is not None:
            self.floor_task.cancel()
            await asyncio.gather(self.floor_task, return_exceptions=True)
            await self.floor_consumer.stop()
            await self.floor_channel.close()
            self.floor_consumer = None

    async def __aexit__(self, *exc) -> None:
        for chunks, call, _ in self.streams.values():
            chunks.put_nowait(self.pb.StreamChunk(end=True))
            chunks.put_nowait(None)
            self.ended.append(call)
        for call in self.ended:
            await call
        await self.channel_grpc.close()
        await self.stop_floors()
        await self.pub.aclose()
        await self.http.close()
        await self.producer.stop()
        await self.amqp.close()

    async def send(self, path: str, items: list[tuple[str, str, str]]) -> None:
        if path == "sdk":
            if len(items) == 1:
                sid, mid, text = items[0]
                await self.pub.send(sid, text, message_id=mid)
            else:
                await self.pub.send_many([{"session_id": s, "message_id": m, "text": t} for s, m, t in items])
        elif path == "gateway":
            async def post(sid: str, mid: str, text: str) -> int:
                async with self.http.post(f"{self.gateway_url}/cl-scale/v1/sessions/{sid}/messages",
                                          json={"id": mid, "text": text}) as resp:
                    return resp.status
            bad = [code for code in await asyncio.gather(*(post(*item) for item in items)) if code != 202]
            if bad:
                raise RuntimeError(f"gateway answered {bad[:3]}")
        elif path == "grpc":
            pb = self.pb
            if len(items) == 1:
                sid, mid, text = items[0]
                await self.grpc.Send(pb.SendRequest(session_id=sid, id=mid, text=text), metadata=self.metadata)
            else:
                await self.grpc.SendBatch(pb.SendBatchRequest(messages=[pb.SendRequest(session_id=s, id=m, text=t)
                                                                        for s, m, t in items]), metadata=self.metadata)
        elif path == "grpc_stream":  # replies of up to 1,000 tokens per session; a token's text is its id
            sid = items[0][0]
            if sid in self.streams and self.streams[sid][2] + len(items) > STREAM_TOKENS:
                chunks, call, _ = self.streams.pop(sid)  # this reply is done: the next tokens start another
                chunks.put_nowait(self.pb.StreamChunk(end=True))
                chunks.put_nowait(None)
                self.ended.append(call)
            if sid not in self.streams:
                self.streams[sid] = (*self._open_stream(sid), 0)
            chunks, call, count = self.streams[sid]
            chunks.put_nowait(self.pb.StreamChunk(tokens=[m for _, m, _ in items]))
            self.streams[sid] = (chunks, call, count + len(items))
        elif path == "kafka":
            futures = [await self.producer.send(self.topic, _payload(s, m, t), key=s.encode()) for s, m, t in items]
            await asyncio.gather(*futures)
        else:
            # on the aiormq channel under aio-pika's (as the bridge consumes): aio-pika's per-message
            # wrapping made this publisher, not the bridge, the bound of the RabbitMQ row
            raw = await self.channel.get_underlay_channel()  # no content type declared: JSON
            await asyncio.gather(*(raw.basic_publish(_payload(s, m, t), routing_key=self.queue) for s, m, t in items))


    def _open_stream(self, sid: str) -> tuple[asyncio.Queue, object]:
        chunks: asyncio.Queue = asyncio.Queue()
        chunks.put_nowait(self.pb.StreamChunk(session_id=sid, id=f"bench-stream-{uuid.uuid4().hex[:8]}"))

        async def feed():
            while (chunk := await chunks.get()) is not None:
                yield chunk

        return chunks, self.grpc.StreamReply(feed(), metadata=self.metadata)


def _bridge_counts(health_port: int) -> dict:
    """The bridge's forwarded messages and batches so far (its /metrics)."""
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{health_port}/metrics", timeout=5).read().decode()
    values = {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
              if line and not line.startswith("#") and " " in line}
    return {"forwarded": int(values.get("clscale_bridge_forwarded_total", 0)),
            "batches": int(values.get("clscale_bridge_batches_total", 0))}


def _payload(sid: str, mid: str, text: str) -> bytes:
    return json.dumps({"session_id": sid, "id": mid, "text": text}).encode()


async def _client(url: str):
    from cl_scale.ops.client import ChainlitClient

    client = ChainlitClient(url)
    arrivals = Arrivals(client)

    def on_token(event, data) -> None:  # StreamReply's tokens: each token's text is its id
        if event == "stream_token" and isinstance(data, dict):
            arrivals.at.setdefault(data.get("token"), time.perf_counter())
        elif event == "stream_start" and isinstance(data, dict):  # Chainlit sends a reply's first token here
            arrivals.at.setdefault(data.get("output"), time.perf_counter())

    client.listeners.append(on_token)
    await client.connect(timeout=30)
    await client.wait_for(lambda: client.messages(), 30)
    return client, arrivals


async def _latency(senders: Senders, url: str, rounds: int) -> dict:
    client, arrivals = await _client(url)
    samples: dict[str, list[float]] = {p: [] for p in PATHS + FLOORS}
    try:
        for path in PATHS:  # warm-up: connections, the bridges' first batch
            mid = str(uuid.uuid4())
            await senders.send(path, [(client.session_id, mid, "warm-up")])
            await _until(lambda mid=mid: mid in arrivals.at, 30)
        for path in FLOORS:
            await senders.floor(path.split("_")[0], "warm-up")
        await asyncio.sleep(1.0)
        for i in range(rounds):
            everything = PATHS + FLOORS
            order = everything[i % len(everything):] + everything[:i % len(everything)]
            for path in order:
                mid = str(uuid.uuid4())
                t0 = time.perf_counter()
                if path in FLOORS:
                    await senders.floor(path.split("_")[0], mid)
                    arrived = senders.floor_at
                else:
                    await senders.send(path, [(client.session_id, mid, f"lat {i}")])
                    arrived = arrivals.at
                if await _until(lambda mid=mid, arrived=arrived: mid in arrived, 10):
                    samples[path].append((arrived[mid] - t0) * 1000)
    finally:
        await client.close()
    return {p: {**summary(v), "lost": rounds - len(v)} for p, v in samples.items()}


async def _sustained(senders: Senders, url: str, path: str, total: int) -> dict:
    client, arrivals = await _client(url)
    sid = client.session_id
    ids = [str(uuid.uuid4()) for _ in range(total)]
    sent_at: dict[str, float] = {}
    try:
        # one message through first, untimed: a bridge resumed from SIGSTOP may be rejoining its group
        probe = str(uuid.uuid4())
        await senders.send(path, [(sid, probe, "probe")])
        await _until(lambda: probe in arrivals.at, 60)
        t0 = time.perf_counter()
        for k in range(0, total, BATCH):
            chunk = ids[k:k + BATCH]
            now = time.perf_counter()
            sent_at.update({m: now for m in chunk})
            await senders.send(path, [(sid, m, f"tp {k + j}") for j, m in enumerate(chunk)])
        published = time.perf_counter() - t0
        await _until(lambda: all(i in arrivals.at for i in ids), 180)
        got = [i for i in ids if i in arrivals.at]
        elapsed = (max(arrivals.at[i] for i in got) - t0) if got else 0.0
        waits = [(arrivals.at[i] - sent_at[i]) * 1000 for i in got]
        return {"messages": total, "received": len(got), "lost": total - len(got), "batch": BATCH,
                # a client stream acknowledges no chunk: its "published" would only time a local queue
                "publish_msgs_per_s": round(total / published, 1) if published and path != "grpc_stream" else None,
                "delivery_msgs_per_s": round(len(got) / elapsed, 1) if elapsed else None,
                "loaded_latency": summary(waits)}
    finally:
        await client.close()


def run(out_dir: Path, *, quick: bool = False, log=print) -> dict:
    from importlib import resources

    from cl_scale.bench.brokers import RabbitNode, Tansu
    from cl_scale.ops.cluster import ProcessCluster
    from cl_scale.ops.processes import (
        CL_SCALE,
        Proc,
        RedisServer,
        free_port,
        http_status,
        init_chainlit_files,
        wait_port,
    )

    p = params(quick)
    # SIGTERM (``timeout``, a CI runner) unwinds like Ctrl-C, so the brokers, bridges, gateway and
    # instance below are stopped instead of outliving the benchmark and skewing the next run
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.time()
    # One outbox bound on every path (the SDK publisher's is 1,000,000 too): like for like.
    env = {"CL_SCALE_WORKER_KEYS": ":".join(KEY), "CL_SCALE_GATEWAY_TOKENS": f"bench:{TOKEN}",
           "CL_SCALE_WORKER_OUTBOX_MAX": str(OUTBOX_MAX)}
    procs: list = []
    health_ports: list[int] = []
    with tempfile.TemporaryDirectory(prefix="cl-scale-bench-paths-") as tmpdir:
        tmp = Path(tmpdir)
        redis = RedisServer(tmp).start()
        kafka = rabbit = cluster = gateway = None
        try:
            app_dir = tmp / "app"
            app_dir.mkdir()
            (app_dir / "app.py").write_text(resources.files("cl_scale.bench.apps").joinpath("echo.py").read_text())
            init_chainlit_files(app_dir)
            log("starting one cl-scale instance, tansu and a RabbitMQ node")
            cluster = ProcessCluster(app_dir, tmp / "run", redis=redis, env=env)
            cluster.start(1, prefix="paths")
            kafka = Tansu(tmp).start()
            rabbit = RabbitNode().start()
            topic, queue = "bench-replies", "bench-replies"
            asyncio.run(kafka.create_topic(topic, 3))
            asyncio.run(kafka.create_topic(FLOOR, 3))
            for url in (f"kafka://{kafka.bootstrap}/{topic}?group=bench&fetch_max_wait_ms={FETCH_WAIT_MS}",
                        f"amqp://guest@127.0.0.1:{rabbit.port}/?queue={queue}"):
                health = free_port()
                proc = Proc([CL_SCALE, "bridge", url, "--redis-url", redis.url, "--health-port", str(health),
                             "--batch-size", "200"], env={**env, "CL_SCALE_AMQP_PASSWORD": "guest"},
                            log_path=tmp / f"bridge-{health}.log").start()
                procs.append(proc)
                health_ports.append(health)
                deadline = time.monotonic() + 60
                while http_status(f"http://127.0.0.1:{health}/readyz") != 200:
                    if time.monotonic() > deadline or not proc.alive():
                        raise RuntimeError(f"bridge for {url} not ready: {proc.log()[-2000:]}")
                    time.sleep(0.1)
            url = cluster.instances[0].url
            # the HTTP and gRPC gateways: one standalone process serving both (like for like)
            gw_http, gw_grpc = free_port(), free_port()
            gateway = Proc([CL_SCALE, "gateway", "--redis-url", redis.url, "--port", str(gw_http),
                            "--grpc-port", str(gw_grpc)], env=env, log_path=tmp / "gateway.log").start()
            wait_port(gw_grpc, 60)
            wait_port(gw_http, 60)

            async def measure() -> dict:
                async with Senders(redis.url, f"http://127.0.0.1:{gw_http}", kafka.bootstrap, topic, rabbit.url, queue,
                                   f"127.0.0.1:{gw_grpc}") as senders:
                    log(f"latency: {p['rounds']} rounds, one message at a time per path")
                    latency = await _latency(senders, url, p["rounds"])
                    await senders.stop_floors()
                    sustained = {}
                    for path in PATHS:
                        log(f"sustained: {p['messages']} messages through {path}")
                        # only this path's bridge runs: an idle bridge still polls its broker (tansu's
                        # short fetch wait: ~8 % of a core), CPU the path under test should have
                        idle = [proc for proc, kind in zip(procs, ("kafka", "amqp")) if kind != path]
                        for proc in idle:
                            os.kill(proc.pid, signal.SIGSTOP)
                        try:
                            sustained[path] = await _sustained(senders, url, path, p["messages"])
                        finally:
                            for proc in idle:
                                os.kill(proc.pid, signal.SIGCONT)
                        if path in ("kafka", "amqp"):
                            sustained[path]["bridge"] = _bridge_counts(health_ports[0 if path == "kafka" else 1])
                        log(f"  {path}: {json.dumps(sustained[path])}")
                        await asyncio.sleep(1.0)
                    return {"latency": latency, "sustained": sustained}

            measured = asyncio.run(measure())
            from cl_scale.bench import codec

            log("outbox entry encodings: JSON vs protobuf")
            measured["codec"] = codec.measure(300 if quick else 3000)
        finally:
            for proc in procs + ([gateway] if gateway else []):
                proc.stop()
            for thing in (cluster, kafka, rabbit, redis):
                if thing is not None:
                    thing.stop()
    results = {
        "generated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "duration_s": round(time.time() - started, 1),
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "params": p, "labels": LABELS,
        "notes": [__doc__.split("\n\n")[1].replace("\n", " "), __doc__.split("\n\n")[2].split(" Writes")[0]
                  .replace("\n", " ")],
        **measured,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "paths.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(results, out_dir / "plots" / "paths.png")
    return results


def _rate(value) -> str:
    return f"{value:,.0f}" if value else "n/a"


def _ratio(a, b) -> str:
    return f"{a / b:.2f}x" if a and b else "n/a"


def readme_section(results: dict) -> str:
    lat, sus, p = results["latency"], results["sustained"], results["params"]
    lines = ["| path | latency p50 / p99 (one at a time) | sustained: delivered msgs/s (published msgs/s) | "
             "lost | latency p50 / p99 under load |", "|---|---|---|---|---|"]
    for path in PATHS:
        lt, s = lat[path], sus[path]
        lines.append(f"| {LABELS[path]} | {lt['p50_ms']:.2f} / {lt['p99_ms']:.2f} ms | "
                     f"{s['delivery_msgs_per_s']:,.0f} ({_rate(s['publish_msgs_per_s'])}) | "
                     f"{s['lost'] + lt['lost']} | {s['loaded_latency']['p50_ms']:.0f} / "
                     f"{s['loaded_latency']['p99_ms']:.0f} ms |")
    sdk = lat["sdk"]["p50_ms"]
    lines += ["", f"_{results['machine']['cpus']} CPUs, {results['generated']}; {p['rounds']} one-at-a-time rounds "
                  f"per path, {p['messages']:,} messages per path in batches of {BATCH}"
                  f"{' (quick run)' if p.get('quick') else ''}. Regenerate: `cl-scale bench --paths`._", "",
              "- p50 latency against the SDK path: " + ", ".join(
                  f"{path} {_ratio(lat[path]['p50_ms'], sdk)}" for path in PATHS[1:]) + "."]
    if results.get("codec"):
        from cl_scale.bench import codec

        lines.append(codec.verdict(results["codec"]))
    if all(f in lat for f in FLOORS):
        kf, af = lat["kafka_floor"]["p50_ms"], lat["amqp_floor"]["p50_ms"]
        lines.append(f"- The brokers alone (publish -> a plain consumer, no cl-scale; same rounds, interleaved): "
                     f"Kafka (tansu) p50 {kf:.2f} ms, RabbitMQ {af:.2f} ms. Added by the bridge on top of its "
                     f"broker: Kafka {lat['kafka']['p50_ms'] - kf:.2f} ms, RabbitMQ {lat['amqp']['p50_ms'] - af:.2f}"
                     f" ms; the whole SDK path: {sdk:.2f} ms.")
    return "\n".join(lines)


def plot(results: dict, target: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    x = range(len(PATHS))
    p50 = [results["latency"][p]["p50_ms"] for p in PATHS]
    p99 = [results["latency"][p]["p99_ms"] for p in PATHS]
    ax1.bar([i - 0.2 for i in x], p50, width=0.4, label="p50")
    ax1.bar([i + 0.2 for i in x], p99, width=0.4, label="p99")
    ax1.set_xticks(list(x), PATHS)
    ax1.set_ylabel("ms")
    ax1.set_title("publish -> received, one at a time")
    ax1.legend()
    ax2.bar(list(x), [results["sustained"][p]["delivery_msgs_per_s"] or 0 for p in PATHS], color="tab:green")
    ax2.set_xticks(list(x), PATHS)
    ax2.set_ylabel("messages / s")
    ax2.set_title(f"sustained delivery, batches of {BATCH}")
    fig.tight_layout()
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target, dpi=110)
    plt.close(fig)
    return target
