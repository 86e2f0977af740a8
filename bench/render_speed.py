"""Render speed: median wall time of the whole `cl-scale render TARGET --out <tmp>` process
(interpreter start + imports + validation + render + write), 15 runs per target. Prints JSON.

  python bench/render_speed.py [--runs 15] [--targets k8s,nginx,compose]

A target whose renderer is missing (e.g. k8s before it exists) is reported with its error.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "values.yaml"


def measure(target: str, runs: int) -> dict:
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(runs):
            out = Path(tmp) / f"{target}-{i}"
            start = time.perf_counter()
            result = subprocess.run([sys.executable, "-m", "cl_scale", "render", target, "-f", str(EXAMPLE),
                                     "--out", str(out)], capture_output=True, text=True, timeout=120)
            elapsed = time.perf_counter() - start
            if result.returncode != 0:
                return {"target": target, "error": result.stderr.strip()[-300:]}
            times.append(elapsed)
    return {"target": target, "runs": runs, "median_s": round(statistics.median(times), 4),
            "min_s": round(min(times), 4), "max_s": round(max(times), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--targets", default="k8s,nginx,compose")
    args = parser.parse_args()
    results = [measure(t, max(1, min(args.runs, 1000))) for t in args.targets.split(",") if t]
    print(json.dumps({"python": sys.version.split()[0], "results": results}, indent=2))


if __name__ == "__main__":
    main()
