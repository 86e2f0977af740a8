"""The benchmark's outputs, all generated from one ``results.json``: the README section (tables and
every ratio quoted in prose) and the plots. Nothing here measures; nothing in the README is typed."""

from __future__ import annotations

import json
from pathlib import Path

from cl_scale.bench.setups import SHORT
from cl_scale.errors import UserError

MARK_START, MARK_END = "<!-- bench:start -->", "<!-- bench:end -->"

ROWS = [
    ("echo round trip p50", "echo_p50_ms", "{:.1f} ms"),
    ("echo round trip p99", "echo_p99_ms", "{:.1f} ms"),
    ("stream {tokens} tokens", "stream_s", "{:.2f} s"),
    ("websocket clients held", None, None),
    ("memory per idle connection", "mem_per_conn_kb", "{:.0f} KB"),
    ("instance CPU while they idle (% of one core)", "idle_cpu_pct", "{:.1f} %"),
    ("CPU per chat message (instances, idle subtracted)", "cpu_ms_per_msg", "{:.2f} ms"),
    ("CPU per chat message (instances, gross)", "cpu_ms_per_msg_gross", "{:.2f} ms"),
    ("CPU per chat message (Redis)", "redis_cpu_ms_per_msg", "{:.2f} ms"),
]


def _cell(setup: dict, key: str | None, fmt: str | None) -> str:
    if key is None:
        held, tried, fails = setup.get("clients_held"), setup.get("clients_attempted"), setup.get("client_failures")
        return f"{held}/{tried} ({fails} failed)"
    value = setup.get(key)
    return "n/a" if value is None else fmt.format(value)


def _ratio(a, b) -> str:
    return "n/a" if not a or not b else f"{a / b:.2f}"


def main_table(report: dict) -> str:
    names = list(report["setups"])
    p = report["params"]
    lines = ["| | " + " | ".join(report.get("labels", {}).get(n, n) for n in names) + " |",
             "|---|" + "---|" * len(names)]
    for label, key, fmt in ROWS:
        lines.append(f"| {label.format(tokens=p['tokens'])} | "
                     + " | ".join(_cell(report["setups"][n], key, fmt) for n in names) + " |")
    return "\n".join(lines)


def ratios(report: dict) -> list[str]:
    s = report["setups"]
    out = []
    if "cl-scale" in s and "stock" in s:
        c, a = s["cl-scale"], s["stock"]
        out.append(f"cl-scale / stock in-memory Chainlit: echo p50 {_ratio(c['echo_p50_ms'], a['echo_p50_ms'])}, "
                   f"p99 {_ratio(c['echo_p99_ms'], a['echo_p99_ms'])}, {report['params']['tokens']}-token stream "
                   f"{_ratio(c['stream_s'], a['stream_s'])}; CPU per chat message "
                   f"{_ratio(c['cpu_ms_per_msg'], a['cpu_ms_per_msg'])}.")
    if "cl-scale" in s and "stock-redis" in s:
        c, b = s["cl-scale"], s["stock-redis"]
        out.append(f"Streaming through python-socketio's stock Redis manager takes "
                   f"{_ratio(b['stream_s'], c['stream_s'])}x as long as through cl-scale.")
    return out


def worker_table(worker: dict) -> str:
    lat, tp = worker["latency"], worker["throughput"]

    def rate(path: str, batch: int) -> str:
        r = tp.get(f"{path}_batch{batch}")
        if not r:
            return "n/a"
        return (f"{r['publish_msgs_per_s']:.0f} / {r['delivery_msgs_per_s'] or 0:.0f} msgs/s, "
                f"lost {r['lost']} of {r['messages']}")

    lines = ["| | worker path (SDK -> owner -> `Message.send()`) | raw `write_only` emit |", "|---|---|---|",
             f"| delivery latency p50 / p99 | {lat['worker']['p50_ms']:.2f} / {lat['worker']['p99_ms']:.2f} ms | "
             f"{lat['raw_emit']['p50_ms']:.2f} / {lat['raw_emit']['p99_ms']:.2f} ms |"]
    for batch in sorted({int(k.rsplit("batch", 1)[1]) for k in tp}):
        label = "one at a time" if batch == 1 else f"batches of {batch}"
        lines.append(f"| {label}: published / delivered, lost | {rate('worker', batch)} | {rate('raw_emit', batch)} |")
    return "\n".join(lines)


