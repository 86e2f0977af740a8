"""``cl-scale doctor URL``: check a balancer in front of cl-scale instances from the outside.

It only has the URL, so it behaves like several browsers: Chainlit-protocol clients
(:mod:`cl_scale.ops.client`), bound to distinct ``127.0.N.1`` source addresses when the URL is loopback
(so ``ip_hash`` spreads them). Instances name themselves in the ``x-cl-scale-instance`` response
header, ``POST /cl-scale/doctor/emit`` on an instance emits a harmless event into a session's room
(through Redis when a peer holds the session) and ``GET /cl-scale/doctor/session`` says which
instance owns a session — that is how cross-instance delivery and session restore are proven
without knowing anything about the app.
"""

from __future__ import annotations

import asyncio
import ipaddress
import secrets
import socket
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import aiohttp

from cl_scale.ops.client import ChainlitClient

INSTANCE_HEADER = "x-cl-scale-instance"
EVENT = "cl-scale:doctor"


@dataclass
class Check:
    name: str
    ok: bool | None  # None: could not be exercised from here (not a failure)
    detail: str

    def line(self) -> str:
        mark = {True: "PASS", False: "FAIL", None: "SKIP"}[self.ok]
        return f"{mark} {self.name}: {self.detail}"


def is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
        except OSError:
            return False


@dataclass
class _Tracer:
    """Records which instance answered each HTTP request of one client."""

    seen: list[tuple[str, int]] = field(default_factory=list)
    split: asyncio.Event = field(default_factory=asyncio.Event)  # a second instance answered

    def config(self) -> aiohttp.TraceConfig:
        trace = aiohttp.TraceConfig()

        async def on_end(_session, _ctx, params):
            self.seen.append((params.response.headers.get(INSTANCE_HEADER, ""), params.response.status))
            if len(self.instances) > 1:
                self.split.set()

        trace.on_request_end.append(on_end)
        return trace

    @property
    def instances(self) -> list[str]:
        return sorted({name for name, _ in self.seen if name})


