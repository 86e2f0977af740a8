"""Outbox entries as JSON (the wire) or Protocol Buffers (``outbox_body.proto``): measured, to decide.

Per entry, both ways: encode (the publisher: a validated ``Body`` to the bytes it signs) and decode
(the owner: bytes back to a validated ``Body``), in microseconds (median of repeated timed loops),
and the size in bytes, for a chat message (~200 characters) and a streamed token. Validation stays
on both sides (the owner must not trust the bytes), so protobuf is decoded into the same model.
"""

from __future__ import annotations

import functools
import statistics
import sys
import time
from pathlib import Path

from cl_scale.wire import messages as m


@functools.cache
def _pb():
    import grpc

    root = str(Path(__file__).parent)
    if root not in sys.path:
        sys.path.append(root)
    return grpc.protos_and_services("outbox_body.proto")[0]


def _to_pb(body: m.Body):
    pb = _pb()
    d = body.model_dump(exclude_none=True)
    return pb.OutboxBody(v=d["v"], eid=d["eid"], mid=d["mid"], kind=d["kind"], session=d["session"],
                         target=pb.Target(**d["target"]), ts=d["ts"], author=d["author"], content=d["content"],
                         elements=[pb.Element(**e) for e in d["elements"]]).SerializeToString()


def _from_pb(raw: bytes) -> m.Body:
    """Fields read directly (``json_format`` would be slower still): the cheapest fair decode."""
    msg = _pb().OutboxBody()
    msg.ParseFromString(raw)
    t = msg.target
    target = {k: v for k, v in (("session", t.session), ("user", t.user), ("thread", t.thread)) if v}
    elements = [{k: v for k, v in (("type", e.type), ("name", e.name), ("content", e.content), ("url", e.url),
                                   ("display", e.display)) if v} for e in msg.elements]
    return m.Body.model_validate({"v": msg.v, "eid": msg.eid, "mid": msg.mid, "kind": msg.kind, "session": msg.session,
                                  "target": target, "ts": msg.ts, "author": msg.author, "content": msg.content,
                                  "elements": elements})


def _timed(fn, n: int) -> float:
    """Median microseconds per call over 5 loops of ``n`` calls."""
    runs = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        runs.append((time.perf_counter() - t0) / n * 1e6)
    return round(statistics.median(runs), 2)


def samples() -> dict[str, m.Body]:
    sid = "4f1c2b7e-1d2a-4c8e-9f00-aa11bb22cc33"
    target = m.Target(session=sid)
    return {"message": m.Body(eid="r-42", mid="r-42", kind="message", session=sid, target=target, ts=time.time(),
                              content="Here is the deployment summary you asked for: " + "all green. " * 14),
            "token": m.Body(eid="r-7:118", mid="r-7", kind="token", session=sid, target=target, ts=time.time(),
                            content=" the")}


def measure(n: int = 3000) -> dict:
    out = {}
    for name, body in samples().items():
        raw_json, raw_pb = m.canonical(body), _to_pb(body)
        assert _from_pb(raw_pb) == body and m.Body.model_validate_json(raw_json) == body
        out[name] = {
            "json": {"encode_us": _timed(lambda b=body: m.canonical(b), n),
                     "decode_us": _timed(lambda r=raw_json: m.Body.model_validate_json(r), n), "bytes": len(raw_json)},
            "protobuf": {"encode_us": _timed(lambda b=body: _to_pb(b), n),
                         "decode_us": _timed(lambda r=raw_pb: _from_pb(r), n), "bytes": len(raw_pb)},
        }
    return out


def verdict(codec: dict) -> str:
    """One line for the README: the cost of each encoding, and which one the wire keeps."""
    parts = []
    cheaper = True
    for name, r in codec.items():
        j, p = r["json"], r["protobuf"]
        jt, pt = j["encode_us"] + j["decode_us"], p["encode_us"] + p["decode_us"]
        cheaper = cheaper and pt < 0.8 * jt
        parts.append(f"{name}: JSON {jt:.1f} µs / {j['bytes']} B, protobuf {pt:.1f} µs / {p['bytes']} B")
    keep = "protobuf pays" if cheaper else "JSON stays the outbox encoding (protobuf is not 20 % cheaper end to end)"
    return f"- Outbox entry encode + decode (validated both ways): {'; '.join(parts)} — {keep}."
