"""Bridge tests: a real Kafka (tansu) and a real RabbitMQ node per test session, each skipped with its
reason where the binary is missing; a bridge process (``cl-scale bridge``) per test."""

from __future__ import annotations

import pytest

from cl_scale.bench.brokers import RabbitNode, Tansu, Unavailable
from cl_scale.ops.processes import CL_SCALE, Proc, free_port, http_status
from tests.bridge.brokers import AmqpFace, KafkaFace

KEYS = "k1:secret-one,k2:secret-two;users=alice"
WORKER_ENV = {"CL_SCALE_WORKER_KEYS": KEYS}


@pytest.fixture(scope="session")
def tansu(tmp_path_factory):
    try:
        broker = Tansu(tmp_path_factory.mktemp("tansu")).start()
    except Unavailable as exc:
        pytest.skip(str(exc))
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def rabbit(tmp_path_factory):
    try:
        node = RabbitNode(tmp_path_factory.mktemp("rabbit"), tls=True).start()
    except Unavailable as exc:
        pytest.skip(str(exc))
    yield node
    node.stop()


@pytest.fixture(params=["kafka", "amqp"])
def broker(request):
    """The broker under test, behind one face (``tests.bridge.brokers``)."""
    if request.param == "kafka":
        return KafkaFace(request.getfixturevalue("tansu"))
    return AmqpFace(request.getfixturevalue("rabbit"))


class BridgeProcess:
    """``cl-scale bridge URL`` as its own process, with a health port."""

    def __init__(self, url: str, redis_url: str, tmp, *args: str, env: dict | None = None):
        self.health = free_port()
        self.cmd = [CL_SCALE, "bridge", url, "--redis-url", redis_url, "--health-port", str(self.health),
                    "--batch-size", "50", *args]
        self.env = {**WORKER_ENV, **(env or {})}
        self.tmp, self.n = tmp, 0
        self.proc: Proc | None = None

    def start(self, wait_ready: bool = True) -> "BridgeProcess":
        import time

        self.n += 1
        self.proc = Proc(self.cmd, env=self.env, log_path=self.tmp / f"bridge-{self.health}-{self.n}.log").start()
        if wait_ready:
            deadline = time.monotonic() + 30
            while http_status(f"http://127.0.0.1:{self.health}/readyz") != 200:
                if not self.proc.alive() or time.monotonic() > deadline:
                    raise AssertionError(f"bridge not ready: {self.proc.log()[-3000:]}")
                time.sleep(0.1)
        return self

    def stop(self) -> None:
        if self.proc:
            self.proc.stop()

    def kill(self) -> None:
        if self.proc:
            self.proc.kill()


@pytest.fixture
def bridges(tmp_path):
    made = []

    def make(url: str, redis_url: str, *args: str, env: dict | None = None) -> BridgeProcess:
        b = BridgeProcess(url, redis_url, tmp_path, *args, env=env)
        made.append(b)
        return b

    yield make
    for b in made:
        b.stop()
