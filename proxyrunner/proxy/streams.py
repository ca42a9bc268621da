"""Relaying server-sent-event streams, and closing them cleanly when the proxy drains.

The rule: bytes are written to the client as they arrive (no buffering), and the proxy
only ever ends a stream between two events, with a ``retry:`` hint, so that a client
following the spec reconnects (through another replica) without losing an event.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Final

from aiohttp import web

from proxyrunner.proxy.upstream import BackendResponse

# How long a draining stream waits for a half-relayed event to complete.
_EVENT_COMPLETION_GRACE: Final = 2.0


class StreamRegistry:
    """What the data path is doing now, so that drain can end streams and report."""

    def __init__(self) -> None:
        self._closing = asyncio.Event()
        self.open = 0
        """Open client event streams."""
        self.inflight = 0
        """Requests being served."""
        self.cancelled = 0
        """Requests cancelled because they outlived the drain deadline."""
        self.retry_ms = 1000

    @property
    def closing(self) -> bool:
        return self._closing.is_set()

    def close_all(self, retry_ms: int) -> None:
        """Ask every open stream to end at its next event boundary with this retry hint."""
        self.retry_ms = retry_ms
        self._closing.set()

    async def wait_closing(self) -> None:
        await self._closing.wait()


def _ends_event(chunk: bytes) -> bool:
    return chunk.endswith((b"\n\n", b"\r\n\r\n", b"\r\r"))


async def relay_event_stream(
    upstream: BackendResponse,
    downstream: web.StreamResponse,
    registry: StreamRegistry,
    closable: bool,
) -> None:
    """Copy an SSE body chunk by chunk until the backend ends it, the client goes away, or
    the proxy drains (then finish the current event, send ``retry:`` and stop).

    Only ``closable`` streams end on drain: the long-lived GET streams a client opens to
    listen. A POST answered with SSE carries the result of a request in flight; it runs
    to completion like any other request, or that result would be lost.
    """
    if not closable:
        async for chunk in upstream.content.iter_any():
            await downstream.write(chunk)
        return
    at_boundary = True
    closing = asyncio.ensure_future(registry.wait_closing())
    try:
        while True:
            read = asyncio.ensure_future(upstream.content.readany())
            done, _ = await asyncio.wait({read, closing}, return_when=asyncio.FIRST_COMPLETED)
            if read not in done:
                # Draining: let a half-sent event complete, then hand the client a hint.
                if not at_boundary:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(_EVENT_COMPLETION_GRACE):
                            while not at_boundary:
                                chunk = await read
                                if not chunk:
                                    return
                                await downstream.write(chunk)
                                at_boundary = _ends_event(chunk)
                                read = asyncio.ensure_future(upstream.content.readany())
                read.cancel()
                if at_boundary:
                    await downstream.write(f"retry: {registry.retry_ms}\n\n".encode())
                return
            chunk = read.result()
            if not chunk:
                return
            await downstream.write(chunk)
            at_boundary = _ends_event(chunk)
    finally:
        closing.cancel()
