"""/metrics is valid Prometheus text (prometheus_client's own parser) and its figures move with traffic."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from cl_scale.ops.client import ChainlitClient


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples, name, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_parse_and_move_with_traffic(cluster):
    a, b = cluster.start(2).instances
    before_a, before_b = scrape(a.url), scrape(b.url)
    for name in ("clscale_sessions", "clscale_sockets", "clscale_listener_lag_seconds", "clscale_outbox_depth"):
        assert (name, ()) in before_a, f"{name} missing"
    assert value(before_a, "clscale_sessions") == 0

    alice = ChainlitClient(a.url)
    bob = ChainlitClient(b.url)
    await alice.connect()
    await bob.connect()
    try:
        for i in range(3):
            await alice.ask(f"hi{i}", contains=f"echo=hi{i}")
        await bob.ask(f"relay {alice.session_id} cross", contains="relayed")  # b → Redis → a
        await alice.wait_for(lambda: [e for _, e, _ in alice.events if e == "cl-scale"], 10)
        after_a, after_b = scrape(a.url), scrape(b.url)
        assert value(after_a, "clscale_sessions") == 1 and value(after_a, "clscale_sockets") == 1
        local = value(after_a, "clscale_emits_total", path="local") - value(before_a, "clscale_emits_total", path="local")
        assert local >= 6  # each reply is several local emits (task_start, new_message, task_end…)
        remote = value(after_b, "clscale_emits_total", path="remote") - value(before_b, "clscale_emits_total", path="remote")
        assert remote == 1  # one publish, to the one instance that holds alice
        assert 0 <= value(after_a, "clscale_listener_lag_seconds") < 10
    finally:
        await alice.close()
        await bob.close()

    # A session that moves is counted as restored on its new instance.
    moved = ChainlitClient(b.url, session_id=alice.session_id, reconnection=False)
    await moved.connect()
    try:
        await moved.ask("moved", contains="echo=moved")
        assert value(scrape(b.url), "clscale_sessions_restored_total") - value(before_b, "clscale_sessions_restored_total") == 1
    finally:
        await moved.close()
