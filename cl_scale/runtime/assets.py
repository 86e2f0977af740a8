"""Chainlit's frontend bundle, served precompressed and cacheable.

Why: stock Chainlit gzips its 4.6 MB JavaScript bundle again on every request (``GZipMiddleware``)
and sends it with no caching headers, so every page load costs the instance CPU and the user a full
download. The files under ``/assets/`` are named by their content hash (Vite), so they can be cached
for good: here each is compressed once — brotli and gzip, in a thread at instance start — and served
from memory with ``Content-Encoding``, ``Vary: Accept-Encoding`` and ``Cache-Control: immutable``.
The compressed files are kept in a cache directory (one per Chainlit version) that every instance on
the machine or pod reuses, so only the first start pays (about 2 s of one core).

Everything else is left to Chainlit: a client that accepts neither encoding, a file not built yet, a
source map. ``index.html`` (every other path, it carries the config) is marked ``no-cache``.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import mimetypes
import os
import re
import tempfile
from pathlib import Path

log = logging.getLogger("cl_scale.assets")

PREFIX = "/assets/"
#: Compressed once, so the best ratio is affordable (brotli 11 would take ~20 s for the bundle).
BROTLI_QUALITY, GZIP_LEVEL = 9, 9
IMMUTABLE = b"public, max-age=31536000, immutable"
#: What is worth compressing (source maps are only fetched by open developer tools).
COMPRESSIBLE = (".js", ".mjs", ".css", ".svg", ".json", ".txt", ".html", ".wasm")
ENCODINGS = (("br", ".br"), ("gzip", ".gz"))
_NAME = re.compile(r"^[A-Za-z0-9._-]+$")


def accepted(header: bytes) -> set[str]:
    """Codings an ``Accept-Encoding`` header allows (``q=0`` excluded)."""
    out = set()
    for part in header.decode("latin-1").lower().split(","):
        name, _, params = part.strip().partition(";")
        q = params.strip()
        if q.startswith("q="):
            try:
                if float(q[2:]) <= 0:
                    continue
            except ValueError:
                continue
        if name:
            out.add(name.strip())
    return out


class Assets:
    """:param build_dir: Chainlit's ``frontend/dist`` (its ``assets/`` is what is served here).
    :param cache_dir: where compressed copies are kept between starts (None: a temp directory per
        Chainlit version, shared by the instances of one machine or pod)."""

    def __init__(self, build_dir: Path, cache_dir: Path | None = None, version: str = ""):
        self.source = Path(build_dir) / "assets"
        self.cache = Path(cache_dir) if cache_dir else Path(tempfile.gettempdir()) / f"cl-scale-assets-{version or 'x'}"
        self._ready: dict[tuple[str, str], bytes] = {}  # (file name, coding) -> compressed bytes
        self._types: dict[str, bytes] = {}

    # -- building -----------------------------------------------------------------------------------
    async def build(self) -> None:
        """Compress every asset (or load what an earlier start compressed), off the event loop."""
        try:
            count = await asyncio.to_thread(self._build)
            log.info("%d frontend assets served precompressed (br, gzip)", count)
        except Exception as exc:  # noqa: BLE001 - stock serving goes on; only slower
            log.warning("frontend assets not precompressed (%s); Chainlit serves them", exc.__class__.__name__)

    def _build(self) -> int:
        import brotli

        try:
            self.cache.mkdir(parents=True, exist_ok=True)
            writable = os.access(self.cache, os.W_OK)
        except OSError:
            writable = False
        count = 0
        for path in sorted(self.source.iterdir()) if self.source.is_dir() else ():
            if not path.is_file() or not path.name.endswith(COMPRESSIBLE) or not _NAME.match(path.name):
                continue
            raw = None
            for coding, suffix in ENCODINGS:
                cached = self.cache / (path.name + suffix)
                data = cached.read_bytes() if cached.is_file() and cached.stat().st_mtime >= path.stat().st_mtime \
                    else None
                if data is None:
                    raw = raw if raw is not None else path.read_bytes()
                    data = brotli.compress(raw, quality=BROTLI_QUALITY) if coding == "br" \
                        else gzip.compress(raw, GZIP_LEVEL, mtime=0)
                    if writable:
                        tmp = cached.with_name(f".{cached.name}.{os.getpid()}")
                        tmp.write_bytes(data)
                        os.replace(tmp, cached)  # atomic: another instance never reads half a file
                self._ready[(path.name, coding)] = data
            kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            if path.name.endswith((".js", ".mjs")):
                kind = "text/javascript"
            self._types[path.name] = (kind + ("; charset=utf-8" if kind.startswith("text/") else "")).encode()
            count += 1
        return count

    # -- serving ------------------------------------------------------------------------------------
    async def serve(self, scope, send) -> bool:
        """Answer a GET/HEAD of a precompressed asset the client accepts; False: not handled here."""
        if scope["method"] not in ("GET", "HEAD"):
            return False
        name = scope["path"][len(PREFIX):]
        if name not in self._types:
            return False
        header = next((v for k, v in scope["headers"] if k == b"accept-encoding"), b"")
        codings = accepted(header)
        coding = next((c for c, _ in ENCODINGS if c in codings), None)
        if coding is None:
            return False
        body = self._ready[(name, coding)]
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", self._types[name]), (b"content-encoding", coding.encode()),
            (b"content-length", str(len(body)).encode()), (b"vary", b"Accept-Encoding"),
            (b"cache-control", IMMUTABLE)]})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})
        return True


def cache_headers(path: str, status: int, headers: list) -> list:
    """Headers of a response Chainlit produced: an asset (hashed name) is cacheable for good, a page
    (``index.html``) must be revalidated every time."""
    if status != 200 or any(k.lower() == b"cache-control" for k, _ in headers):
        return headers
    if path.startswith(PREFIX):
        return [*headers, (b"cache-control", IMMUTABLE)]
    kind = next((v for k, v in headers if k.lower() == b"content-type"), b"")
    if kind.startswith(b"text/html"):
        return [*headers, (b"cache-control", b"no-cache")]
    return headers
