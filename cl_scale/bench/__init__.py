"""The benchmark harness (``cl-scale bench``): setups, measurements, worker delivery, report.

``setups`` (the three clusters compared), ``measure`` (latency, capacity, cost), ``worker`` (worker
delivery like for like), ``report`` (README section and plots from ``results.json``), ``run``
(one run, all of it). Bench apps live in ``apps/``.
"""
