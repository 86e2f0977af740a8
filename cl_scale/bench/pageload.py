"""``cl-scale bench --page-load``: how long a user waits for the chat, in Debian's Chromium.

Side by side in one run, both behind the rendered nginx: (a) stock ``chainlit run`` (one instance)
and (c) 3 ``cl-scale run`` instances, the same app. "Ready" is the moment the page's Socket.IO
connection is acknowledged (the ``40`` frame: the composer works), timed from navigation start.
Cold: a fresh browser context (empty HTTP cache), as a first visit. Warm: the same page opened again
in that context, as a returning user. Slow network: a cold load through Chromium's network
emulation (``NETWORK``: a modest broadband/4G line). Loads alternate between the setups. Requests
that would leave the machine (fonts, CDNs) are refused, identically on both sides. Also measured: the
instances' CPU per cold load (stock Chainlit gzips its bundle again for every visitor).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import sys
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlsplit

MARK_START, MARK_END = "<!-- bench-pageload:start -->", "<!-- bench-pageload:end -->"
CHROMIUM = "/usr/bin/chromium"
SIDES = ("stock", "cl-scale")
#: Chromium's network emulation for the slow-network load: 20 Mbit/s down, 5 up, 40 ms round trip.
NETWORK = {"offline": False, "latency": 40, "downloadThroughput": 20e6 / 8, "uploadThroughput": 5e6 / 8}
KINDS = ("cold_s", "warm_s", "slow_s")


def params(quick: bool) -> dict:
    return {"loads": 3 if quick else 12, "quick": quick}


def check() -> None:
    """Playwright (the ``test`` extra) and Debian's Chromium are needed; say so plainly."""
    from cl_scale.errors import UserError

    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        raise UserError("--page-load needs Playwright: pip install 'cl-scale[loadtest]'") from None
    if not Path(CHROMIUM).exists():
        raise UserError(f"--page-load needs Chromium at {CHROMIUM} (apt-get install chromium)")


def _loopback_only(route):
    host = urlsplit(route.request.url).hostname
    return route.continue_() if host in ("127.0.0.1", "localhost", "::1") else route.abort()


def _acks_connect(payload: str) -> bool:
    """An Engine.IO polling payload (packets joined by ``\x1e``) holding Socket.IO's connect ack."""
    return any(packet.startswith("40") for packet in payload.split("\x1e"))


def _ready_after(page, url: str, via: Counter | None = None) -> float:
    """Navigate and return the seconds until Socket.IO's connect is acknowledged. Chainlit's client
    starts on HTTP long-polling and upgrades to a websocket, so the ack (``40``) comes on whichever
    carries it first: a websocket frame, or a poll's response (its arrival time is kept, its body read
    afterwards); ``via`` counts which. A load that never gets there raises with what the page did."""
    ready: dict = {}
    seen: list[str] = []
    polls: list[tuple[float, object]] = []

    def on_socket(ws):
        seen.append(f"ws {ws.url.split('?')[0]}")
        ws.on("close", lambda _ws: seen.append("ws closed"))
        ws.on("socketerror", lambda err: seen.append(f"ws error {err}"))
        if "/ws/socket.io" in ws.url:
            ws.on("framereceived", lambda p: acked(time.perf_counter(), "websocket")
                  if isinstance(p, str) and p.startswith("40") else seen.append(f"frame {str(p)[:60]}"))

    def acked(at: float, via: str) -> None:
        if at < ready.get("t", at + 1):
            ready["t"], ready["via"] = at, via

    def on_failed(request):
        if urlsplit(request.url).hostname in ("127.0.0.1", "localhost", "::1"):  # not the refused ones
            seen.append(f"failed {request.method} {urlsplit(request.url).path}: {request.failure}")

    def on_response(response):
        if response.status >= 400:
            seen.append(f"HTTP {response.status} {urlsplit(response.url).path}")
        elif "/ws/socket.io" in response.url and "transport=polling" in response.url \
                and response.request.method == "GET":
            polls.append((time.perf_counter(), response))

    def on_console(msg):
        if msg.type == "error":
            seen.append(f"console {msg.text[:120]}")

    handlers = {"websocket": on_socket, "requestfailed": on_failed, "response": on_response,
                "console": on_console, "crash": lambda _p: seen.append("page crashed")}
    for event, handler in handlers.items():
        page.on(event, handler)
    try:
        started = time.perf_counter()
        page.goto(url, wait_until="commit", timeout=60_000)
        while True:
            while polls:  # bodies are read here, not in the event handler
                at, response = polls.pop(0)
                try:
                    if _acks_connect(response.text()):
                        acked(at, "polling")
                except Exception as exc:  # noqa: BLE001 - a poll cut by the upgrade has no body
                    seen.append(f"poll unread: {exc.__class__.__name__}")
            if "t" in ready:
                break
            if time.perf_counter() - started > 60:
                raise TimeoutError(f"{url}: no Socket.IO connection within 60 s; the page did: {seen[-25:]}")
            page.wait_for_timeout(5)
    finally:
        for event, handler in handlers.items():
            page.remove_listener(event, handler)
    if via is not None:
        via[ready["via"]] += 1
    return ready["t"] - started


