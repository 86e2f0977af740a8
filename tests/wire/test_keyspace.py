"""The keyspace is the one owner of key names: documented, hash-tagged, and spelled nowhere else."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from cl_scale.wire import dead_letters
from cl_scale.wire.keyspace import Keyspace, room_name, valid_session_id

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "keyspace.md").read_text()
# What a hand-built key or channel would look like in source: a prefix variable or literal followed
# by one of the keyspace's segments.
SPELLED = re.compile(r"""(\{[^}]*prefix[^}]*\}|clscale):(session|ctx|instance|instances|room|sio|wk)\b""")


def _names() -> list[str]:
    return [n for n, _ in inspect.getmembers(Keyspace) if not n.startswith("_") and n not in ("prefix", "acl_rules")]


def test_every_key_is_documented_and_under_the_prefix():
    ks = Keyspace("app1")
    for name in _names():
        attr = getattr(ks, name)
        if name == "permanent":
            continue
        assert f"`{name}" in DOC, f"Keyspace.{name} missing from docs/keyspace.md"
        value = attr if isinstance(attr, str) else attr(*["x"] * len(inspect.signature(attr).parameters))
        assert value.startswith("app1:"), (name, value)
    assert ks.permanent() == {ks.outbox_index, ks.dead_letters, ks.workers, ks.requests}
    for code in dead_letters.CODES:
        assert code  # every refusal code has a meaning (documented in CODES)


def test_a_sessions_keys_share_one_cluster_slot():
    ks = Keyspace()
    sid = "3f2c9a1e-0000-4000-8000-000000000001"
    tagged = [ks.session(sid), ks.context(sid), ks.outbox(sid), ks.seen(sid, "e1"), ks.attempts(sid)]
    assert {re.search(r"\{([^}]*)\}", k).group(1) for k in tagged} == {sid}


@pytest.mark.parametrize("prefix", ["", "a}{b", "a b", "x" * 65, "a:b"])
def test_unsafe_prefixes_are_refused(prefix):
    with pytest.raises(ValueError):
        Keyspace(prefix)


def test_session_ids_and_rooms():
    assert valid_session_id("3f2c9a1e-aaaa") and not valid_session_id("short") and not valid_session_id("a" * 20 + "\n")
    assert room_name("session", "s1") == "session:s1"
    with pytest.raises(ValueError):
        room_name("planet", "x")


def test_no_key_is_spelled_outside_the_keyspace():
    offenders = []
    for path in [*ROOT.joinpath("cl_scale").rglob("*.py"), *ROOT.joinpath("tests").rglob("*.py"),
                 *ROOT.joinpath("examples").rglob("*.py")]:
        if path.name == "keyspace.py" and path.parent.name == "wire" or path == Path(__file__):
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if SPELLED.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert offenders == []
