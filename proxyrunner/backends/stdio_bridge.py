"""One stdio MCP server served to many HTTP clients: the backend behind `transport: stdio`.

A stdio server holds one JSON-RPC conversation on stdin and stdout. The bridge listens on
a loopback port and speaks MCP's streamable HTTP transport (and, for ``proxy_mode: sse``,
the legacy HTTP+SSE transport) to the data path, which then treats it like any other HTTP
backend: sessions, placement, drain and re-initialize all work unchanged.

Many client sessions share the one conversation, so the bridge multiplexes:

- **One handshake.** The first ``initialize`` goes to the server, and the bridge sends the
  ``notifications/initialized`` that completes it. Every later ``initialize`` is answered
  from the kept result, and clients' own ``notifications/initialized`` are not repeated.
- **Ids and progress tokens are rewritten** to strings unique to this bridge (random
  prefix, counter) and restored on the way back, so two clients that both use id 1 never
  see each other's answers, and neither do two proxy replicas attached to the same
  container (an attached container's stdout reaches every attached stream).
- **Server messages that answer nothing** are routed: progress to the request that asked
  for it; server requests (sampling, elicitation, roots) to the newest request in flight,
  else to the most recently active session; other notifications (log messages, list
  changes, resource updates) to every session. A server ``ping`` is answered here.
- **When the server ends** (process exit, attach stream closed), requests in flight fail
  with 502 and every session is forgotten, so the data path's next request for one gets
  404 and re-initializes it, on the restarted server or another backend.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import itertools
import json
import secrets
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import structlog
from aiohttp import web

from proxyrunner.backends.channel import MessageChannel
from proxyrunner.proxy import standard_headers
from proxyrunner.proxy.protocol import (
    BACKEND_UNAVAILABLE,
    INTERNAL_ERROR,
    INVALID_REQUEST,
    PARSE_ERROR,
    PROTOCOL_VERSION_HEADER,
    SESSION_HEADER,
    SESSION_NOT_FOUND,
    parse_json,
)
from proxyrunner.proxy.rebinding import RebindingGuard, guarded

JsonMessage = dict[str, Any]
Mode = Literal["json", "stream", "legacy"]

SERVER_GONE: Final = BACKEND_UNAVAILABLE
UNSUPPORTED_PROTOCOL_VERSION: Final = -32022
# The revisions with an initialize handshake: the era a shared stdio server is kept in.
HANDSHAKE_REVISIONS: Final = ("2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05")
REQUEST_CANCELLED: Final = -32800  # as LSP: the client gave up on the request

_OUTBOX_LIMIT: Final = 1000
_SERVER_REQUESTS_LIMIT: Final = 1000
_KEEPALIVE: Final = 15.0
_MAX_SESSIONS: Final = 10_000


def _dumps(message: object) -> bytes:
    # No indent: json.dumps escapes newlines inside strings, so a message is one line.
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()


def _error(message_id: Any, code: int, text: str, data: Any = None) -> JsonMessage:
    error: dict[str, Any] = {"code": code, "message": text}
    if data is not None:
        error["data"] = data
    return {"jsonrpc": "2.0", "id": message_id, "error": error}


def _error_response(
    status: int, message_id: Any, code: int, text: str, data: Any = None
) -> web.Response:
    return web.Response(
        status=status,
        body=_dumps(_error(message_id, code, text, data)),
        content_type="application/json",
    )


def _modern_revision(request: web.Request, messages: list[JsonMessage]) -> str | None:
    """The 2026-07-28-or-later revision a request claims (header or ``_meta``), if any."""
    header = request.headers.get(PROTOCOL_VERSION_HEADER)
    if header is not None:
        return header if standard_headers.applies_to(header) else None
    for message in messages:
        meta = standard_headers.envelope(message)
        if meta is not None:
            claimed = meta.get(standard_headers.VERSION_META_KEY)
            if isinstance(claimed, str) and standard_headers.applies_to(claimed):
                return claimed
    return None


def _is_request(message: JsonMessage) -> bool:
    return "method" in message and "id" in message


def _sse_event(message: JsonMessage) -> bytes:
    return b"event: message\ndata: " + _dumps(message) + b"\n\n"


class _Outbox:
    """Messages on their way to a client stream. Bounded: a client that never reads loses
    the oldest messages, not this process's memory."""

    def __init__(self) -> None:
        self._items: collections.deque[JsonMessage] = collections.deque()
        self._changed = asyncio.Event()
        self.closed = False
        self.dropped = 0

    def put(self, message: JsonMessage) -> None:
        if self.closed:
            return
        if len(self._items) >= _OUTBOX_LIMIT:
            self._items.popleft()
            self.dropped += 1
        self._items.append(message)
        self._changed.set()

    def close(self) -> None:
        self.closed = True
        self._changed.set()

    async def get(self) -> JsonMessage | None:
        """The next message; None once closed and empty."""
        while not self._items:
            if self.closed:
                return None
            self._changed.clear()
            await self._changed.wait()
        return self._items.popleft()