def readme_section(report: dict) -> str:
    m, p = report["machine"], report["params"]
    parts = [main_table(report), "",
             f"_{m['cpus']} CPUs, Python {m['python']}, {report['generated']}; {p['echoes']} echoes, "
             f"{p['streams']} streams, {p['clients']} clients held {p['hold_s']:.0f} s"
             f"{' (quick run)' if p.get('quick') else ''}. Regenerate: `cl-scale bench` (`make bench`)._", ""]
    parts += [f"- {line}" for line in ratios(report)]
    if report.get("worker"):
        w = report["worker"]
        lat = w["latency"]
        parts += ["", "Worker delivery into the same cl-scale cluster, like for like (same batching on both "
                      f"sides; {p['push_messages']} messages per row into one session):", "", worker_table(w), "",
                  f"- worker / raw emit delivery latency p50: {_ratio(lat['worker']['p50_ms'], lat['raw_emit']['p50_ms'])}."]
    if report.get("render"):
        r = report["render"]
        parts += ["", "- Whole-process `cl-scale render` (start, validate, render, write), median of "
                      f"{r['runs']}: " + ", ".join(f"{t} {v:.2f} s" for t, v in r["median_s"].items()) + "."]
    return "\n".join(parts)


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
    readme.write_text(f"{head}{MARK_START}\n{readme_section(report)}\n{MARK_END}{tail}")


def plot(report: dict, plots: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots.mkdir(parents=True, exist_ok=True)
    names = list(report["setups"])
    labels = [SHORT.get(n, n) for n in names]
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
                ax.annotate(fmt(v), (i + off, v or 0), ha="center", va="bottom", fontsize=8)
        ax.set_xticks(x, labels, fontsize=8)
        ax.set_ylabel("ms")
        ax.set_title(title)
        ax.legend()

    def worker(ax):
        w = report.get("worker")
        if not w:
            ax.set_axis_off()
            return
        keys = list(w["throughput"])
        vals = [w["throughput"][k]["delivery_msgs_per_s"] or 0 for k in keys]
        ax.bar(range(len(keys)), vals, color=["tab:blue" if k.startswith("worker") else "tab:gray" for k in keys])
        for i, k in enumerate(keys):
            ax.annotate(f"{vals[i]:.0f}\nlost {w['throughput'][k]['lost']}", (i, vals[i]), ha="center",
                        va="bottom", fontsize=7)
        ax.set_xticks(range(len(keys)), [k.replace("_batch", "\nbatch ") for k in keys], fontsize=7)
        ax.set_ylabel("msgs/s delivered")
        ax.set_title("worker path vs raw emit (same batching)")

    specs = [
        ("echo.png", lambda ax: pair(ax, "echo_p50_ms", "echo_p99_ms", "echo round trip")),
        ("stream.png", lambda ax: bars(ax, "stream_s", f"stream {report['params']['tokens']} tokens", "seconds",
                                       "tab:green")),
        ("clients.png", lambda ax: bars(ax, "clients_held", f"websocket clients held (of "
                                        f"{report['params']['clients']})", "clients", "tab:purple")),
        ("memory.png", lambda ax: bars(ax, "mem_per_conn_kb", "memory per idle connection", "KB", "tab:orange")),
        ("cpu.png", lambda ax: bars(ax, "cpu_ms_per_msg", "instance CPU per chat message", "ms", "tab:red")),
        ("worker.png", worker),
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


def replace_block(readme: Path, start: str, end: str, section: str) -> None:
    """Rewrite what lies between the ``start`` and ``end`` markers of ``readme`` (the generated blocks)."""
    text = readme.read_text()
    if start not in text or end not in text or text.index(start) > text.index(end):
        raise UserError(f"{readme}: needs the markers {start} and {end} (in that order)")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    readme.write_text(f"{head}{start}\n{section}\n{end}{tail}")


def update_mode_block(readme: Path, bench, results_path: Path) -> None:
    """Regenerate one benchmark mode's README block (``bench``: its module, with ``MARK_START``,
    ``MARK_END`` and ``readme_section``) from that mode's JSON."""
    replace_block(readme, bench.MARK_START, bench.MARK_END, bench.readme_section(json.loads(results_path.read_text())))
