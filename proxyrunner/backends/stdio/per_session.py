"""One stdio child per session: the backend behind ``stdio_isolation: per-session``.

Some stdio servers keep per-client state in the process (a working directory, a logged-in
account, a scratch database), or serve tenants who must not share a process at all. Here
each ``initialize`` starts a child of its own, with its own multiplexer, so nothing of one
session is visible to another. Like ``StdioBridge``, this listens on loopback and speaks
streamable HTTP to the data path, which sees one ordinary backend: the session id the
child's multiplexer mints picks the child.

A child ends with its session: on DELETE, after ``idle_timeout`` without a request or an
open stream, when the proxy closes, or when it exits by itself (its session is then
forgotten, and the data path re-initializes it, which starts a new child). At most
``max_sessions`` children run at once; an ``initialize`` past that gets 503 with
``Retry-After``, since evicting a live session would let any client end everyone else's.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Final

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from proxyrunner.backends.channel import ProcessChannel, StderrTail, stop_process
from proxyrunner.backends.stdio.bridge import StdioBridge
from proxyrunner.backends.stdio.listener import guarded_app, listen
from proxyrunner.backends.stdio.streamable import StreamableFace, revision_refusal
from proxyrunner.http_answers import error_response, session_not_found
from proxyrunner.mcp import jsonrpc, revisions
from proxyrunner.metrics import Metrics
from proxyrunner.principal import short_hash
from proxyrunner.tasks import Supervisor

if TYPE_CHECKING:
    from proxyrunner.telemetry.runtime import Telemetry

Launch = Callable[[], Awaitable[asyncio.subprocess.Process]]
"""Starts one child with stdin, stdout and stderr as pipes, in a process group of its own."""

RETRY_AFTER: Final = "5"
_STOP_GRACE: Final = 5.0


class _Child:
    def __init__(self, number: int, process: asyncio.subprocess.Process, bridge: StdioBridge):
        self.number = number
        self.process = process
        self.bridge = bridge
        self.face = StreamableFace(bridge.mux, bridge.telemetry)
        self.session_id: str | None = None
        self.busy = 0
        """Requests and streams of the session being served now: never idle while any."""
        self.last_used = time.monotonic()
        self.output = StderrTail()
        self.ended = asyncio.Event()


class PerSessionBridge:
    """``start``/``close`` run the loopback listener; children come and go with sessions."""

    def __init__(
        self,
        name: str,
        log: structlog.stdlib.BoundLogger,
        launch: Launch,
        metrics: Metrics,
        *,
        max_sessions: int,
        idle_timeout: float,
        max_body: int = 8 * 1024 * 1024,
        session_idle: float = 7200.0,
        telemetry: Telemetry | None = None,
    ) -> None:
        self.name = name
        self._log = log.bind(backend=name)
        self._telemetry = telemetry
        self._launch = launch
        self._metrics = metrics
        self._max_sessions = max_sessions
        self._idle_timeout = idle_timeout
        self._max_body = max_body
        self._session_idle = session_idle
        self._children: set[_Child] = set()
        """Every child running or starting: what the cap counts."""
        self._by_session: dict[str, _Child] = {}
        self._numbers = itertools.count(1)
        self._tasks = Supervisor(self._log)
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def attached(self) -> bool:
        """Ready while listening: a child is only started for a session."""
        return self._runner is not None

    @property
    def children(self) -> int:
        return len(self._children)

    def app(self) -> web.Application:
        app = guarded_app(self._max_body)
        app.router.add_get("/", self._probe)
        app.router.add_post("/mcp", self.post)
        app.router.add_get("/mcp", self.get)
        app.router.add_delete("/mcp", self.delete)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._runner, self.port = await listen(self.app(), self.name, host, port)
        self._tasks.spawn(f"idle reaper {self.name}", self._reap_idle)

    async def close(self) -> None:
        """Stop every child (drain and shutdown leave no process behind), then listening."""
        await asyncio.gather(*(self._stop(child) for child in list(self._children)))
        await self._tasks.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # ------------------------------------------------------------------ HTTP

    async def post(self, request: web.Request) -> web.StreamResponse:
        session_id = request.headers.get(revisions.SESSION_HEADER)
        if session_id:
            child = self._by_session.get(session_id)
            if child is None:
                return session_not_found()
            return await self._through(child, child.face.post, request)
        # aiohttp keeps the body it read, so the child's face reads it again for free.
        try:
            parsed = jsonrpc.parse_json(await request.read())
        except ValueError:
            return error_response(400, jsonrpc.PARSE_ERROR, "the body is not JSON")
        messages = parsed if isinstance(parsed, list) else [parsed]
        if not all(isinstance(m, dict) for m in messages):
            return error_response(400, jsonrpc.INVALID_REQUEST, "not a JSON-RPC 2.0 message")
        refused = revision_refusal(request, messages)
        if refused is not None:
            return refused
        if isinstance(parsed, dict) and parsed.get("method") == "initialize":
            return await self._initialize(request)
        # Without a session there is no child to ask, and starting one for a single
        # message would let sessionless requests bypass the cap on processes.
        return error_response(
            400, jsonrpc.INVALID_REQUEST, "Bad Request: no session; send initialize first"
        )

    async def get(self, request: web.Request) -> web.StreamResponse:
        session_id = request.headers.get(revisions.SESSION_HEADER)
        if not session_id:
            return web.Response(status=405, headers={"Allow": "POST, DELETE"})
        child = self._by_session.get(session_id)
        if child is None:
            return session_not_found()
        return await self._through(child, child.face.get, request)

    async def delete(self, request: web.Request) -> web.StreamResponse:
        child = self._by_session.get(request.headers.get(revisions.SESSION_HEADER) or "")
        if child is None:
            return session_not_found()
        response = await child.face.delete(request)
        await self._stop(child)
        return response

    async def _probe(self, request: web.Request) -> web.Response:
        return web.Response(text=f"stdio bridge {self.name} (one process per session)\n")

    async def _through(
        self, child: _Child, handler: Handler, request: web.Request
    ) -> web.StreamResponse:
        child.busy += 1
        try:
            return await handler(request)
        finally:
            child.busy -= 1
            child.last_used = time.monotonic()

    async def _initialize(self, request: web.Request) -> web.StreamResponse:
        if len(self._children) >= self._max_sessions:
            self._metrics.stdio_sessions_refused.inc()
            return error_response(
                503,
                jsonrpc.BACKEND_UNAVAILABLE,
                f"Service Unavailable: all {self._max_sessions} stdio server processes are "
                "in use (stdio_max_sessions); retry later",
                headers={"Retry-After": RETRY_AFTER},
            )
        child = await self._start_child()
        if child is None:
            return error_response(
                502, jsonrpc.BACKEND_UNAVAILABLE, "the stdio server could not be started"
            )
        try:
            response = await self._through(child, child.face.post, request)
        except BaseException:
            await self._stop(child)
            raise
        session_id = response.headers.get(revisions.SESSION_HEADER)
        if response.status != 200 or not session_id or child.ended.is_set():
            await self._stop(child)
            return response
        child.session_id = session_id
        self._by_session[session_id] = child
        self._log.info(
            "stdio session process started",
            session_hash=short_hash(session_id),
            pid=child.process.pid,
            children=len(self._children),
        )
        return response

    # ------------------------------------------------------------------ children

    async def _start_child(self) -> _Child | None:
        number = next(self._numbers)
        try:
            process = await self._launch()
        except OSError as exc:
            self._log.error("stdio server could not be started", error=str(exc))
            return None
        # Only its multiplexer and conversation are used; this object listens itself.
        bridge = StdioBridge(
            f"{self.name}/{number}",
            self._log,
            max_body=self._max_body,
            session_idle=self._session_idle,
            telemetry=self._telemetry,
        )
        child = _Child(number, process, bridge)
        self._children.add(child)
        self._metrics.stdio_children.set(len(self._children))
        self._tasks.spawn(f"stdio child {bridge.name}", lambda: self._run(child), policy="once")
        await bridge.wait_attached()
        return child

    async def _run(self, child: _Child) -> None:
        process = child.process
        log = self._log.bind(child=child.number, pid=process.pid)
        assert process.stderr is not None
        try:
            await asyncio.gather(
                self._read_stderr(child, process.stderr),
                child.bridge.serve(ProcessChannel(process, log)),
            )
            await process.wait()
        finally:
            self._forget(child)
        log.info(
            "stdio session process exited",
            exit_code=process.returncode,
            last_output=list(child.output.lines)[-3:],
        )

    async def _read_stderr(self, child: _Child, stream: asyncio.StreamReader) -> None:
        while True:
            try:
                raw = await stream.readline()
            except ValueError:  # a line over the limit; asyncio dropped it
                continue
            if not raw:
                return
            # Bound late: the session id is minted after the child has started.
            hashed = short_hash(child.session_id) if child.session_id else None
            child.output.add(raw, self._log.bind(child=child.number, session_hash=hashed))

    def _forget(self, child: _Child) -> None:
        child.ended.set()
        self._children.discard(child)
        if child.session_id is not None and self._by_session.get(child.session_id) is child:
            del self._by_session[child.session_id]
        self._metrics.stdio_children.set(len(self._children))

    async def _stop(self, child: _Child) -> None:
        # Unreachable at once: a request racing the stop gets 404, not a dying process.
        if child.session_id is not None:
            self._by_session.pop(child.session_id, None)
        await child.bridge.close()
        await stop_process(child.process, _STOP_GRACE)
        await child.ended.wait()

    async def _reap_idle(self) -> None:
        interval = max(0.05, min(self._idle_timeout / 4, 5.0))
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            idle = [
                child
                for child in self._children
                if child.session_id is not None
                and not child.busy
                and now - child.last_used >= self._idle_timeout
            ]
            for child in idle:
                self._log.info(
                    "stdio session process idle; stopping",
                    session_hash=short_hash(child.session_id or ""),
                )
            await asyncio.gather(*(self._stop(child) for child in idle))
