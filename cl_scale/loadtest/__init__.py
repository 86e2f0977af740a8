"""Load tests: the locust Chainlit user and ``cl-scale loadtest`` (the benchmark is ``cl_scale.bench``)."""

from pathlib import Path

HERE = Path(__file__).resolve().parent
LOCUSTFILE = HERE / "locustfile.py"

SCENARIOS = ("chat", "stream", "push", "reconnect", "all")
#: The request names each scenario reports to locust (CSV rows), ``connect`` included.
REQUEST_NAMES = {
    "chat": ["connect", "chat: round trip"],
    "stream": ["connect", "stream: first token", "stream: last token"],
    "push": ["connect", "push: publish", "push: delivery"],
    "reconnect": ["connect", "reconnect: storm", "reconnect: first reply"],
}
REQUEST_NAMES["all"] = list(dict.fromkeys(n for s in SCENARIOS[:-1] for n in REQUEST_NAMES[s]))