def _bundle_bytes(url: str) -> dict:
    """Bytes of Chainlit's main bundle as Chromium would fetch it (``br, gzip``), and its headers."""
    import httpx

    html = httpx.get(url, timeout=30).text
    name = re.search(r'src="[^"]*/assets/([^"]+\.js)"', html).group(1)
    with httpx.stream("GET", f"{url}/assets/{name}", timeout=60,
                      headers={"Accept-Encoding": "gzip, deflate, br, zstd"}) as r:
        size = sum(len(chunk) for chunk in r.iter_raw())
        return {"bytes": size, "encoding": r.headers.get("content-encoding", "identity"),
                "cache_control": r.headers.get("cache-control", "")}


def _wait_precompressed(url: str) -> None:
    for _ in range(300):
        if _bundle_bytes(url)["encoding"] == "br":
            return
        time.sleep(0.2)
    raise TimeoutError("cl-scale never served the bundle precompressed")


def run(out_dir: Path, *, quick: bool = False, log=print) -> dict:
    from playwright.sync_api import sync_playwright

    from cl_scale.bench import setups
    from cl_scale.bench.measure import cpu_seconds
    from cl_scale.ops.processes import RedisServer

    p = params(quick)
    started = time.time()
    work = out_dir / "out" / "pageload-work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    redis = RedisServer(work).start()
    clusters = {}
    try:
        for side in SIDES:
            clusters[side] = setups.start(side, work, redis, nginx=True)
        urls = {side: setups.entry_url(c) for side, c in clusters.items()}
        _wait_precompressed(urls["cl-scale"])
        bundles = {side: _bundle_bytes(url) for side, url in urls.items()}
        loads = {side: {k: [] for k in KINDS} for side in SIDES}
        cpu = {side: [] for side in SIDES}
        via = {side: Counter() for side in SIDES}
        pids = {side: [inst.proc.pid for inst in c.instances] for side, c in clusters.items()}
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM,
                                         args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])

            def fresh_page():
                context = browser.new_context(viewport={"width": 1100, "height": 800})
                context.route("**/*", _loopback_only)
                return context, context.new_page()

            try:
                for i in range(p["loads"]):
                    for side in (SIDES if i % 2 == 0 else SIDES[::-1]):  # alternate who goes first
                        context, page = fresh_page()
                        before = cpu_seconds(pids[side])
                        loads[side]["cold_s"].append(round(_ready_after(page, urls[side], via[side]), 4))
                        time.sleep(0.3)  # the page's last requests (logo, avatars) are part of the load
                        cpu[side].append(round((cpu_seconds(pids[side]) - before) * 1000, 2))
                        loads[side]["warm_s"].append(round(_ready_after(page, urls[side], via[side]), 4))
                        context.close()
                        context, page = fresh_page()
                        cdp = context.new_cdp_session(page)
                        cdp.send("Network.enable")
                        cdp.send("Network.emulateNetworkConditions", NETWORK)
                        loads[side]["slow_s"].append(round(_ready_after(page, urls[side], via[side]), 4))
                        context.close()
                    log(f"page loads {i + 1}/{p['loads']}: " + ", ".join(
                        f"{s} cold {loads[s]['cold_s'][-1]:.2f} s warm {loads[s]['warm_s'][-1]:.2f} s "
                        f"slow {loads[s]['slow_s'][-1]:.2f} s" for s in SIDES))
            finally:
                browser.close()
    finally:
        for c in clusters.values():
            c.stop()
        redis.stop()
    medians = {side: {**{k: round(statistics.median(v), 4) for k, v in loads[side].items()},
                      "cpu_per_load_ms": round(statistics.median(cpu[side]), 2)} for side in SIDES}
    results = {"generated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "duration_s": round(time.time() - started, 1),
               "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]}, "params": p,
               "loads": loads, "medians": medians, "bundle": bundles,
               "cpu_per_load_ms": cpu, "network": NETWORK, "connect_ack_via": {k: dict(v) for k, v in via.items()},
               "ratios": {k: round(medians["cl-scale"][k] / medians["stock"][k], 3)
                          for k in (*KINDS, "cpu_per_load_ms")}}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "pageload.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(results, out_dir / "plots" / "pageload.png")
    return results


