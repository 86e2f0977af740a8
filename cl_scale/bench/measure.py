"""What the benchmark measures in each setup: chat latency, streaming, capacity, cost.

* echo round trip p50/p99 and an N-token stream — one client on instance 1 of each setup (so only
  the server side differs), all setups measured in rotating rounds so machine noise hits them alike;
* concurrent websocket clients held (through the balancer, loopback sources 127.0.N.1 so ip_hash
  spreads them), across Engine.IO pings; failures counted, never assumed;
* memory per idle connection: RSS delta of the instance processes / clients held;
* CPU while the clients idle: instance CPU over the hold, as a share of one core;
* CPU per chat message: CPU time delta of the instance processes during a burst of echoes, less the
  idle rate over the burst's duration (the held clients' own cost, reported above), / messages; the
  gross figure too, and Redis's CPU separately.
"""

from __future__ import annotations

import asyncio
import statistics
import time

from cl_scale.ops.client import ChainlitClient


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def summary(samples: list[float]) -> dict:
    return {"p50_ms": round(percentile(samples, 0.5), 3) if samples else None,
            "p99_ms": round(percentile(samples, 0.99), 3) if samples else None, "n": len(samples)}


# -- process accounting (psutil: children included) ------------------------------------------------
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


# -- latency ------------------------------------------------------------------------------------------
async def _started(client: ChainlitClient) -> ChainlitClient:
    await client.connect(timeout=30)
    await client.wait_for(lambda: client.messages(), 30)
    return client


async def echo_once(client: ChainlitClient, tag: str) -> float:
    t0 = time.perf_counter()
    await client.ask(tag, contains=f"echo={tag} ", timeout=30)
    return (time.perf_counter() - t0) * 1000


async def stream_once(client: ChainlitClient, tokens: int) -> float:
    seen = lambda: client.counts.get("stream_start", 0) + client.counts.get("stream_token", 0)  # noqa: E731
    target = seen() + tokens
    t0 = time.perf_counter()
    await client.send(f"stream {tokens}")
    await client.wait_for(lambda: seen() >= target, 180)
    return time.perf_counter() - t0


