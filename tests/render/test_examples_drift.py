"""The committed nginx/ and compose/ folders are exactly what examples/values.yaml renders to.
(k8s/ drift is checked by the k8s renderer's own tests.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from cl_scale.config.loader import load_values
from cl_scale.render import compose, nginx

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "values.yaml"
FIX = "re-render: cl-scale render {t} -f examples/values.yaml --out {t}"


def committed(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): p.read_text() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("target, renderer", [("nginx", nginx.render), ("compose", compose.render)])
def test_committed_output_matches_the_example_values(target, renderer):
    expected = renderer(load_values([EXAMPLE], []))
    actual = committed(ROOT / target)
    assert sorted(actual) == sorted(expected), FIX.format(t=target)
    for rel, text in expected.items():
        assert actual[rel] == text, f"{target}/{rel} drifted; " + FIX.format(t=target)


def test_example_has_three_replicas():
    assert load_values([EXAMPLE], []).replicas == 3
