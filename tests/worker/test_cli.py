"""`cl-scale send` and `cl-scale dlq`: same path as the SDK; bad input exits 2 with one line."""

from __future__ import annotations

import asyncio
import os
import subprocess

from cl_scale.ops.client import ChainlitClient
from cl_scale.ops.processes import CL_SCALE
from cl_scale.wire.keyspace import Keyspace
from tests.worker.conftest import WORKER_ENV
from tests.worker.helpers import dlq, raw_publish, signed, started, worker_texts


def cli(*args, env=None):
    return subprocess.run([CL_SCALE, *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **WORKER_ENV, **(env or {})})


async def test_send_and_dlq_round_trip(cluster, worker_env):
    (a,) = cluster.start(1, env=worker_env).instances
    client = await started(ChainlitClient(a.url))
    url = cluster.redis.url
    try:
        out = await asyncio.to_thread(cli, "send", "--session", client.session_id, "--redis-url", url, "w-cli")
        assert out.returncode == 0, out.stderr
        await client.wait_for(lambda: "w-cli" in worker_texts(client), 15)
        assert [m["id"] for m in client.messages() if m["output"] == "w-cli"] == [out.stdout.strip()]

        # A message signed long ago is dead-lettered; replay --resign brings it back.
        await raw_publish(url, client.session_id, signed(client.session_id, b"secret-one", text="w-late", ts=1.0))
        for _ in range(40):
            if await dlq(url):
                break
            await asyncio.sleep(0.25)
        listed = await asyncio.to_thread(cli, "dlq", "list", "--redis-url", url)
        assert listed.returncode == 0 and "too old" in listed.stdout and client.session_id in listed.stdout
        dead_id = listed.stdout.split()[0]
        replay = await asyncio.to_thread(cli, "dlq", "replay", dead_id, "--resign", "--redis-url", url)
        assert replay.returncode == 0 and "replayed 1" in replay.stdout, replay.stdout + replay.stderr
        await client.wait_for(lambda: "w-late" in worker_texts(client), 15)

        # Letters whose origin is in question are never re-signed (that would launder them): a forged
        # signature, an unknown key, an out-of-scope key, an old letter whose signature does not verify.
        forged = [
            {**signed(client.session_id, b"secret-one", text="w-forged"), "sig": "0" * 64},
            signed(client.session_id, b"whatever", kid="k9", text="w-unknown-key"),
            signed(client.session_id, b"secret-two", kid="k2", text="w-out-of-scope"),  # k2: only alice
        ]
        for fields in forged:
            await raw_publish(url, client.session_id, fields)
        for _ in range(40):
            if len(await dlq(url)) == 3:
                break
            await asyncio.sleep(0.25)
        codes = sorted(d["code"] for d in await dlq(url))
        assert codes == ["bad_signature", "out_of_scope", "unknown_key"], codes
        laundering = await asyncio.to_thread(cli, "dlq", "replay", "--all", "--resign", "--redis-url", url)
        assert laundering.returncode == 1 and "replayed 0, skipped 3" in laundering.stdout, laundering.stdout
        assert laundering.stderr.count("refused to re-sign") == 3, laundering.stderr
        assert len(await dlq(url)) == 3, "refused letters must stay dead-lettered"
        # A "too old" letter written straight into the dead-letter stream with a forged signature.
        import redis.asyncio as aioredis

        r = aioredis.Redis.from_url(url)
        forged_old = {**signed(client.session_id, b"secret-one", text="w-forged-old", ts=1.0), "sig": "1" * 64}
        await r.xadd(Keyspace().dead_letters, {**forged_old, "code": "too_old", "reason": "too old: signed long ago",
                                        "session": client.session_id, "at": "1"})
        await r.aclose()
        laundering = await asyncio.to_thread(cli, "dlq", "replay", "--all", "--resign", "--redis-url", url)
        assert "replayed 0, skipped 4" in laundering.stdout and "does not verify" in laundering.stderr
        await asyncio.to_thread(cli, "dlq", "purge", "--all", "--redis-url", url)
        assert not [t for t in worker_texts(client) if t in ("w-forged", "w-unknown-key", "w-out-of-scope", "w-forged-old")]

        await raw_publish(url, client.session_id, {"kid": "k1", "body": b"{}", "sig": "00"})
        for _ in range(40):
            if await dlq(url):
                break
            await asyncio.sleep(0.25)
        purge = await asyncio.to_thread(cli, "dlq", "purge", "--all", "--redis-url", url)
        assert purge.returncode == 0 and purge.stdout.strip() == "purged 1"
        assert await dlq(url) == []
    finally:
        await client.close()
