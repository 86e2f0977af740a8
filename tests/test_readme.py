"""The README's claims that tests can check: the bad-input counts are the tables' sizes."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import test_bad_input
from tests.bridge import test_bridges
from tests.gateway import test_gateway_app, test_gateway_server
from tests.grpc import test_grpc_bad_input
from tests.runtime import test_bad_requests

README = Path(__file__).resolve().parents[1] / "README.md"


def bad_input_counts() -> str:
    cli = len(test_bad_input.CASES)
    http = (len(test_gateway_app.BAD_REQUESTS) + len(test_gateway_server.BAD_BODIES) + test_gateway_server.SLOW_OR_GONE
            + len(test_bad_requests.COOKIE_CASES) + len(test_bad_requests.ENGINEIO_JUNK))
    broker = len(test_bridges.bad_messages("s" * 8, "g" * 8))
    grpc_calls = len(test_grpc_bad_input.cases(test_grpc_bad_input.stubs()[0], "s" * 8))
    return (f"**{cli} bad command-line inputs** (`tests/test_bad_input.py`), **{http} bad HTTP requests** "
            "to the gateway and the instances (`tests/gateway/`, `tests/runtime/test_bad_requests.py`, "
            f"answered with a 4xx, JSON where cl-scale answers), **{grpc_calls} bad gRPC calls** "
            "(`tests/grpc/test_grpc_bad_input.py`, each its status code and a one-line reason) and "
            f"**{broker} bad broker messages** on each "
            "of Kafka and RabbitMQ (`tests/bridge/test_bridges.py`, dead-lettered with their reason and "
            "acknowledged) are tested that way.")


def test_readme_counts_the_bad_input_tables():
    text = README.read_text()
    block = text.split("<!-- bad-input:start -->\n", 1)[1].split("\n<!-- bad-input:end -->", 1)[0]
    assert block == bad_input_counts(), f"README bad-input block should read:\n{bad_input_counts()}"


def test_readme_performance_section_is_generated_from_results_json():
    import json

    from cl_scale.bench.report import MARK_END, MARK_START, readme_section

    results = json.loads((README.parent / "bench" / "results.json").read_text())
    block = README.read_text().split(MARK_START + "\n", 1)[1].split("\n" + MARK_END, 1)[0]
    assert block == readme_section(results), "regenerate: cl-scale bench --readme README.md"


@pytest.mark.parametrize("name", ["paths", "autogen", "failover", "pageload", "cost"])
def test_readme_benchmark_blocks_are_generated_from_their_json(name):
    import importlib
    import json

    bench = importlib.import_module(f"cl_scale.bench.{name}")
    results = json.loads((README.parent / "bench" / f"{name}.json").read_text())
    block = README.read_text().split(bench.MARK_START + "\n", 1)[1].split("\n" + bench.MARK_END, 1)[0]
    assert block == bench.readme_section(results), "regenerate: cl-scale bench --readme README.md"
