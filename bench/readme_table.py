"""Regenerate the README's performance table (between <!-- bench:start --> and <!-- bench:end -->)
from bench/results.json.

    python bench/readme_table.py [README.md] [bench/results.json]
    (same as: cl-scale bench --readme README.md)
"""

from __future__ import annotations

import sys
from pathlib import Path

from cl_scale.errors import UserError
from cl_scale.loadtest.bench import update_readme

ROOT = Path(__file__).resolve().parent.parent

if __name__ == "__main__":
    readme = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "README.md"
    results = Path(sys.argv[2]) if len(sys.argv) > 2 else ROOT / "bench" / "results.json"
    try:
        update_readme(readme, results)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    print(f"updated {readme} from {results}")
