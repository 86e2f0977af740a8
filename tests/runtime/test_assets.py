"""Chainlit's frontend assets, precompressed by the instance (``runtime/assets.py``): served with the
right encoding and caching headers, directly and through the rendered nginx, decompressing to exactly
Chainlit's own files; pages never cached."""

from __future__ import annotations

import asyncio
import gzip
import re
from pathlib import Path

import brotli
import httpx
import pytest

from cl_scale.runtime.assets import accepted


def _bundle() -> Path:
    """Chainlit's main bundle: the script ``index.html`` loads."""
    from chainlit.server import build_dir

    html = (Path(build_dir) / "index.html").read_text()
    name = re.search(r'src="[^"]*/assets/([^"]+\.js)"', html).group(1)
    return Path(build_dir) / "assets" / name


async def _get(http: httpx.AsyncClient, url: str, encoding: str) -> tuple[httpx.Response, bytes]:
    """The response and its body as sent (httpx would decode it)."""
    async with http.stream("GET", url, headers={"Accept-Encoding": encoding}) as r:
        return r, b"".join([chunk async for chunk in r.aiter_raw()])


async def _precompressed(http: httpx.AsyncClient, url: str) -> tuple[httpx.Response, bytes]:
    """The built copy (the instance compresses in the background after it starts): bounded wait."""
    for _ in range(150):
        r, raw = await _get(http, url, "br")
        if r.headers.get("content-encoding") == "br":
            return r, raw
        await asyncio.sleep(0.2)
    raise AssertionError(f"{url} never served precompressed: {dict(r.headers)}")


@pytest.mark.parametrize("through", ["instance", "nginx"])
async def test_assets_are_served_precompressed_cacheable_and_identical(cluster, tmp_path, through):
    cluster.start(1, nginx=through == "nginx", env={"CL_SCALE_ASSETS_CACHE": str(tmp_path / "assets-cache")})
    base = cluster.nginx.url if through == "nginx" else cluster.instances[0].url
    bundle = _bundle()
    original = bundle.read_bytes()
    url = f"{base}/assets/{bundle.name}"
    async with httpx.AsyncClient(timeout=30) as http:
        r, raw = await _precompressed(http, url)
        assert brotli.decompress(raw) == original and len(raw) < len(original) / 3
        assert r.headers["vary"].lower() == "accept-encoding"
        assert r.headers["cache-control"] == "public, max-age=31536000, immutable"
        assert r.headers["content-type"].startswith("text/javascript")

        r, raw = await _get(http, url, "gzip")
        assert r.headers["content-encoding"] == "gzip" and gzip.decompress(raw) == original
        assert "immutable" in r.headers["cache-control"] and r.headers["vary"].lower() == "accept-encoding"

        r, raw = await _get(http, url, "identity")  # neither: Chainlit's own bytes
        assert "content-encoding" not in r.headers and raw == original

        r = await http.head(url, headers={"Accept-Encoding": "br"})
        assert r.status_code == 200 and r.content == b"" and r.headers["content-encoding"] == "br"

        # the page carries the app's config: revalidated on every load, never kept
        for page in ("/", "/thread/abc"):
            r = await http.get(base + page, headers={"Accept-Encoding": "br, gzip"})
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
            assert r.headers["cache-control"] == "no-cache"

        # what is not a built asset is Chainlit's to answer, and never marked cacheable
        for bad in ("/assets/nope.js", "/assets/..%2F..%2Findex.html", f"/assets/{bundle.name}.map.missing"):
            r = await http.get(base + bad, headers={"Accept-Encoding": "br"})
            assert r.status_code in (400, 404) and "immutable" not in r.headers.get("cache-control", "")
    # compressed once, kept for the next start (and the other instances of this machine or pod)
    assert (tmp_path / "assets-cache" / (bundle.name + ".br")).is_file()


def test_accept_encoding_parsing():
    assert accepted(b"gzip, deflate, br, zstd") == {"gzip", "deflate", "br", "zstd"}
    assert accepted(b"br;q=0, gzip;q=0.5") == {"gzip"}
    assert accepted(b"") == set() and accepted(b"identity") == {"identity"}
    assert accepted(b"gzip;q=abc") == set()
