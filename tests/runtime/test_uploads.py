"""Uploads through any instance: streamed to the owner (never held whole), bounded (413)."""

from __future__ import annotations

import asyncio
import hashlib

import httpx
import pytest

from cl_scale.ops.client import ChainlitClient
from cl_scale.ops.processes import http_status

MB = 1024 * 1024


async def started(client: ChainlitClient) -> ChainlitClient:
    await client.connect()
    await client.wait_for(lambda: any("started on" in str(m.get("output")) for m in client.messages()), 15)
    return client


def peak_rss_kb(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def multipart(content: bytes, boundary: str = "clscaleboundary") -> tuple[bytes, bytes, str]:
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.bin\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    return head, tail, f"multipart/form-data; boundary={boundary}"


async def test_oversized_uploads_get_413_from_the_instance_itself(cluster):
    a, b = cluster.start(2, env={"CL_SCALE_MAX_UPLOAD_MB": "1"}).instances
    client = await started(ChainlitClient(a.url))
    big = b"x" * (2 * MB)
    head, tail, ctype = multipart(big)
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            for base in (a.url, b.url):  # the owner itself, and through a peer (forwarding path)
                r = await http.post(f"{base}/project/file", params={"session_id": client.session_id},
                                    content=head + big + tail, headers={"content-type": ctype})
                assert r.status_code == 413 and "over" in r.json()["detail"], (base, r.status_code, r.text)

                async def chunked():  # no content-length: counted while streaming
                    yield head
                    for i in range(0, len(big), 64 * 1024):
                        yield big[i:i + 64 * 1024]
                    yield tail

                r = await http.post(f"{base}/project/file", params={"session_id": client.session_id},
                                    content=chunked(), headers={"content-type": ctype})
                assert r.status_code == 413, (base, r.status_code, r.text)
            ok = await client.upload("small.txt", b"y" * (MB // 2), base_url=b.url)
            assert ok["id"]
        assert http_status(f"{a.url}/readyz") == 200 and http_status(f"{b.url}/readyz") == 200
    finally:
        await client.close()


async def test_20mb_upload_through_a_peer_streams_and_never_stalls_a_concurrent_echo(cluster):
    a, b = cluster.start(2).instances
    owner = await started(ChainlitClient(a.url))  # the session lives on A; the upload lands on B
    other = await started(ChainlitClient(b.url))  # chats on B while B forwards the upload
    payload = bytes(range(256)) * (20 * MB // 256)
    head, tail, ctype = multipart(payload)
    half = len(payload) // 2
    echo_done = asyncio.Event()
    before = peak_rss_kb(b.proc.pid)

    async def body():
        yield head
        for i in range(0, half, 256 * 1024):
            yield payload[i:i + 256 * 1024]
        await asyncio.wait_for(echo_done.wait(), 60)  # the upload stays in flight until the echo is back
        for i in range(half, len(payload), 256 * 1024):
            yield payload[i:i + 256 * 1024]
        yield tail

    async def upload():
        async with httpx.AsyncClient(timeout=120) as http:
            r = await http.post(f"{b.url}/project/file", params={"session_id": owner.session_id},
                                content=body(), headers={"content-type": ctype})
            assert r.status_code == 200, r.text
            return r.json()

    try:
        task = asyncio.create_task(upload())
        reply = await other.ask("ping while uploading", contains="echo=", timeout=30)
        assert not task.done(), "the upload finished before the echo: nothing was in flight"
        assert "echo=ping while uploading" in reply["output"]
        echo_done.set()
        uploaded = await asyncio.wait_for(task, 120)
        await owner.send_with_files("filehash", [{"id": uploaded["id"]}])
        got = await owner.wait_for(lambda: next((m for m in owner.messages() if "filehash=" in str(m["output"])),
                                                None), 30)
        assert "echo=filehash=" + hashlib.sha256(payload).hexdigest() in got["output"]
        grown_mb = (peak_rss_kb(b.proc.pid) - before) / 1024
        assert grown_mb < 8, f"the forwarding instance held the body: peak RSS grew {grown_mb:.1f} MB"
    finally:
        echo_done.set()
        await owner.close()
        await other.close()


async def _upload_then_kill_owner(cluster, tmp_path, env: dict, dead_disk=None):
    a, b = cluster.start(2, env=env).instances
    owner = await started(ChainlitClient(a.url, reconnection=False))
    content = b"uploaded before the owner died\n" * 1000
    uploaded = await owner.upload("notes.txt", content)
    await owner.send_with_files("filehash", [{"id": uploaded["id"]}])
    want = f"echo=filehash={hashlib.sha256(content).hexdigest()}"
    await owner.wait_for(lambda: any(want in str(m.get("output")) for m in owner.messages()), 15)
    a.kill()
    await owner.close()
    if dead_disk is not None:  # the dead owner's disk (another pod's) is gone with it
        import shutil

        shutil.rmtree(dead_disk)
    moved = ChainlitClient(b.url, session_id=owner.session_id, thread_id=owner.thread_id, reconnection=False)
    await moved.connect()
    return b, moved, uploaded["id"], content


async def _read_back(b, moved, file_id: str, content: bytes) -> None:
    async with httpx.AsyncClient(timeout=30) as http:  # download from the new owner
        r = await http.get(f"{b.url}/project/file/{file_id}", params={"session_id": moved.session_id})
        assert r.status_code == 200 and r.content == content, (r.status_code, r.text[:200])
    since = len(moved.events)  # and the app on the new owner reads it
    await moved.send_with_files("filehash", [{"id": file_id}])
    want = f"echo=filehash={hashlib.sha256(content).hexdigest()}"
    await moved.wait_for(lambda: any(want in str(m.get("output")) for m in moved.messages(since)), 15)


async def test_uploads_in_a_shared_directory_survive_the_owner(cluster, app_dir, tmp_path):
    shared = tmp_path / "shared-uploads"
    shared.mkdir()
    b, moved, file_id, content = await _upload_then_kill_owner(
        cluster, tmp_path, {"CL_SCALE_UPLOADS": "shared", "CL_SCALE_UPLOADS_DIR": str(shared)},
        dead_disk=app_dir / ".files" / "inst1")
    try:
        assert (shared / moved.session_id).is_dir()
        await _read_back(b, moved, file_id, content)
    finally:
        await moved.close()


async def test_uploads_in_redis_survive_the_owner_and_are_bounded(cluster, app_dir, tmp_path):
    b, moved, file_id, content = await _upload_then_kill_owner(
        cluster, tmp_path, {"CL_SCALE_UPLOADS": "redis", "CL_SCALE_UPLOADS_MAX_MB": "1"},
        dead_disk=app_dir / ".files" / "inst1")
    try:
        await _read_back(b, moved, file_id, content)
        await moved.upload("half.bin", b"h" * (MB // 2))  # 0.53 MB in Redis now
        with pytest.raises(RuntimeError) as refused:
            await moved.upload("more.bin", b"m" * (MB // 2))
        assert "413" in str(refused.value) and "CL_SCALE_UPLOADS_MAX_MB" in str(refused.value)
    finally:
        await moved.close()


async def test_local_uploads_are_gone_with_the_owner_as_documented(cluster, app_dir, tmp_path):
    b, moved, file_id, _ = await _upload_then_kill_owner(cluster, tmp_path, {}, dead_disk=app_dir / ".files" / "inst1")
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            r = await http.get(f"{b.url}/project/file/{file_id}", params={"session_id": moved.session_id})
            assert r.status_code == 404  # "not found", never a 500 on a dangling path
    finally:
        await moved.close()