async def latency(urls: dict[str, str], p: dict) -> dict:
    """Echo and stream against each setup's first instance, rotating the order every round."""
    clients = {}
    try:
        for name, url in urls.items():
            client = await _started(ChainlitClient(url))
            for i in range(10):  # warm-up
                await client.ask(f"w{i}", contains=f"echo=w{i} ", timeout=30)
            clients[name] = client
        names = list(urls)
        rtts = {n: [] for n in names}
        streams = {n: [] for n in names}
        rounds = 10
        per_round = max(1, p["echoes"] // rounds)
        for r in range(rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                for i in range(per_round):
                    rtts[name].append(await echo_once(clients[name], f"r{r}e{i}"))
        for s in range(p["streams"]):
            for name in names[s % len(names):] + names[:s % len(names)]:
                streams[name].append(await stream_once(clients[name], p["tokens"]))
                await asyncio.sleep(0.5)  # let the final new_message land
    finally:
        for client in clients.values():
            await client.close()
    return {n: {"echo_p50_ms": statistics.median(rtts[n]), "echo_p99_ms": percentile(rtts[n], 0.99),
                "echo_samples": len(rtts[n]), "stream_s": statistics.median(streams[n]) if streams[n] else None,
                "stream_samples": len(streams[n])} for n in names}


# -- capacity and cost ----------------------------------------------------------------------------------
async def capacity(url: str, pids: list[int], redis_pid: int | None, p: dict, *, spread: int) -> dict:
    """Hold ``p['clients']`` idle sessions, then a burst of echoes from a few of them: RSS and CPU
    deltas of the instance processes."""
    import aiohttp

    n = p["clients"]
    sessions = []
    for k in range(spread):
        src = f"127.0.{k + 1}.1" if spread > 1 else None
        conn = aiohttp.TCPConnector(limit=0, force_close=True, local_addr=(src, 0) if src else None)
        sessions.append((src, aiohttp.ClientSession(connector=conn, cookie_jar=aiohttp.DummyCookieJar(),
                                                    timeout=aiohttp.ClientTimeout(total=None, connect=30, sock_read=None))))
    clients = [ChainlitClient(url, source_address=sessions[i % spread][0], http=sessions[i % spread][1],
                              reconnection=False) for i in range(n)]
    await asyncio.sleep(1.0)
    rss_before = rss_bytes(pids)
    errors: dict[str, int] = {}
    connected: list[ChainlitClient] = []
    gate = asyncio.Semaphore(40)
    t0 = time.perf_counter()

    async def one(c: ChainlitClient):
        async with gate:
            try:
                await asyncio.wait_for(_started(c), 60)
                connected.append(c)
            except Exception as exc:  # noqa: BLE001
                key = f"{type(exc).__name__}: {str(exc)[:80]}"
                errors[key] = errors.get(key, 0) + 1

    try:
        await asyncio.gather(*(one(c) for c in clients))
        connect_s = time.perf_counter() - t0
        idle0, held0 = cpu_seconds(pids), time.perf_counter()
        await asyncio.sleep(p["hold_s"])  # idle across Engine.IO pings (25 s interval in the full run)
        idle_cpu = (cpu_seconds(pids) - idle0) / (time.perf_counter() - held0)
        dropped = sum(1 for c in connected if not c.sio.connected)
        rss_after = rss_bytes(pids)
        senders = [c for c in connected if c.sio.connected][:p["cpu_senders"]]
        per_sender = max(1, p["cpu_messages"] // max(1, len(senders)))
        cpu0, rcpu0 = cpu_seconds(pids), cpu_seconds([redis_pid]) if redis_pid else 0.0
        send_errors = 0

        async def chat(c: ChainlitClient, k: int):
            nonlocal send_errors
            for i in range(per_sender):
                try:
                    await c.ask(f"cpu{k}-{i}", contains=f"echo=cpu{k}-{i} ", timeout=60)
                except Exception:  # noqa: BLE001
                    send_errors += 1

        t1 = time.perf_counter()
        await asyncio.gather(*(chat(c, k) for k, c in enumerate(senders)))
        burst_s = time.perf_counter() - t1
        messages = per_sender * len(senders)
        cpu = cpu_seconds(pids) - cpu0
        rcpu = (cpu_seconds([redis_pid]) - rcpu0) if redis_pid else 0.0
    finally:
        await asyncio.gather(*(c.close() for c in connected), return_exceptions=True)
        for _, s in sessions:
            await s.close()
    return {
        "clients_attempted": n, "clients_held": len(connected) - dropped,
        "client_failures": sum(errors.values()) + dropped, "client_errors": errors, "connect_s": round(connect_s, 2),
        "hold_s": p["hold_s"], "idle_cpu_pct": round(100 * idle_cpu, 2), "rss_before_mb": round(rss_before / 2**20, 1), "rss_after_mb": round(rss_after / 2**20, 1),
        "mem_per_conn_kb": round((rss_after - rss_before) / max(1, len(connected)) / 1024, 1),
        "cpu_messages": messages, "cpu_message_errors": send_errors,
        # the burst's instance CPU less what the held clients cost meanwhile (the idle rate just measured):
        # what the messages themselves cost; the gross figure is kept beside it
        "cpu_ms_per_msg": round(max(0.0, cpu - idle_cpu * burst_s) * 1000 / max(1, messages), 3),
        "cpu_ms_per_msg_gross": round(cpu * 1000 / max(1, messages), 3),
        "redis_cpu_ms_per_msg": round(rcpu * 1000 / max(1, messages), 3),
        "burst_msgs_per_s": round(messages / burst_s, 1) if burst_s else None,
    }


def nginx_errors(prefix) -> dict[str, int]:
    """Distinct nginx error-log messages (client/address details stripped), to show where a limit is."""
    import re

    log = prefix / "logs" / "error.log"
    counts: dict[str, int] = {}
    for line in (log.read_text(errors="replace").splitlines() if log.exists() else []):
        m = re.search(r"\[(warn|error|alert|crit|emerg)\] [0-9#]+: (?:\*\d+ )?([^,]*)", line)
        if m:
            counts[m.group(2)[:120]] = counts.get(m.group(2)[:120], 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1])[:5])
