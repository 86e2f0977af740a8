"""`cl-scale` commands: loadtest, bench (locust and the benchmark harness)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cl_scale.cli import app
from cl_scale.errors import UserError


@app.command(
    "loadtest",
    help=(
        "Load-test a deployment: locust headless with a Chainlit user (Socket.IO over websocket).\n\n"
        "Scenarios: chat (echo round trip), stream (time to first/last token; the app must answer "
        "'stream N'), push (worker SDK -> client delivery latency; needs --redis-url and --worker-key), "
        "reconnect (every client drops and returns at once), all. Writes locust_*.csv and report.html "
        "to --out, prints a summary; exit 1 when any request failed.\n\n"
        "Examples:\n\n"
        "\b\n"
        "  cl-scale loadtest http://localhost:8000 --users 200 --spawn-rate 20 --run-time 5m\n"
        "  cl-scale loadtest http://127.0.0.1:8000 -u 50 -r 10 -t 60s --scenario stream --spread 8\n"
        "  CL_SCALE_WORKER_KEY=k1:secret cl-scale loadtest http://localhost:8000 -u 20 -r 5 -t 1m \\\n"
        "      --scenario push --redis-url redis://localhost:6379/0"
    ),
)
def loadtest_cmd(
    url: str = typer.Argument(..., metavar="URL", help="The load balancer (or one instance), http(s)://host:port."),
    users: int = typer.Option(10, "--users", "-u", help="Concurrent users."),
    spawn_rate: float = typer.Option(5.0, "--spawn-rate", "-r", help="Users started per second."),
    run_time: str = typer.Option("30s", "--run-time", "-t", help="Duration: 30, 30s, 5m, 1h30m."),
    scenario: str = typer.Option("chat", "--scenario", "-s", help="chat | stream | push | reconnect | all."),
    out: Path = typer.Option(Path("loadtest-report"), "--out", "-o", help="Directory for CSV + HTML."),
    stream_tokens: int = typer.Option(200, help="Tokens per streamed reply (stream scenario)."),
    spread: int = typer.Option(0, help="Bind users to 127.0.N.1, N=1..SPREAD, so nginx ip_hash spreads "
                               "loopback clients (local clusters only)."),
    redis_url: Optional[str] = typer.Option(None, "--redis-url",
                                            help="Redis of the cluster (push scenario)."),
    worker_key: Optional[str] = typer.Option(None, "--worker-key",
                                             help="KID:SECRET accepted by the instances (push scenario)."),
    storm_period: float = typer.Option(10.0, help="Seconds between reconnect storms (reconnect scenario)."),
    locustfile: Optional[Path] = typer.Option(None, help="Your own locustfile instead of the built-in user."),
) -> None:
    from cl_scale.cli.tables import show
    from cl_scale.loadtest.runner import SUMMARY_COLUMNS, run_locust, summary_rows

    if stream_tokens < 1:
        raise UserError(f"--stream-tokens {stream_tokens}: must be at least 1")
    if storm_period <= 0:
        raise UserError(f"--storm-period {storm_period}: must be positive")
    if scenario in ("push", "all") and not (redis_url and worker_key):
        # Next to a `cl-scale up` cluster, its Redis and development key are used.
        from cl_scale.worker.settings import WorkerSettings

        settings = WorkerSettings.from_env(redis_url=redis_url)
        redis_url = settings.redis_url
        if not worker_key and settings.key is not None:
            worker_key = f"{settings.key.kid}:{settings.key.secret.decode()}"
    if scenario == "all":
        typer.echo("scenario all: chat and reconnect work with any app; stream needs one answering 'stream N' "
                   "with N streamed tokens (cl_scale/bench/apps/echo.py); push signs with the worker key and "
                   "Redis below.", err=True)
    typer.echo(f"locust: {users} users, +{spawn_rate}/s, {run_time}, scenario {scenario} -> {url}")
    result = run_locust(url, users=users, spawn_rate=spawn_rate, run_time=run_time, scenario=scenario, out_dir=out,
                        locustfile=locustfile, stream_tokens=stream_tokens, spread=spread, redis_url=redis_url or "",
                        worker_key=worker_key or "", storm_period=storm_period)
    if result.rows or result.aggregated:
        show("cl-scale loadtest", SUMMARY_COLUMNS, summary_rows(result), bold_last=bool(result.aggregated))
    for failure in result.failures[:10]:
        typer.echo(f"failure {failure.get('Name')}: {failure.get('Error')} x{failure.get('Occurrences')}")
    typer.echo(f"report: {result.html}  csv: {result.csv_prefix}_stats.csv")
    if not result.ok:
        why = (f"{result.total_failures} of {result.total_requests} requests failed" if result.total_requests
               else f"no requests completed (locust exit {result.returncode}; log: {out / 'locust.log'})")
        typer.echo(f"loadtest failed: {why}", err=True)
        raise typer.Exit(code=1)


@app.command(
    "bench",
    help=(
        "Benchmark, on this machine, in one run: (a) stock `chainlit run`, (b) 3 stock Chainlit instances "
        "with python-socketio's AsyncRedisManager, (c) 3 `cl-scale run` instances behind nginx. Echo p50/p99, "
        "2000-token stream, concurrent clients held, memory per idle connection, CPU per message; worker "
        "delivery against a raw emit with the same batching; render time. Writes bench/results.json and "
        "PNGs in bench/plots/; --readme regenerates the README section from results.json.\n\n"
        "Examples:\n\n"
        "\b\n"
        "  cl-scale bench                                  # full run: ~8 min, keep the machine quiet\n"
        "  cl-scale bench --quick --out /tmp/b             # smoke run: few iterations, few clients\n"
        "  cl-scale bench --only cl-scale --clients 10000  # capacity of (c) alone\n"
        "  cl-scale bench --paths                          # SDK vs HTTP gateway vs Kafka vs RabbitMQ bridge\n"
        "  cl-scale bench --autogen                        # AutoGen group chats: 1, 10, 100 at once\n"
        "  cl-scale bench --failover                       # SIGKILL -> notice / re-run, Sentinel, journal cost\n"
        "  cl-scale bench --page-load                      # page ready in Chromium: stock vs cl-scale, cold/warm\n"
        "  cl-scale bench --cost                           # CPU per chat message, one process each, and its floor\n"
        "  cl-scale bench --readme README.md               # regenerate the README section from results.json"
    ),
)
def bench_cmd(
    quick: bool = typer.Option(False, "--quick", help="Few iterations and clients: checks the harness, not the figures."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Directory for results.json and plots/ "
                                       "(default: bench/ of the source tree, else ./bench)."),
    clients: Optional[int] = typer.Option(None, help="Concurrent websocket clients to hold per setup "
                                          "(default 5000; --quick 30)."),
    only: Optional[str] = typer.Option(None, "--only", help="Comma-separated subset of setups: "
                                       "stock,stock-redis,cl-scale (default: all three)."),
    readme: Optional[Path] = typer.Option(None, "--readme", help="Rewrite the section between <!-- bench:start --> "
                                          "and <!-- bench:end --> in this file from results.json (and the "
                                          "bench-paths block from paths.json, when both exist), then exit."),
    paths: bool = typer.Option(False, "--paths", help="Instead: the four worker paths side by side (Redis SDK, "
                               "HTTP gateway, Kafka bridge on tansu, RabbitMQ bridge): latency and sustained "
                               "delivery of 10,000 messages each; writes paths.json and plots/paths.png."),
    failover: bool = typer.Option(False, "--failover", help="Instead: seconds from a SIGKILL to the interrupted "
                                  "notice / the re-run's first token, a Redis failover behind Sentinel, and the "
                                  "journal's cost side by side; writes failover.json and plots/failover.png."),
    page_load: bool = typer.Option(False, "--page-load", help="Instead: page ready (Socket.IO connected) in "
                                   "Debian's Chromium, stock Chainlit vs cl-scale behind the rendered nginx, cold "
                                   "and warm cache; writes pageload.json and plots/pageload.png."),
    cost: bool = typer.Option(False, "--cost", help="Instead: instance CPU per chat message like for like (stock, "
                              "cl-scale with and without the journal, one process each; three cl-scale processes), "
                              "one sender and many at once, beside the floor of two Redis round trips; writes "
                              "cost.json and plots/cost.png."),
    autogen: bool = typer.Option(False, "--autogen", help="Instead: distributed AutoGen group chats (1, 10, 100 at "
                                 "once) against AutoGen alone in one process: turns/s, chunk latency, lost; writes "
                                 "autogen.json and plots/autogen.png."),
) -> None:
    import importlib

    from cl_scale.bench import report, run
    from cl_scale.bench.setups import SETUPS

    # The benchmarks besides the main one: flag, module (run, readme_section, MARK_START/MARK_END),
    # its JSON and plot name, and what it needs before it starts.
    def autogen_ready():
        from cl_scale.cli.bridge_cmds import _autogen_check

        run.check_optional_dependencies()
        _autogen_check()

    def pageload_ready():
        importlib.import_module("cl_scale.bench.pageload").check()

    modes = [(paths, "paths", run.check_optional_dependencies), (autogen, "autogen", autogen_ready),
             (failover, "failover", run.check_optional_dependencies), (page_load, "pageload", pageload_ready),
             (cost, "cost", run.check_optional_dependencies)]
    if readme is not None:
        out_dir = out or run.default_out()
        report.update_readme(readme, out_dir / "results.json")
        for _, name, _ in modes:
            bench = importlib.import_module(f"cl_scale.bench.{name}")
            if (out_dir / f"{name}.json").is_file() and bench.MARK_START in readme.read_text():
                report.update_mode_block(readme, bench, out_dir / f"{name}.json")
        typer.echo(f"updated {readme} from {out_dir}")
        return
    for chosen, name, ready in modes:
        if chosen:
            ready()
            bench = importlib.import_module(f"cl_scale.bench.{name}")
            out_dir = out or (run.default_out() / "out" / "quick" if quick else run.default_out())
            results = bench.run(out_dir, quick=quick)
            typer.echo(bench.readme_section(results))
            typer.echo(f"wrote {out_dir / f'{name}.json'} and {out_dir / 'plots' / f'{name}.png'}")
            return
    if clients is not None and clients < 1:
        raise UserError(f"--clients {clients}: must be at least 1")
    selected = [s.strip() for s in only.split(",") if s.strip()] if only else None
    unknown = [s for s in selected or [] if s not in SETUPS]
    if unknown:
        raise UserError(f"--only {only!r}: unknown setup {unknown[0]!r} (choose from {', '.join(SETUPS)})")
    # A quick or partial run never overwrites the committed bench/results.json unless --out says so.
    out_dir = out or (run.default_out() / "out" / "quick" if quick or selected else run.default_out())
    results = run.run(out_dir, quick=quick, clients=clients, only=selected)
    typer.echo(report.readme_section(results))
    typer.echo(f"wrote {out_dir / 'results.json'} and {out_dir / 'plots'}/")
