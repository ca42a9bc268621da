"""A round-robin load balancer for tests, standing in for a Kubernetes Service.

Like a Service it sends each new request to the next *ready* replica (it polls
``/readyz``, as the kubelet's readiness probe would) and has no session affinity. Bodies
are streamed both ways, so SSE streams pass through as they would through kube-proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Callable

import aiohttp
from aiohttp import web

_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "upgrade"}


async def relay(
    client: aiohttp.ClientSession,
    request: web.Request,
    url: str,
    body: bytes | None = None,
    on_answer: Callable[[aiohttp.ClientResponse], None] | None = None,
) -> web.StreamResponse:
    """``request`` sent on to ``url`` (``body``: what was read of it already) and the
    answer streamed back as it comes; ``on_answer`` sees the answer's head first."""
    headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
    if body is None:
        body = await request.read()
    async with client.request(request.method, url, data=body, headers=headers) as answer:
        if on_answer is not None:
            on_answer(answer)
        response = web.StreamResponse(
            status=answer.status,
            headers={k: v for k, v in answer.headers.items() if k.lower() not in _HOP},
        )
        await response.prepare(request)
        async for chunk in answer.content.iter_any():
            await response.write(chunk)
        await response.write_eof()
        return response


class Balancer:
    def __init__(self, upstreams: list[str], probe_interval: float = 0.05) -> None:
        self.upstreams = upstreams
        self.ready: set[str] = set(upstreams)
        self._turn = itertools.count()
        self._probe_interval = probe_interval
        self._runner: web.AppRunner | None = None
        self._client: aiohttp.ClientSession | None = None
        self._probe: asyncio.Task[None] | None = None
        self.url = ""
        self.served: dict[str, int] = dict.fromkeys(upstreams, 0)

    async def _probe_loop(self) -> None:
        assert self._client is not None
        while True:
            for upstream in self.upstreams:
                try:
                    async with self._client.get(
                        f"{upstream}/readyz", timeout=aiohttp.ClientTimeout(total=0.5)
                    ) as response:
                        ok = response.status == 200
                except (aiohttp.ClientError, TimeoutError):
                    ok = False
                if ok:
                    self.ready.add(upstream)
                else:
                    self.ready.discard(upstream)
            await asyncio.sleep(self._probe_interval)

    def _pick(self) -> str:
        ready = [u for u in self.upstreams if u in self.ready]
        if not ready:
            raise web.HTTPServiceUnavailable(text="no ready replica")
        return ready[next(self._turn) % len(ready)]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        assert self._client is not None
        upstream = self._pick()
        self.served[upstream] += 1
        return await relay(self._client, request, f"{upstream}{request.path_qs}")

    async def start(self) -> str:
        self._client = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        self._probe = asyncio.create_task(self._probe_loop(), name="balancer-probe")
        return self.url

    async def stop(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe
        if self._runner is not None:
            await self._runner.cleanup()
        if self._client is not None:
            await self._client.close()


@contextlib.asynccontextmanager
async def balancer(upstreams: list[str]) -> AsyncIterator[Balancer]:
    lb = Balancer(upstreams)
    await lb.start()
    try:
        yield lb
    finally:
        await lb.stop()
