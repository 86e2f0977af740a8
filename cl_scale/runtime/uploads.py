"""Uploads that outlive the instance they were sent to.

Chainlit writes an upload under its files directory on the instance that owns the session and keeps
its path in ``session.files``; when that instance dies, another one restores the session but neither
the file nor the path means anything there. cl-scale keeps the files' metadata in the session snapshot
and, by ``CL_SCALE_UPLOADS``:

- ``local``: nothing more (stock behaviour): after a failover the app and ``/project/file`` answer
  "not found" for earlier uploads;
- ``shared``: each upload moves to ``CL_SCALE_UPLOADS_DIR/<session id>/`` — a directory every instance
  mounts (a ReadWriteMany volume, NFS) — and its path points there, so any instance reads it as is;
- ``redis``: each upload is also written to Redis (``Keyspace.uploads``, TTL = the session's), at most
  ``CL_SCALE_UPLOADS_MAX_MB`` per session (over it the upload is refused with 413 and a reason); the
  instance that restores the session writes them back to its own files directory.

Either way the files are removed with the session.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from pathlib import Path

from cl_scale.wire.keyspace import Keyspace

log = logging.getLogger("cl_scale.uploads")
_TOTAL = "__bytes"


def metadata(session) -> dict:
    """``session.files`` as JSON (the snapshot's ``files``)."""
    return {fid: {k: (str(v) if k == "path" else v) for k, v in f.items()} for fid, f in (session.files or {}).items()}


class UploadStore:
    """:param mode: ``local``, ``shared`` or ``redis`` (``RuntimeSettings.uploads``).
    :param shared_dir: the directory every instance mounts (``shared``).
    :param max_bytes: per-session bound in Redis (``redis``).
    :param ttl: seconds the Redis copy lives after its last write (the session timeout).
    """

    def __init__(self, mode: str, redis, keys: Keyspace, *, shared_dir: str | None = None,
                 max_bytes: int = 20 * 1024 * 1024, ttl: int = 3600):
        self.mode, self.redis, self.keys = mode, redis, keys
        self.shared_dir = Path(shared_dir) if shared_dir else None
        self.max_bytes, self.ttl = max_bytes, ttl

    async def saved(self, session, file_id: str) -> None:
        """Chainlit has just written ``session.files[file_id]``: make it reachable from any instance."""
        f = session.files.get(file_id)
        if f is None or self.mode == "local":
            return
        path = Path(f["path"])
        if self.mode == "shared":
            target = self.shared_dir / session.id / path.name
            await asyncio.to_thread(_move, path, target)
            f["path"] = target
            return
        data = await asyncio.to_thread(path.read_bytes)
        key = self.keys.uploads(session.id)
        total = int(await self.redis.hget(key, _TOTAL) or 0)
        if total + len(data) > self.max_bytes:
            del session.files[file_id]
            path.unlink(missing_ok=True)
            from starlette.exceptions import HTTPException  # FastAPI answers it as {"detail": ...}

            raise HTTPException(status_code=413, detail=(
                f"this chat's uploads would exceed {self.max_bytes // (1024 * 1024)} MB "
                f"(CL_SCALE_UPLOADS_MAX_MB): {total // 1024} KB stored, this file {len(data) // 1024} KB"))
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(key, file_id, data)
        pipe.hincrby(key, _TOTAL, len(data))
        pipe.expire(key, self.ttl)
        await pipe.execute()

    async def restore(self, session, files: dict) -> None:
        """A restored session's uploads, readable here (``files``: the snapshot's metadata)."""
        if not files:
            return
        restored = {}
        for fid, meta in files.items():
            path = Path(meta.get("path") or "")
            if self.mode != "redis" and not path.is_file():
                continue  # local: it stayed on the dead owner's disk ("not found", as in stock Chainlit)
            if self.mode == "redis" and not path.is_file():
                data = await self.redis.hget(self.keys.uploads(session.id), fid)
                if data is None:
                    log.warning("session %s: upload %s not in Redis (expired?)", session.id, fid[:80])
                    continue
                path = session.files_dir / path.name
                await asyncio.to_thread(_write, path, data)
            restored[fid] = {**meta, "path": path}
        session.files.update(restored)
        if self.mode == "redis":
            await self.redis.expire(self.keys.uploads(session.id), self.ttl)

    async def delete(self, session_id: str) -> None:
        """The session is gone: its uploads too."""
        if self.mode == "shared":
            await asyncio.to_thread(shutil.rmtree, self.shared_dir / session_id, True)
        elif self.mode == "redis":
            await self.redis.delete(self.keys.uploads(session_id))


def _move(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(src), str(dst))


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
