"""Nothing a user sent is lost: messages that reach an instance while it shuts down are run by the
instance that restores the session (Chainlit's browser client never re-sends), and a reply cut short by
its instance's death is finished visibly — or, with ``cl_scale.rerun_interrupted``, run again once."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from cl_scale.ops.client import ChainlitClient
from cl_scale.wire.keyspace import Keyspace
from tests.runtime.test_failover import fields, starts

pytestmark = pytest.mark.slow
KEYS = Keyspace()


async def reached(redis_url: str, message_id: str) -> bool:
    """Did any instance receive this user message? (Each records it in the requests stream.)"""
    r = aioredis.Redis.from_url(redis_url)
    try:
        entries = await r.xrange(KEYS.requests)
    finally:
        await r.aclose()
    return any(f.get(b"message_id") == message_id.encode() for _, f in entries)


class PatientUser:
    """Chats back to back like Chainlit's browser client: sends each message once and waits, through
    reconnects. Only a message that never reached any instance (absent from the requests stream, where
    every instance records each user message it receives) is sent again: lost in transport, in the
    instant its socket closed, it is not the server's to answer."""

    def __init__(self, client: ChainlitClient, redis_url: str):
        self.client, self.redis_url = client, redis_url
        self.sent, self.lost_in_transport = [], []

    def answers(self) -> list[str]:
        return [fields(m).get("echo") for m in self.client.messages() if "echo=" in str(m.get("output"))]

    async def run(self, stop: asyncio.Event) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            text = f"p{n}."
            await self.client.wait_for(lambda: self.client.sio.connected, 60)
            try:
                message_id = await self.client.send(text)
            except Exception:  # noqa: BLE001 - not connected after all: never sent
                n -= 1
                await asyncio.sleep(0.2)
                continue
            try:
                await self.client.wait_for(lambda text=text: text in self.answers(), 10)
            except TimeoutError:
                if not await reached(self.redis_url, message_id):
                    self.lost_in_transport.append(text)
                    n -= 1
                    continue
                try:
                    await self.client.wait_for(lambda text=text: text in self.answers(), 50)
                except TimeoutError:
                    raise AssertionError(f"session {self.client.session_id}: {text} reached an instance and "
                                         "was never answered") from None
            self.sent.append(text)
            await asyncio.sleep(0.02)


async def test_messages_sent_during_a_rolling_restart_are_all_answered(cluster):
    """12 users chat back to back through nginx while each of 3 instances is SIGTERMed and restarted in
    turn; nobody re-sends what reached an instance. Every such message is answered exactly once, in
    order — those that reached a closing instance included (journaled, run by the next owner)."""
    cluster.start(3, nginx=True, env={"CL_SCALE_DRAIN_SECONDS": "5", "CL_SCALE_PUBLISH_REQUESTS": "1"})
    clients = [ChainlitClient(cluster.nginx.url, source_address=f"127.0.{n + 1}.1") for n in range(12)]
    await asyncio.gather(*(c.connect(timeout=20) for c in clients))
    await asyncio.gather(*(c.wait_for(lambda c=c: starts(c), 20) for c in clients))
    users = [PatientUser(c, cluster.redis_url) for c in clients]
    stop = asyncio.Event()
    tasks = [asyncio.create_task(u.run(stop)) for u in users]
    try:
        await asyncio.sleep(1.0)
        for inst in list(cluster.instances):
            await asyncio.to_thread(cluster.restart, inst)
            await asyncio.sleep(1.0)
        stop.set()
        done, pending = await asyncio.wait(tasks, timeout=120)
        assert not pending, [(u.sent[-1:], u.answers()[-1:]) for u in users]
        for t in done:
            t.result()
    finally:
        stop.set()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
    for u in users:
        assert u.answers() == u.sent, (u.sent, u.answers())  # each once, in order
        counts = [int(fields(m)["count"]) for m in u.client.messages() if "echo=" in str(m.get("output"))]
        assert counts == list(range(1, len(counts) + 1))
    journaled = sum(open(p).read().count("journaled for the next owner") for p in (cluster.work_dir / "logs").glob("*.log"))
    print(f"messages answered: {sum(len(u.sent) for u in users)}; reached a closing instance and were run by the "
          f"next owner: {journaled}; lost in transport (never reached an instance): "
          f"{sum(len(u.lost_in_transport) for u in users)}")
    assert journaled >= 1, "the rolling restart never hit a closing instance: the test proves nothing"


