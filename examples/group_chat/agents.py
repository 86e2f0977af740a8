"""Three agents (planner -> critic -> writer) that talk among themselves and stream into the user's chat.

No Chainlit here: each agent is a plain process with the cl-scale worker SDK. They share one Redis
stream of turns (``groupchat:turns``); each agent has its own consumer group, acts on the turns
addressed to it, streams its answer into the user's chat, and hands the conversation on.
The "LLM" is deterministic fake text, so the example runs offline.

    python agents.py planner      # one agent
    python agents.py --all        # all three, as three processes
    python agents.py --all --kafka 127.0.0.1:9092   # the Kafka variant: no Redis, no key here

Kafka variant: the app publishes each question to the topic ``groupchat-requests``
(``cl_scale.outbound``); the planner consumes it, every agent hands the conversation on over
``groupchat-turns`` and streams its turn as JSON stream parts to ``groupchat-replies``, which
``cl-scale bridge`` forwards into the user's chat. All topics are keyed by session id.

Redis and the signing key come from the worker settings cl-scale's own commands use: --redis-url or
$CL_SCALE_REDIS_URL, $CL_SCALE_WORKER_KEY (id:secret) or $CL_SCALE_WORKER_KEYS — or, run from the folder
where `cl-scale up` started a local cluster, that cluster's Redis and development key.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import signal
import subprocess
import sys

import redis.asyncio as aioredis

from cl_scale.errors import UserError
from cl_scale.worker import Publisher
from cl_scale.worker.settings import WorkerSettings

TURNS = "groupchat:turns"
ORDER = ["planner", "critic", "writer"]
STYLE = {
    "planner": "Plan for {q!r}: first {a}, then {b}, finally {c}.",
    "critic": "Critique: the plan skips {a}; check {b} before {c}.",
    "writer": "Answer: considering {a}, {b} and {c}, here is a short reply to {q!r}.",
}
WORDS = ["scope", "data", "risks", "users", "costs", "tests", "latency", "rollout", "budget", "docs"]


def fake_llm(agent: str, question: str, transcript: str) -> list[str]:
    """Deterministic tokens from a hash of the conversation (no network)."""
    h = hashlib.sha256(f"{agent}|{question}|{transcript}".encode()).digest()
    a, b, c = (WORDS[x % len(WORDS)] for x in h[:3])
    text = STYLE[agent].format(q=question[:60], a=a, b=b, c=c)
    return [w + " " for w in text.split(" ")]


async def run_agent(name: str, redis_url: str, key_id: str, key: str, delay: float) -> None:
    r = aioredis.Redis.from_url(redis_url)
    group = f"agent-{name}"
    try:
        await r.xgroup_create(TURNS, group, id="$", mkstream=True)
    except aioredis.ResponseError:
        pass  # exists
    nxt = ORDER[ORDER.index(name) + 1] if name != ORDER[-1] else None
    async with Publisher(redis_url, key_id=key_id, key=key, author=name.title()) as pub:
        print(f"{name}: listening on {TURNS}", flush=True)
        while True:
            reply = await r.xreadgroup(group, name, {TURNS: ">"}, count=10, block=1000)
            for _, entries in reply or []:
                for eid, f in entries:
                    turn = {k.decode(): v.decode() for k, v in f.items()}
                    if turn.get("to") == name:
                        # One message id per (turn entry, agent): a redelivered turn re-renders nothing new.
                        mid = f"{name}-{eid.decode()}"
                        async with pub.stream(turn["session"], message_id=mid) as s:
                            for tok in fake_llm(name, turn["question"], turn["transcript"]):
                                await s.token(tok)
                                await asyncio.sleep(delay)
                        if nxt:
                            said = "".join(fake_llm(name, turn["question"], turn["transcript"]))
                            await r.xadd(TURNS, {**turn, "to": nxt,
                                                 "transcript": turn["transcript"] + f"\n{name}: {said}"},
                                         maxlen=10_000, approximate=True)
                    await r.xack(TURNS, group, eid)


REQUESTS, KTURNS, REPLIES = "groupchat-requests", "groupchat-turns", "groupchat-replies"


async def run_kafka_agent(name: str, bootstrap: str, delay: float) -> None:
    """The same agent over Kafka: reads its turns, streams its answer as ``kind: stream`` parts to the
    bridge's topic, hands the conversation on. A redelivered turn reuses its message id (topic,
    partition, offset), so it renders once."""
    import json

    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    source = REQUESTS if name == ORDER[0] else KTURNS
    consumer = AIOKafkaConsumer(source, bootstrap_servers=bootstrap, group_id=f"agent-{name}",
                                enable_auto_commit=False, auto_offset_reset="earliest", fetch_max_wait_ms=50)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await consumer.start()
    await producer.start()
    nxt = ORDER[ORDER.index(name) + 1] if name != ORDER[-1] else None
    print(f"{name}: listening on {source}", flush=True)
    try:
        while True:
            for tp, records in (await consumer.getmany(timeout_ms=1000)).items():
                for rec in records:
                    turn = json.loads(rec.value)
                    if name == ORDER[0]:  # a user's request from cl_scale.outbound
                        turn = {"session": turn["session_id"], "to": name, "question": turn["text"],
                                "transcript": ""}
                    if turn.get("to") != name:
                        continue
                    sid, mid = turn["session"], f"{name}-{tp.partition}-{rec.offset}"
                    tokens = fake_llm(name, turn["question"], turn["transcript"])
                    for i, tok in enumerate(tokens):
                        await producer.send(REPLIES, json.dumps({
                            "kind": "stream", "session_id": sid, "id": mid, "author": name.title(),
                            "tokens": [tok], "offset": i, "end": False}).encode(), key=sid.encode())
                        await asyncio.sleep(delay)
                    await producer.send(REPLIES, json.dumps({
                        "kind": "stream", "session_id": sid, "id": mid, "author": name.title(), "tokens": [],
                        "offset": len(tokens), "end": True, "text": "".join(tokens)}).encode(), key=sid.encode())
                    if nxt:
                        await producer.send(KTURNS, json.dumps({
                            **turn, "to": nxt, "transcript": turn["transcript"] + f"\n{name}: {''.join(tokens)}"
                        }).encode(), key=sid.encode())
                    await producer.flush()
                await consumer.commit()
    finally:
        await consumer.stop()
        await producer.stop()


def spawn_all(args: list[str]) -> None:
    """The three agents as three processes, stopped with this one."""
    procs = [subprocess.Popen([sys.executable, __file__, n, *args]) for n in ORDER]
    signal.signal(signal.SIGTERM, lambda *_: [p.terminate() for p in procs])  # stop them with us
    try:
        for p in procs:
            p.wait()
    except KeyboardInterrupt:
        for p in procs:
            p.send_signal(signal.SIGINT)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name", nargs="?", choices=ORDER)
    ap.add_argument("--all", action="store_true", help="start all three agents as separate processes")
    ap.add_argument("--redis-url", help="default: $CL_SCALE_REDIS_URL, else the local cluster's")
    ap.add_argument("--delay", type=float, default=0.03, help="seconds between fake tokens")
    ap.add_argument("--kafka", metavar="HOST:PORT", help="the Kafka variant: talk over this broker (no Redis)")
    args = ap.parse_args()
    if args.kafka:
        if args.all:
            return spawn_all(["--kafka", args.kafka, "--delay", str(args.delay)])
        if not args.name:
            ap.error("name an agent or pass --all")
        try:
            asyncio.run(run_kafka_agent(args.name, args.kafka, args.delay))
        except KeyboardInterrupt:
            pass
        return
    try:
        settings = WorkerSettings.from_env(redis_url=args.redis_url)
        key = settings.signing_key()
    except UserError as exc:
        sys.exit(f"error: {exc}")
    if args.all:
        return spawn_all(["--redis-url", settings.redis_url, "--delay", str(args.delay)])
    if not args.name:
        ap.error("name an agent or pass --all")
    try:
        asyncio.run(run_agent(args.name, settings.redis_url, key.kid, key.secret, args.delay))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
