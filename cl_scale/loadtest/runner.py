"""``cl-scale loadtest``: locust headless as a subprocess (gevent must not patch this process),
CSV + HTML report, a summary table, and a verdict (non-zero when any request failed)."""

from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from cl_scale.errors import UserError
from cl_scale.loadtest import LOCUSTFILE, SCENARIOS

_DURATION = re.compile(r"^(\d+h)?(\d+m)?(\d+s)?$|^\d+$")


def duration_seconds(text: str) -> int:
    """Locust's ``--run-time`` syntax: 30, 30s, 5m, 1h30m."""
    text = text.strip()
    if not text or not _DURATION.match(text):
        raise UserError(f"--run-time {text!r}: expected seconds or a duration like 30s, 5m, 1h30m")
    if text.isdigit():
        return int(text)
    total = 0
    for amount, unit in re.findall(r"(\d+)([hms])", text):
        total += int(amount) * {"h": 3600, "m": 60, "s": 1}[unit]
    return total


@dataclass
class LoadtestResult:
    returncode: int
    rows: list[dict] = field(default_factory=list)  # the locust stats CSV, minus the Aggregated row
    aggregated: dict = field(default_factory=dict)
    failures: list[dict] = field(default_factory=list)
    csv_prefix: Path | None = None
    html: Path | None = None
    log: str = ""

    @property
    def total_failures(self) -> int:
        return int(self.aggregated.get("Failure Count", 0) or 0)

    @property
    def total_requests(self) -> int:
        return int(self.aggregated.get("Request Count", 0) or 0)

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and self.total_failures == 0 and self.total_requests > 0


def validate_url(url: str) -> str:
    if not re.match(r"^https?://[^/\s]+", url or ""):
        raise UserError(f"URL {url!r}: expected http(s)://host[:port] of the load balancer or an instance")
    return url.rstrip("/")


def run_locust(url: str, *, users: int, spawn_rate: float, run_time: str, scenario: str = "chat",
               out_dir: Path, locustfile: Path | None = None, stream_tokens: int = 200, spread: int = 0,
               redis_url: str = "", worker_key: str = "", storm_period: float = 10.0,
               extra_env: dict | None = None, quiet: bool = True) -> LoadtestResult:
    """Run locust headless; returns the parsed CSV. Raises UserError for bad input."""
    url = validate_url(url)
    if users < 1:
        raise UserError(f"--users {users}: must be at least 1")
    if spawn_rate <= 0:
        raise UserError(f"--spawn-rate {spawn_rate}: must be positive")
    if scenario not in SCENARIOS:
        raise UserError(f"--scenario {scenario!r}: expected one of {', '.join(SCENARIOS)}")
    if spread < 0 or spread > 254:
        raise UserError(f"--spread {spread}: must be between 0 and 254")
    if scenario in ("push", "all") and not (redis_url and worker_key and ":" in worker_key):
        raise UserError(f"--scenario {scenario} needs --redis-url and --worker-key KID:SECRET (a key the "
                        "instances accept in CL_SCALE_WORKER_KEYS)")
    seconds = duration_seconds(run_time)
    import importlib.util

    def absent(module: str) -> bool:  # found without importing it: importing locust patches this process
        try:
            return importlib.util.find_spec(module) is None
        except (ImportError, ValueError):
            return True

    missing = [pkg for module, pkg in (("locust", "locust"), ("websocket", "websocket-client")) if absent(module)]
    if missing:
        raise UserError(f"{', '.join(missing)} not installed: pip install 'cl-scale[loadtest]'")
    locustfile = Path(locustfile or LOCUSTFILE)
    if not locustfile.is_file():
        raise UserError(f"--locustfile {locustfile}: no such file")
    out_dir.mkdir(parents=True, exist_ok=True)
    prefix, html = out_dir / "locust", out_dir / "report.html"
    cmd = [sys.executable, "-m", "locust", "-f", str(locustfile), "--headless", "--host", url,
           "--users", str(users), "--spawn-rate", str(spawn_rate), "--run-time", str(seconds),
           "--csv", str(prefix), "--html", str(html), "--only-summary", "--stop-timeout", "10",
           "--scenario", scenario, "--stream-tokens", str(stream_tokens), "--spread", str(spread),
           "--storm-period", str(storm_period), "--loglevel", "WARNING"]
    if redis_url:
        cmd += ["--redis-url", redis_url]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(extra_env or {})}
    if worker_key:
        env["CL_SCALE_WORKER_KEY"] = worker_key  # not on the command line: ps would show the secret
    log_path = out_dir / "locust.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log if quiet else None, stderr=subprocess.STDOUT if quiet else None,
                                start_new_session=True)
        try:
            returncode = proc.wait(timeout=seconds + 90)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
            returncode = 124
        except KeyboardInterrupt:
            os.kill(proc.pid, signal.SIGINT)
            proc.wait(timeout=30)
            raise
    result = LoadtestResult(returncode=returncode, csv_prefix=prefix, html=html,
                            log=log_path.read_text(errors="replace") if log_path.exists() else "")
    stats = Path(f"{prefix}_stats.csv")
    if stats.exists():
        with open(stats, newline="") as fh:
            for row in csv.DictReader(fh):
                (result.aggregated.update(row) if row.get("Name") == "Aggregated" else result.rows.append(row))
    failures = Path(f"{prefix}_failures.csv")
    if failures.exists():
        with open(failures, newline="") as fh:
            result.failures = list(csv.DictReader(fh))
    return result


SUMMARY_COLUMNS = ["request", "count", "failures", "p50 ms", "p95 ms", "p99 ms", "max ms", "req/s"]


def summary_rows(result: LoadtestResult) -> list[list[str]]:
    return [[row.get("Name", "?"), row.get("Request Count", ""), row.get("Failure Count", ""), row.get("50%", ""),
             row.get("95%", ""), row.get("99%", ""), _num(row.get("Max Response Time", "")),
             _num(row.get("Requests/s", ""), 1)]
            for row in [*result.rows, *([result.aggregated] if result.aggregated else [])]]


def _num(text: str, digits: int = 0) -> str:
    try:
        return f"{float(text):.{digits}f}"
    except (TypeError, ValueError):
        return text or ""