async def _killed_mid_reply(cluster, rerun: bool, text: str = "slowstream 30 0.1"):
    env = {"TEST_RERUN_INTERRUPTED": "1", "TEST_RUN_LOG": str(cluster.work_dir / "runs.log")} if rerun else {}
    a, b = cluster.start(2, env=env).instances
    client = ChainlitClient(a.url, reconnection=False)
    await client.connect()
    await client.wait_for(lambda: starts(client), 20)
    await client.send(text)
    await client.wait_for(lambda: client.counts.get("stream_token", 0) >= 5, 20)  # a few tokens shown
    a.kill()
    await client.close()
    again = ChainlitClient(b.url, session_id=client.session_id, thread_id=client.thread_id, reconnection=False)
    await again.connect()
    return client, again


async def test_a_reply_cut_by_a_sigkill_is_finished_visibly_and_the_app_told(cluster):
    client, again = await _killed_mid_reply(cluster, rerun=False)
    try:
        await again.wait_for(lambda: any("was interrupted" in str(m.get("output")) for m in again.messages()), 20)
        r = aioredis.Redis.from_url(cluster.redis_url)
        try:  # settled, nothing left to resume: right *after* the notice and the app's callbacks (at
            for _ in range(100):  # least once: an owner dying between them sends the notice again) - bounded
                if await r.hlen(KEYS.journal(client.session_id)) == 0:
                    break
                await asyncio.sleep(0.1)
            assert await r.hlen(KEYS.journal(client.session_id)) == 0
        finally:
            await r.aclose()
        reply = await again.ask("after", contains="echo=after")
        assert fields(reply)["instance"] == "inst2"  # the session goes on where it was restored
        notices = [m for m in again.messages() if "was interrupted" in str(m.get("output"))]
        assert len(notices) == 1
    finally:
        await again.close()


async def test_with_rerun_interrupted_the_user_simply_gets_the_answer(cluster):
    client, again = await _killed_mid_reply(cluster, rerun=True)
    try:
        full = " ".join(f"s{i}" for i in range(30)) + " "
        await again.wait_for(lambda: any(m.get("output") == full for m in again.messages()), 30)
        assert not any("was interrupted" in str(m.get("output")) for m in again.messages())
        partial = {d.get("id") for _, e, d in client.events if e == "stream_start" and isinstance(d, dict)}
        removed = {d.get("id") for _, e, d in again.events if e == "delete_message" and isinstance(d, dict)}
        assert partial and partial <= removed  # the partial reply was taken off the screen
        runs = _runs(cluster)
        assert [r[1] for r in runs] == ["inst1", "inst2"] and len({r[0] for r in runs}) == 1
        answers = [m for m in again.messages() if m.get("output") == full]
        assert len(answers) == 1  # one complete answer
    finally:
        await again.close()


def _runs(cluster, finished: bool = False) -> list[list[str]]:
    """(message id, instance) of each start of the ``slowstream`` handler (or, ``finished``, each end)."""
    lines = [line.split() for line in (cluster.work_dir / "runs.log").read_text().splitlines()]
    return [line[:2] for line in lines if (len(line) == 3) == finished]


async def test_a_reply_whose_session_a_peer_took_over_stops_where_it_was(cluster):
    """The client reconnected to another instance while its reply was still running (a network blip,
    a balancer that moved it): the peer restored the session and re-runs the message (the journal),
    so the old instance's run — on a copy that is no longer the session: Chainlit would hand it an
    empty ``user_session`` — must stop, not finish its work a second time beside the re-run."""
    env = {"TEST_RERUN_INTERRUPTED": "1", "TEST_RUN_LOG": str(cluster.work_dir / "runs.log")}
    a, b = cluster.start(2, env=env).instances
    client = ChainlitClient(a.url, reconnection=False)
    await client.connect()
    await client.wait_for(lambda: starts(client), 20)
    await client.send("slowstream 30 0.1")
    await client.wait_for(lambda: client.counts.get("stream_token", 0) >= 5, 20)
    again = ChainlitClient(b.url, session_id=client.session_id, thread_id=client.thread_id, reconnection=False)
    try:
        await again.connect()
        full = " ".join(f"s{i}" for i in range(30)) + " "
        await again.wait_for(lambda: any(m.get("output") == full for m in again.messages()), 30)
        await asyncio.sleep(3.5)  # what the first run had left to stream, and more
        assert [r[1] for r in _runs(cluster)] == ["inst1", "inst2"]
        assert [r[1] for r in _runs(cluster, finished=True)] == ["inst2"], "the old owner's run went on"
        assert len([m for m in again.messages() if m.get("output") == full]) == 1
    finally:
        await asyncio.gather(client.close(), again.close())