@dataclass(eq=False)
class _Session:
    id: str
    epoch: int
    outbox: _Outbox = field(default_factory=_Outbox)
    last_used: float = field(default_factory=time.monotonic)
    streams: int = 0
    pending: dict[str, _Pending] = field(default_factory=dict)


@dataclass(eq=False)
class _Pending:
    """A client request the server has not answered yet."""

    bridge_id: str
    original_id: Any
    session: _Session
    mode: Mode
    related: _Outbox
    """Where progress and server requests for this request go: its own stream when the
    client takes the answer as SSE, else the session's stream."""
    done: asyncio.Future[JsonMessage]
    progress_token: str | None = None
    original_token: Any = None
    failed: bool = False

    def finish(self, message: JsonMessage, failed: bool = False) -> None:
        if self.done.done():
            return
        self.failed = failed
        message["id"] = self.original_id
        self.done.set_result(message)
        if self.mode != "json":
            self.related.put(message)
        if self.mode == "stream":
            self.related.close()


class StdioBridge:
    """See the module docstring. ``serve(channel)`` runs one server lifetime (an epoch);
    ``start``/``close`` run the HTTP side, which outlives server restarts."""

    def __init__(
        self,
        name: str,
        log: structlog.stdlib.BoundLogger,
        *,
        max_body: int = 8 * 1024 * 1024,
        session_idle: float = 7200.0,
        init_timeout: float = 60.0,
    ) -> None:
        self.name = name
        self._log = log.bind(backend=name)
        self._max_body = max_body
        self._session_idle = session_idle
        self._init_timeout = init_timeout
        self._prefix = f"pr{secrets.token_hex(4)}-"
        self._ids = itertools.count(1)
        self._epoch = 0
        self._outgoing: asyncio.Queue[bytes] | None = None
        self._attached = asyncio.Event()
        self._init_lock = asyncio.Lock()
        self._init_result: Any = None
        self._init_epoch = -1
        self._sessions: collections.OrderedDict[str, _Session] = collections.OrderedDict()
        self._pending: dict[str, _Pending] = {}
        self._tokens: dict[str, _Pending] = {}
        self._server_requests: collections.OrderedDict[Any, _Session] = collections.OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()
        self._runner: web.AppRunner | None = None
        self.port = 0

    # ------------------------------------------------------------------ lifecycle

    @property
    def attached(self) -> bool:
        return self._outgoing is not None

    @property
    def inflight(self) -> int:
        """Client requests sent to the server and not answered yet."""
        return len(self._pending)

    def app(self) -> web.Application:
        # Loopback on a random port, but a page doing DNS rebinding could scan for it.
        local = functools.partial(guarded, RebindingGuard("127.0.0.1", check_origin=False))
        app = web.Application(client_max_size=self._max_body)
        app.router.add_get("/", local(self._probe))
        app.router.add_post("/mcp", local(self._post))
        app.router.add_get("/mcp", local(self._get))
        app.router.add_delete("/mcp", local(self._delete))
        app.router.add_get("/sse", local(self._legacy_stream))
        app.router.add_post("/messages", local(self._legacy_message))
        app.router.add_post("/messages/", local(self._legacy_message))
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Listen for the data path's requests."""
        self._runner = web.AppRunner(
            self.app(), handle_signals=False, access_log=None, shutdown_timeout=0.5
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._end_epoch("the proxy is shutting down")
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def serve(self, channel: MessageChannel) -> None:
        """Relay between clients and the server on ``channel`` until the server is gone.
        Everything in flight then fails and every session of this server is forgotten."""
        self._epoch += 1
        outgoing: asyncio.Queue[bytes] = asyncio.Queue()
        self._outgoing = outgoing
        self._attached.set()
        writer = asyncio.get_running_loop().create_task(self._write(channel, outgoing))
        try:
            while (line := await channel.receive()) is not None:
                if line.strip():
                    self._from_server(line)
        finally:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
            self._end_epoch("the stdio server exited")
            await channel.close()

    async def wait_attached(self) -> None:
        await self._attached.wait()

    async def _write(self, channel: MessageChannel, outgoing: asyncio.Queue[bytes]) -> None:
        # One writer per server lifetime keeps lines whole and in order, and lets the
        # request handlers send without awaiting (a cancelled handler still sends its
        # notifications/cancelled).
        while True:
            line = await outgoing.get()
            try:
                await channel.send(line)
            except ConnectionError:
                self._log.warning("stdio server stopped reading its input")
                return

    def _end_epoch(self, reason: str) -> None:
        self._outgoing = None
        self._attached.clear()
        for pending in list(self._pending.values()):
            pending.finish(_error(None, SERVER_GONE, reason), failed=True)
        self._pending.clear()
        self._tokens.clear()
        self._server_requests.clear()
        for session in self._sessions.values():
            session.outbox.close()
        self._sessions.clear()

    # ------------------------------------------------------------------ to the server

    def _to_server(self, message: JsonMessage) -> bool:
        if self._outgoing is None:
            return False
        self._outgoing.put_nowait(_dumps(message))
        return True

    def _open(self, session: _Session, message: JsonMessage, mode: Mode) -> _Pending:
        """Register a client request and send it with a bridge id (and progress token)."""
        bridge_id = f"{self._prefix}{next(self._ids)}"
        related = _Outbox() if mode == "stream" else session.outbox
        done: asyncio.Future[JsonMessage] = asyncio.get_running_loop().create_future()
        pending = _Pending(bridge_id, message.get("id"), session, mode, related, done)
        outgoing = dict(message, id=bridge_id)
        params = message.get("params")
        meta = params.get("_meta") if isinstance(params, dict) else None
        if isinstance(meta, dict) and "progressToken" in meta:
            assert isinstance(params, dict)
            pending.original_token = meta["progressToken"]
            pending.progress_token = f"{bridge_id}-progress"
            outgoing["params"] = dict(
                params, _meta=dict(meta, progressToken=pending.progress_token)
            )
            self._tokens[pending.progress_token] = pending
        self._pending[bridge_id] = pending
        session.pending[bridge_id] = pending
        if not self._to_server(outgoing):
            pending.finish(_error(None, SERVER_GONE, "the stdio server is not running"), True)
        return pending

    def _close_pending(self, pending: _Pending, reason: str = "the client went away") -> None:
        """Forget a request. If it is still open, answer its client with an error and tell
        the server to stop working on it (a cancelled request gets no answer from the
        server, so nothing else would ever end the client's wait)."""
        self._pending.pop(pending.bridge_id, None)
        pending.session.pending.pop(pending.bridge_id, None)
        if pending.progress_token is not None:
            self._tokens.pop(pending.progress_token, None)
        if not pending.done.done():
            pending.finish(_error(None, REQUEST_CANCELLED, reason))
            self._to_server(
                {
                    "jsonrpc": "2.0",
                    "method": "notifications/cancelled",
                    "params": {"requestId": pending.bridge_id, "reason": reason},
                }
            )

    def _from_client(self, session: _Session, message: JsonMessage) -> None:
        """A client notification or a client's answer to a server request."""
        method = message.get("method")
        if method == "notifications/initialized":
            return  # the bridge completed the one handshake itself
        if method == "notifications/cancelled":
            params = message.get("params")
            wanted = params.get("requestId") if isinstance(params, dict) else None
            match = next((p for p in session.pending.values() if p.original_id == wanted), None)
            if match is not None:
                self._close_pending(match, "cancelled by the client")
            return
        elif method is None:
            self._server_requests.pop(message.get("id"), None)
        self._to_server(message)

    async def _handshake(self, message: JsonMessage) -> JsonMessage:
        """The answer to a client's initialize: the server's own answer the first time,
        the kept result after that."""
        async with self._init_lock:
            if self._init_epoch != self._epoch or self._init_result is None:
                epoch = self._epoch
                probe = _Session("", epoch)
                pending = self._open(probe, message, "json")
                try:
                    async with asyncio.timeout(self._init_timeout):
                        answer = await asyncio.shield(pending.done)
                except TimeoutError:
                    answer = _error(message.get("id"), INTERNAL_ERROR, "initialize timed out")
                finally:
                    self._close_pending(pending, "initialize timed out")
                if "result" not in answer:
                    return answer
                self._init_result = answer["result"]
                self._init_epoch = epoch
                self._to_server({"jsonrpc": "2.0", "method": "notifications/initialized"})
                self._log.info("stdio server initialized", epoch=epoch)
                return answer
        return {"jsonrpc": "2.0", "id": message.get("id"), "result": self._init_result}

    # ------------------------------------------------------------------ from the server

    def _from_server(self, line: bytes) -> None:
        try:
            parsed = parse_json(line)
        except ValueError:
            # Servers sometimes print banners on stdout; they are not protocol.
            self._log.debug("stdio server wrote a non-JSON line", line=line[:200])
            return
        for message in parsed if isinstance(parsed, list) else [parsed]:
            if isinstance(message, dict):
                self._route(message)

    def _route(self, message: JsonMessage) -> None:
        method = message.get("method")
        if method is None:
            pending = self._pending.pop(str(message.get("id")), None)
            if pending is None:
                return  # an answer for another replica attached to the same server
            pending.session.pending.pop(pending.bridge_id, None)
            if pending.progress_token is not None:
                self._tokens.pop(pending.progress_token, None)
            pending.finish(message)
        elif "id" in message:
            self._server_request(message)
        elif method == "notifications/progress":
            params = message.get("params")
            token = params.get("progressToken") if isinstance(params, dict) else None
            target = self._tokens.get(token) if isinstance(token, str) else None
            if target is not None and isinstance(params, dict):
                params["progressToken"] = target.original_token
                target.related.put(message)
        elif method == "notifications/cancelled":
            params = message.get("params")
            asked = params.get("requestId") if isinstance(params, dict) else None
            session = self._server_requests.pop(asked, None)
            if session is not None:
                session.outbox.put(message)
        else:
            for session in self._sessions.values():
                session.outbox.put(message)

    def _server_request(self, message: JsonMessage) -> None:
        if message.get("method") == "ping":
            self._to_server({"jsonrpc": "2.0", "id": message["id"], "result": {}})
            return
        newest = next(reversed(self._pending.values()), None) if self._pending else None
        if newest is not None and newest.session.id:
            session, outbox = newest.session, newest.related
        elif self._sessions:
            session = next(reversed(self._sessions.values()))
            outbox = session.outbox
        else:
            self._to_server(_error(message["id"], INTERNAL_ERROR, "no client is connected"))
            return
        self._server_requests[message["id"]] = session
        while len(self._server_requests) > _SERVER_REQUESTS_LIMIT:
            self._server_requests.popitem(last=False)
        outbox.put(message)

    # ------------------------------------------------------------------ sessions

    def _new_session(self) -> _Session:
        now = time.monotonic()
        while self._sessions:
            oldest = next(iter(self._sessions.values()))
            idle = now - oldest.last_used > self._session_idle and not oldest.streams
            if not idle and len(self._sessions) < _MAX_SESSIONS:
                break
            self._drop(oldest)
        session = _Session(secrets.token_urlsafe(24), self._epoch)
        self._sessions[session.id] = session
        return session

    def _find(self, session_id: str | None) -> _Session | None:
        session = self._sessions.get(session_id) if session_id else None
        if session is None or session.epoch != self._epoch:
            return None
        session.last_used = time.monotonic()
        self._sessions.move_to_end(session.id)
        return session

    def _drop(self, session: _Session) -> None:
        self._sessions.pop(session.id, None)
        for pending in list(session.pending.values()):
            self._close_pending(pending)
        session.outbox.close()

    # ------------------------------------------------------------------ HTTP: streamable

    async def _probe(self, request: web.Request) -> web.Response:
        # Answering at all means "up" to the directory's probe; the status tells a human.
        status = 200 if self.attached else 503
        return web.Response(status=status, text=f"stdio bridge {self.name}\n")

    async def _read_messages(
        self, request: web.Request
    ) -> tuple[list[JsonMessage], bool] | web.Response:
        try:
            parsed = parse_json(await request.read())
        except ValueError:
            return _error_response(400, None, PARSE_ERROR, "the body is not JSON")
        batch = isinstance(parsed, list)
        messages = parsed if batch else [parsed]
        if not messages or not all(
            isinstance(m, dict) and m.get("jsonrpc") == "2.0" for m in messages
        ):
            return _error_response(400, None, INVALID_REQUEST, "not a JSON-RPC 2.0 message")
        if not self.attached:
            return _error_response(502, None, SERVER_GONE, "the stdio server is not running")
        return messages, batch

    async def _post(self, request: web.Request) -> web.StreamResponse:
        read = await self._read_messages(request)
        if isinstance(read, web.Response):
            return read
        messages, batch = read
        revision = _modern_revision(request, messages)
        if revision is not None:
            # A stdio server lives in one era for its whole life, set by its first message:
            # a 2026-07-28 request would lock it out of the initialize handshake, and every
            # session of an earlier revision (most clients) would fail until it restarts.
            # So it is kept in the handshake era; "unsupported version" with the versions
            # it speaks is what makes a negotiating client fall back to initialize.
            return _error_response(
                400,
                messages[0].get("id") if len(messages) == 1 else None,
                UNSUPPORTED_PROTOCOL_VERSION,
                "Unsupported protocol version",
                {"supported": list(HANDSHAKE_REVISIONS), "requested": revision},
            )
        if any(m.get("method") == "initialize" for m in messages):
            if batch:
                return _error_response(
                    400, None, INVALID_REQUEST, "initialize must not be part of a batch"
                )
            answer = await self._handshake(messages[0])
            if "result" not in answer:
                status = 504 if answer["error"]["message"] == "initialize timed out" else 200
                return web.Response(
                    status=status, body=_dumps(answer), content_type="application/json"
                )
            session = self._new_session()
            return web.Response(
                body=_dumps(answer),
                content_type="application/json",
                headers={SESSION_HEADER: session.id},
            )
        session_id = request.headers.get(SESSION_HEADER)
        found = self._find(session_id) if session_id else _Session("", self._epoch)
        if found is None:
            return _error_response(404, None, SESSION_NOT_FOUND, "session not found")
        session = found
        requests = [m for m in messages if _is_request(m)]
        for message in messages:
            if not _is_request(message):
                self._from_client(session, message)
        if not requests:
            return web.Response(status=202)
        streamed = not batch and "text/event-stream" in request.headers.get("Accept", "")
        mode: Mode = "stream" if streamed else "json"
        pendings = [self._open(session, m, mode) for m in requests]
        try:
            if streamed:
                return await self._stream_answer(request, pendings[0])
            answers = [await asyncio.shield(p.done) for p in pendings]
            status = 502 if any(p.failed for p in pendings) else 200
            return web.Response(
                status=status,
                body=_dumps(answers if batch else answers[0]),
                content_type="application/json",
            )
        finally:
            for pending in pendings:
                self._close_pending(pending)

    async def _stream_answer(self, request: web.Request, pending: _Pending) -> web.StreamResponse:
        if pending.done.done() and pending.failed:
            return web.Response(
                status=502, body=_dumps(pending.done.result()), content_type="application/json"
            )
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        await self._pump(response, pending.related)
        await response.write_eof()
        return response

    async def _pump(self, response: web.StreamResponse, outbox: _Outbox) -> None:
        """Write the outbox as SSE until it closes; comments keep idle streams alive."""
        while True:
            try:
                message = await asyncio.wait_for(outbox.get(), _KEEPALIVE)
            except TimeoutError:
                await response.write(b": keepalive\n\n")
                continue
            if message is None:
                return
            await response.write(_sse_event(message))

    async def _get(self, request: web.Request) -> web.StreamResponse:
        session_id = request.headers.get(SESSION_HEADER)
        if not session_id:
            return web.Response(status=405, headers={"Allow": "POST, DELETE"})
        session = self._find(session_id)
        if session is None:
            return _error_response(404, None, SESSION_NOT_FOUND, "session not found")
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        session.streams += 1
        try:
            await self._pump(response, session.outbox)
        finally:
            session.streams -= 1
        await response.write_eof()
        return response

    async def _delete(self, request: web.Request) -> web.Response:
        session = self._find(request.headers.get(SESSION_HEADER))
        if session is None:
            return _error_response(404, None, SESSION_NOT_FOUND, "session not found")
        self._drop(session)
        return web.Response(status=200)

    # ------------------------------------------------------------------ HTTP: legacy SSE

    async def _legacy_stream(self, request: web.Request) -> web.StreamResponse:
        if not self.attached:
            return _error_response(502, None, SERVER_GONE, "the stdio server is not running")
        session = self._new_session()
        session.streams += 1
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        try:
            await response.prepare(request)
            endpoint = f"/messages?session_id={session.id}".encode()
            await response.write(b"event: endpoint\ndata: " + endpoint + b"\n\n")
            await self._pump(response, session.outbox)
            await response.write_eof()
        finally:
            # The stream is the session: when it ends, so does the session.
            session.streams -= 1
            self._drop(session)
        return response

    async def _legacy_message(self, request: web.Request) -> web.Response:
        session = self._find(request.query.get("session_id"))
        if session is None:
            return web.Response(status=404, text="session not found")
        read = await self._read_messages(request)
        if isinstance(read, web.Response):
            return read
        for message in read[0]:
            if message.get("method") == "initialize":
                self._spawn(self._legacy_handshake(session, message))
            elif _is_request(message):
                pending = self._open(session, message, "legacy")
                pending.done.add_done_callback(functools.partial(self._forget, pending))
            else:
                self._from_client(session, message)
        return web.Response(status=202, text="Accepted")

    def _forget(self, pending: _Pending, _: object) -> None:
        self._close_pending(pending)

    async def _legacy_handshake(self, session: _Session, message: JsonMessage) -> None:
        session.outbox.put(await self._handshake(message))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