async def _until_split(tracer: _Tracer, work, timeout: float) -> None:
    """Run ``work`` unless the tracer sees a second instance first (then stop waiting)."""
    task = asyncio.ensure_future(work)
    split = asyncio.ensure_future(tracer.split.wait())
    try:
        done, _ = await asyncio.wait({task, split}, timeout=timeout * 2, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            task.result()
    finally:
        for pending in (task, split):
            pending.cancel()


class Doctor:
    """Runs the checks in order; each returns one :class:`Check`."""

    def __init__(self, url: str, *, clients: int = 6, idle_seconds: float | None = None,
                 affinity_header: str | None = None, timeout: float = 15.0, token: str | None = None):
        self.url = url.rstrip("/")
        self.token = token  # the instances' CL_SCALE_DOCTOR_TOKEN: the probes answer only to it
        self.idle_seconds = idle_seconds  # None: Engine.IO's ping interval + 5 s
        self.affinity_header = affinity_header
        self.timeout = timeout
        loop = is_loopback(self.url)
        n = max(2, clients)
        self.sources: list[str | None] = [f"127.0.{i + 1}.1" for i in range(n)] if loop else [None] * n
        # sticky.mode=header: each simulated browser sends its own value of the hashed header.
        self.affinity = {s: f"cl-scale-doctor-{i}" for i, s in enumerate(self.sources)}
        self.where: dict[str | None, str] = {}  # source address -> instance the balancer sends it to
        self._open: list[ChainlitClient] = []

    async def run(self, report=print) -> list[Check]:
        checks: list[Check] = []
        idle = asyncio.create_task(self.check_idle())
        try:
            for check in (self.check_stickiness, self.check_websocket, self.check_cross_instance,
                          self.check_restore):
                try:
                    result = await check()
                except Exception as exc:  # one broken check must not hide the others
                    result = Check(check.__name__.removeprefix("check_").replace("_", " "), False,
                                   f"{type(exc).__name__}: {exc}")
                report(result.line())
                checks.append(result)
            try:
                result = await idle
            except Exception as exc:
                result = Check("timeouts", False, f"{type(exc).__name__}: {exc}")
            report(result.line())
            checks.append(result)
        finally:
            if not idle.done():
                idle.cancel()
            await asyncio.gather(*(self._close(c) for c in self._open), return_exceptions=True)
        return checks

    # -- helpers ----------------------------------------------------------------------------------
    def _client(self, source, *, transports=("websocket",), session_id=None, tracer=None) -> ChainlitClient:
        headers = {self.affinity_header: self.affinity[source]} if self.affinity_header else None
        client = ChainlitClient(self.url, session_id, source_address=source, transports=transports,
                                reconnection=False, trace_configs=[tracer.config()] if tracer else None,
                                headers=headers)
        self._open.append(client)
        return client

    async def _close(self, client: ChainlitClient) -> None:
        try:
            await asyncio.wait_for(client.sio.eio.disconnect(abort=True), 3)
        except Exception:
            pass
        if client._http is not None:
            await client._http.close()
        if client in self._open:
            self._open.remove(client)

    def _http(self, source) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(local_addr=(source, 0) if source else None, force_close=True)
        headers = {self.affinity_header: self.affinity[source]} if self.affinity_header else None
        return aiohttp.ClientSession(connector=connector, headers=headers,
                                     timeout=aiohttp.ClientTimeout(total=10))

    @staticmethod
    def _endpoint_missing(status: int) -> None:
        if status == 404:
            raise RuntimeError("the instances do not serve /cl-scale/doctor/ (not `cl-scale run`, no "
                               "CL_SCALE_DOCTOR_TOKEN set on them, or CL_SCALE_DOCTOR=0)")
        if status == 401:
            raise RuntimeError("the instances refused the doctor token: pass --token (their CL_SCALE_DOCTOR_TOKEN)")

    async def _probe(self, source, session_id: str) -> tuple[dict, str]:
        """Ask whichever instance the balancer picks for ``source`` to emit into ``session_id``
        and to say where that session lives (``owner`` is None while Redis does not know it)."""
        nonce = secrets.token_hex(8)
        params = {"session_id": session_id}
        auth = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        async with self._http(source) as http:
            async with http.get(f"{self.url}/cl-scale/doctor/session", params=params, headers=auth) as r:
                if r.status == 401 or (r.status == 404 and "unknown session" not in await r.text()):
                    self._endpoint_missing(r.status)
                info = await r.json() if r.status in (200, 404) else {}
                if r.status not in (200, 404):
                    r.raise_for_status()
            async with http.post(f"{self.url}/cl-scale/doctor/emit", params={**params, "nonce": nonce},
                                 headers=auth) as r:
                self._endpoint_missing(r.status)
                r.raise_for_status()
                sent = await r.json()
        me = sent["from"]
        self.where.setdefault(source, me)
        owner = info.get("owner")
        answer = {"instance": me, "owner": owner, "known": r.status == 202 and owner is not None,
                  "thread": info.get("thread"), "local": owner in (None, me)}
        return answer, nonce

    @staticmethod
    def _got(client: ChainlitClient, nonce: str) -> bool:
        return any(e == EVENT and isinstance(d, dict) and d.get("nonce") == nonce for _, e, d in client.events)

    async def _connected(self, source, session_id=None) -> ChainlitClient:
        client = self._client(source, session_id=session_id)
        await client.connect(timeout=self.timeout)
        return client

    # -- checks -----------------------------------------------------------------------------------
    async def check_stickiness(self) -> Check:
        """Long-polling needs every request of one connection on one instance (Engine.IO sid)."""
        name = "stickiness"
        tracers, failures = [], []
        for source in self.sources:
            tracer = _Tracer()
            tracers.append(tracer)
            client = self._client(source, transports=("polling",), tracer=tracer)
            try:
                # A round trip through the long-poll: the instance emits, the next GET carries it.
                # Stop as soon as two instances answered one client: that is the verdict.
                await _until_split(tracer, self._poll_round_trip(client, source), self.timeout)
            except Exception as exc:
                failures.append(f"{type(exc).__name__}: {exc}".split("\n")[0][:160])
            finally:
                await self._close(client)
            if len(tracer.instances) > 1:
                break
        split = [t.instances for t in tracers if len(t.instances) > 1]
        rejected = sum(1 for t in tracers for _, status in t.seen if status == 400)
        if split:
            return Check(name, False, f"the polling requests of one client reached {', '.join(split[0])}: "
                                      "the balancer is not sticky (use ip_hash, a cookie or a header hash)")
        if failures:
            why = f"{rejected} requests rejected with 400 (unknown Engine.IO sid)" if rejected else failures[0]
            return Check(name, False, f"{len(failures)}/{len(tracers)} polling clients failed: {why}")
        placed = sorted({t.instances[0] for t in tracers if t.instances})
        if not placed:
            return Check(name, True, "polling sessions held (no instance header to show where)")
        return Check(name, True, f"every polling client stayed on one instance; {len(tracers)} clients "
                                 f"spread over {', '.join(placed)}")

    async def _poll_round_trip(self, client: ChainlitClient, source) -> None:
        await client.connect(timeout=self.timeout)
        answer, nonce = await self._probe(source, client.session_id)
        await client.wait_for(lambda c=client, n=nonce: self._got(c, n), self.timeout)

    async def check_websocket(self) -> Check:
        client = await self._connected(self.sources[0])
        try:
            transport = client.sio.transport()
            if transport != "websocket":
                return Check("websocket upgrade", False, f"connected over {transport}")
            return Check("websocket upgrade", True, "Socket.IO connected over a websocket through the balancer")
        finally:
            await self._close(client)

    async def check_cross_instance(self) -> Check:
        name = "cross-instance delivery"
        client = await self._connected(self.sources[0])
        try:
            for source in self.sources:
                answer, nonce = await self._probe(source, client.session_id)
                try:
                    await client.wait_for(lambda n=nonce: self._got(client, n), self.timeout)
                except TimeoutError:
                    where = "locally" if answer["local"] else "through Redis"
                    return Check(name, False, f"an emit from {answer['instance']} ({where}) never reached "
                                              "the client: is the Redis listener of its instance alive?")
                if not answer["local"]:
                    return Check(name, True, f"emit on {answer['instance']} reached the client on "
                                             f"{answer.get('owner') or 'its instance'} through Redis")
            return Check(name, None, "every request from this machine reaches one instance "
                                     f"({answer['instance']}), so no emit could cross instances; run doctor "
                                     "from a loopback URL or from several machines")
        finally:
            await self._close(client)

    async def check_restore(self) -> Check:
        name = "session restore"
        first = await self._connected(self.sources[0])
        session_id = first.session_id
        before = await self._until_known(self.sources[0], first)
        await self._close(first)
        # Reconnect the same session from a source the balancer sends elsewhere, if there is one.
        others = [s for s in self.sources if self.where.get(s) not in (None, before["owner"])]
        source = others[0] if others else self.sources[0]
        second = await self._connected(source, session_id=session_id)
        try:
            after = await self._until_known(source, second, owner_not=before["owner"] if others else None)
        finally:
            await self._close(second)
        if after["thread"] != before["thread"]:
            return Check(name, False, f"after a reconnect to {after['owner']} the session got a new thread "
                                      "(it was recreated, not restored)")
        moved = f"moved {before['owner']} -> {after['owner']}" if after["owner"] != before["owner"] else \
            f"stayed on {after['owner']} (no other instance reachable from here)"
        return Check(name, True, f"reconnected session kept its thread and receives emits; {moved}")

    async def _until_known(self, source, client: ChainlitClient, owner_not: str | None = None) -> dict:
        """Probe until Redis holds the session (written just after the handshake) and it is delivered."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        while True:
            answer, nonce = await self._probe(source, client.session_id)
            ready = answer["known"] and (owner_not is None or answer["owner"] != owner_not)
            if ready:
                await client.wait_for(lambda n=nonce: self._got(client, n), self.timeout)
                return answer
            if loop.time() > deadline:
                raise TimeoutError(f"session {client.session_id} never appeared in Redis "
                                   f"(last answer: {answer})")
            await asyncio.sleep(0.2)

    async def check_idle(self) -> Check:
        """An idle socket must outlive Engine.IO's ping interval: a proxy read timeout below it cuts
        every quiet chat."""
        name = "timeouts"
        client = self._client(self.sources[-1])
        await client.connect(timeout=self.timeout)
        interval = client.sio.eio.ping_interval
        idle = self.idle_seconds if self.idle_seconds is not None else interval + 5
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + idle
            while loop.time() < deadline and client.sio.connected:
                await asyncio.sleep(min(0.5, max(0.0, deadline - loop.time())))
            if client.sio.connected and client.connects == 1:
                return Check(name, True, f"an idle websocket stayed open for {idle:.0f} s "
                                         f"(Socket.IO ping interval {interval:.0f} s)")
            return Check(name, False, f"an idle websocket was cut within {idle:.0f} s: the balancer's "
                                      f"read/send timeouts must exceed Socket.IO's ping interval "
                                      f"({interval:.0f} s; nginx: proxy_read_timeout, values nginx.readTimeout)")
        finally:
            await self._close(client)