async def test_rerun_decided_per_message(cluster):
    """``cl_scale.rerun_interrupted`` as a predicate: this message says no, so the notice, not a re-run."""
    client, again = await _killed_mid_reply(cluster, rerun=True, text="slowstream 30 0.1 norerun")
    try:
        await again.wait_for(lambda: any("was interrupted" in str(m.get("output")) for m in again.messages()), 20)
        await asyncio.sleep(1.0)
        assert not any(str(m.get("output")).startswith("s0 ") for m in again.messages())
    finally:
        await again.close()


async def test_a_handler_that_kills_every_instance_runs_at_most_twice(cluster):
    """``die`` takes its instance down each time: run, re-run once on the next owner, then the notice
    on the third — never a loop through the whole cluster."""
    a, b, c = cluster.start(3, env={"TEST_RERUN_INTERRUPTED": "1"}).instances
    client = ChainlitClient(a.url, reconnection=False)
    await client.connect()
    await client.wait_for(lambda: starts(client), 20)
    await client.send("die")
    for _ in range(100):  # bounded: until a is gone
        if not a.proc.alive():
            break
        await asyncio.sleep(0.1)
    await client.close()
    second = ChainlitClient(b.url, session_id=client.session_id, thread_id=client.thread_id, reconnection=False)
    await second.connect()
    for _ in range(100):  # the re-run takes b down too
        if not b.proc.alive():
            break
        await asyncio.sleep(0.1)
    assert not b.proc.alive()
    await second.close()
    third = ChainlitClient(c.url, session_id=client.session_id, thread_id=client.thread_id, reconnection=False)
    await third.connect()
    try:
        await third.wait_for(lambda: any("was interrupted" in str(m.get("output")) for m in third.messages()), 20)
        await asyncio.sleep(1.0)
        assert c.proc.alive()
    finally:
        await third.close()


async def test_twelve_streamed_replies_in_flight_and_one_instance_killed(cluster):
    """Each of 12 sessions (4 per instance) has a streamed reply in flight; one instance is SIGKILLed.
    Its 4 sessions each get exactly one notice on reconnecting elsewhere; the other 8 finish their
    replies and see nothing unusual."""
    a, b, c = cluster.start(3).instances
    clients = [ChainlitClient(inst.url, reconnection=False) for inst in (a, b, c) for _ in range(4)]
    await asyncio.gather(*(cl.connect() for cl in clients))
    await asyncio.gather(*(cl.wait_for(lambda cl=cl: starts(cl), 20) for cl in clients))
    full = " ".join(f"s{i}" for i in range(40)) + " "
    moved = []
    try:
        for cl in clients:
            await cl.send("slowstream 40 0.1")
        await asyncio.gather(*(cl.wait_for(lambda cl=cl: cl.counts.get("stream_token", 0) >= 3, 20) for cl in clients))
        a.kill()
        for cl in clients[:4]:
            await cl.close()
            again = ChainlitClient(b.url, session_id=cl.session_id, thread_id=cl.thread_id, reconnection=False)
            await again.connect()
            moved.append(again)
        for again in moved:
            await again.wait_for(lambda again=again: any("was interrupted" in str(m.get("output"))
                                                         for m in again.messages()), 20)
        for cl in clients[4:]:
            await cl.wait_for(lambda cl=cl: any(m.get("output") == full for m in cl.messages()), 30)
        await asyncio.sleep(1.0)
        for again in moved:
            assert sum("was interrupted" in str(m.get("output")) for m in again.messages()) == 1
        for cl in clients[4:]:
            assert not any("was interrupted" in str(m.get("output")) for m in cl.messages())
    finally:
        for cl in clients[4:] + moved:
            await cl.close()