def readme_section(results: dict) -> str:
    m, b, r, p = results["medians"], results["bundle"], results["ratios"], results["params"]
    lines = ["| page ready (Socket.IO connected), median | (a) stock chainlit | (c) cl-scale | (c) / (a) |",
             "|---|---|---|---|",
             f"| cold cache (first visit) | {m['stock']['cold_s']:.3f} s | {m['cl-scale']['cold_s']:.3f} s | "
             f"{r['cold_s']:.2f} |",
             f"| warm cache (returning visit) | {m['stock']['warm_s']:.3f} s | {m['cl-scale']['warm_s']:.3f} s | "
             f"{r['warm_s']:.2f} |",
             f"| cold, 20 Mbit/s and 40 ms round trip (emulated) | {m['stock']['slow_s']:.3f} s | "
             f"{m['cl-scale']['slow_s']:.3f} s | {r['slow_s']:.2f} |",
             f"| instance CPU per cold page load | {m['stock']['cpu_per_load_ms']:.0f} ms | "
             f"{m['cl-scale']['cpu_per_load_ms']:.0f} ms | {r['cpu_per_load_ms']:.2f} |",
             f"| main bundle on the wire | {b['stock']['bytes'] / 1e6:.2f} MB {b['stock']['encoding']} | "
             f"{b['cl-scale']['bytes'] / 1e6:.2f} MB {b['cl-scale']['encoding']} | "
             f"{b['cl-scale']['bytes'] / b['stock']['bytes']:.2f} |",
             "", f"_{results['machine']['cpus']} CPUs, {results['generated']}; Debian's Chromium, {p['loads']} cold "
                 f"and {p['loads']} warm loads per side, alternating, both behind the rendered nginx"
                 f"{' (quick run)' if p.get('quick') else ''}. Regenerate: `cl-scale bench --page-load`._"]
    return "\n".join(lines)


def plot(results: dict, target: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    kinds = KINDS
    for i, side in enumerate(SIDES):
        values = [results["medians"][side][k] for k in kinds]
        ax.bar([x + i * 0.38 for x in range(len(kinds))], values, width=0.38, label=side)
    ax.set_xticks([x + 0.19 for x in range(len(kinds))], ["cold cache", "warm cache", "cold, 20 Mbit/s"])
    ax.set_ylabel("page ready (s), median")
    ax.set_title("Page load in Chromium, through nginx")
    ax.legend()
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(target, dpi=110)
    plt.close(fig)
    return target
