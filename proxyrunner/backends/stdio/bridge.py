"""One stdio MCP server served to many HTTP clients: the backend behind ``transport: stdio``.

The bridge listens on a loopback port and speaks MCP's streamable HTTP transport (and, for
``proxy_mode: sse``, the legacy HTTP+SSE transport) to the data path, which then treats it
like any other HTTP backend: sessions, placement, drain and re-initialize all work
unchanged. The multiplexing rules live in ``multiplexer``; this module runs the loopback
listener and the server conversation (``serve``), which may end and start again many times
(restarts, re-attaches) while the listener stays up.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

import structlog
from aiohttp import web

from proxyrunner.backends.channel import MessageChannel
from proxyrunner.backends.stdio.legacy import LegacyFace
from proxyrunner.backends.stdio.listener import guarded_app, listen
from proxyrunner.backends.stdio.multiplexer import Multiplexer
from proxyrunner.backends.stdio.streamable import StreamableFace
from proxyrunner.tasks import Supervisor

if TYPE_CHECKING:
    from proxyrunner.telemetry.runtime import Telemetry


class StdioBridge:
    """``serve(channel)`` runs one server lifetime; ``start``/``close`` run the HTTP side,
    which outlives server restarts."""

    def __init__(
        self,
        name: str,
        log: structlog.stdlib.BoundLogger,
        *,
        max_body: int = 8 * 1024 * 1024,
        session_idle: float = 7200.0,
        init_timeout: float = 60.0,
        telemetry: Telemetry | None = None,
    ) -> None:
        self.name = name
        self.telemetry = telemetry
        """Spans for the requests written to the server, their context in ``_meta``."""
        self._log = log.bind(backend=name)
        self._max_body = max_body
        self.mux = Multiplexer(name, log, session_idle=session_idle, init_timeout=init_timeout)
        self._tasks = Supervisor(self._log)
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def attached(self) -> bool:
        return self.mux.attached

    @property
    def inflight(self) -> int:
        """Client requests sent to the server and not answered yet."""
        return self.mux.inflight

    async def wait_attached(self) -> None:
        await self.mux.wait_attached()

    def app(self) -> web.Application:
        streamable = StreamableFace(self.mux, self.telemetry)
        legacy = LegacyFace(self.mux, self._tasks)
        app = guarded_app(self._max_body)
        app.router.add_get("/", self._probe)
        app.router.add_post("/mcp", streamable.post)
        app.router.add_get("/mcp", streamable.get)
        app.router.add_delete("/mcp", streamable.delete)
        app.router.add_get("/sse", legacy.stream)
        app.router.add_post("/messages", legacy.message)
        app.router.add_post("/messages/", legacy.message)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Listen for the data path's requests. StartupError when the port is taken."""
        self._runner, self.port = await listen(self.app(), self.name, host, port)

    async def close(self) -> None:
        await self._tasks.close()
        self.mux.detach("the proxy is shutting down")
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def serve(self, channel: MessageChannel) -> None:
        """Relay between clients and the server on ``channel`` until the server is gone.
        Everything in flight then fails and every session of this server is forgotten."""
        outgoing = self.mux.attach()
        writer = asyncio.get_running_loop().create_task(
            self._write(channel, outgoing), name=f"stdio writer {self.name}"
        )
        try:
            while (line := await channel.receive()) is not None:
                if line.strip():
                    self.mux.from_server(line)
        finally:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
            self.mux.detach("the stdio server exited")
            await channel.close()

    async def _write(self, channel: MessageChannel, outgoing: asyncio.Queue[bytes]) -> None:
        # One writer per server lifetime keeps lines whole and in order, and lets the
        # request handlers send without awaiting (a cancelled handler still sends its
        # notifications/cancelled). It never raises: a conversation that cannot be
        # written to is over, so it closes the channel and the reader above ends.
        while True:
            line = await outgoing.get()
            try:
                await channel.send(line)
            except ConnectionError:
                self._log.warning("stdio server stopped reading its input")
                return
            except Exception:
                self._log.exception("stdio writer failed; ending the conversation")
                await channel.close()
                return

    async def _probe(self, request: web.Request) -> web.Response:
        # Answering at all means "up" to the directory's probe; the status tells a human.
        status = 200 if self.attached else 503
        return web.Response(status=status, text=f"stdio bridge {self.name}\n")