class BusyUser(PatientUser):
    """A patient user whose messages alternate: an echo, a streamed reply, and a question about a file
    uploaded earlier (``CL_SCALE_UPLOADS=redis``: readable wherever the session moves)."""

    def __init__(self, client: ChainlitClient, redis_url: str, file_id: str, digest: str):
        super().__init__(client, redis_url)
        self.file_id, self.digest, self.streams = file_id, digest, 0
        self.full_stream = " ".join(f"t{i}" for i in range(20)) + " "

    def streamed(self) -> int:
        ids = {m["id"] for m in self.client.messages() if m.get("output") == self.full_stream}
        return len(ids)

    async def run(self, stop: asyncio.Event) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            kind = n % 3
            text = {0: f"p{n}.", 1: "stream 20", 2: "filehash"}[kind]
            await self.client.wait_for(lambda: self.client.sio.connected, 60)
            try:
                files = [{"id": self.file_id}] if kind == 2 else []
                message_id = await self.client.send_with_files(text, files)
            except Exception:  # noqa: BLE001 - not connected after all: never sent
                n -= 1
                await asyncio.sleep(0.2)
                continue
            want_streams = self.streams + 1

            def done(kind=kind, text=text, since=len(self.client.events), want_streams=want_streams) -> bool:
                if kind == 1:
                    return self.streamed() >= want_streams
                needle = f"echo={text}" if kind == 0 else f"echo=filehash={self.digest}"
                return any(needle in str(m.get("output")) for m in self.client.messages(since))

            try:
                await self.client.wait_for(done, 10)
            except TimeoutError:
                if not await reached(self.redis_url, message_id):
                    self.lost_in_transport.append(text)
                    n -= 1
                    continue
                try:
                    await self.client.wait_for(done, 50)
                except TimeoutError:
                    raise AssertionError(f"session {self.client.session_id}: {text} reached an instance and "
                                         "was never answered") from None
            if kind == 1:
                self.streams += 1
            self.sent.append(text)
            await asyncio.sleep(0.02)


async def test_rolling_restart_with_uploads_streams_and_workers_in_flight(cluster):
    """Six users chat (echoes, streamed replies, questions about their uploaded file) while a worker
    sends into every session every 50 ms and each of 3 instances is restarted in turn: every message
    that reached an instance answered once, every streamed reply complete once, every upload readable
    wherever the session went, every accepted worker message shown once."""
    import hashlib

    from cl_scale.worker import Publisher
    from tests.worker.helpers import shown

    cluster.start(3, nginx=True, env={"CL_SCALE_DRAIN_SECONDS": "5", "CL_SCALE_PUBLISH_REQUESTS": "1",
                                      "CL_SCALE_UPLOADS": "redis", "CL_SCALE_WORKER_KEYS": "k1:secret-one"})
    clients = [ChainlitClient(cluster.nginx.url, source_address=f"127.0.{n + 1}.1") for n in range(6)]
    await asyncio.gather(*(c.connect(timeout=20) for c in clients))
    await asyncio.gather(*(c.wait_for(lambda c=c: starts(c), 20) for c in clients))
    users = []
    for i, c in enumerate(clients):
        content = f"file of user {i}\n".encode() * 500
        uploaded = await c.upload(f"u{i}.txt", content)
        users.append(BusyUser(c, cluster.redis_url, uploaded["id"], hashlib.sha256(content).hexdigest()))
    pub = Publisher(cluster.redis_url, "k1", "secret-one")
    stop = asyncio.Event()
    sent: list[tuple[str, str]] = []

    async def worker():
        k = 0
        while not stop.is_set():
            k += 1
            for c in clients:
                await pub.send(c.session_id, f"w{k:04d}", message_id=f"w{k:04d}-{c.session_id[:8]}")
                sent.append((c.session_id, f"w{k:04d}"))
            await asyncio.sleep(0.05)

    tasks = [asyncio.create_task(u.run(stop)) for u in users] + [asyncio.create_task(worker())]
    try:
        await asyncio.sleep(1.0)
        for inst in list(cluster.instances):
            await asyncio.to_thread(cluster.restart, inst)
            await asyncio.sleep(1.0)
        stop.set()
        done, pending = await asyncio.wait(tasks, timeout=120)
        assert not pending
        for t in done:
            t.result()
        await pub.flush(30)
        for c in clients:
            want = sorted(text for sid, text in sent if sid == c.session_id)
            await c.wait_for(lambda c=c, want=want: sorted(set(shown([c]))) == want, 30)
            assert len(shown([c])) == len(want)  # each once
    finally:
        stop.set()
        for t in tasks:
            t.cancel()
        await pub.aclose()
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
    for u in users:
        echoes = [t for t in u.sent if t.startswith("p")]
        assert [a for a in u.answers() if a.startswith("p")] == echoes  # each once, in order
        assert u.streamed() == u.streams  # each streamed reply complete, once
        assert u.sent.count("filehash") >= 1
    print(f"messages answered: {sum(len(u.sent) for u in users)}, streamed replies: "
          f"{sum(u.streams for u in users)}, worker messages: {len(sent)}, lost in transport: "
          f"{sum(len(u.lost_in_transport) for u in users)}")
