"""The streamable-HTTP data path: POST, GET and DELETE on /mcp.

Hot path for a warm session: read the (small) body, look the proxy session id up in the
store (an in-process cache hit, no I/O), swap in the backend's session id, forward over
the pooled keep-alive client, and relay the answer: JSON whole, SSE chunk by chunk. The
body is parsed only for an ``initialize`` without a session id, because that is the one
request whose routing depends on its content.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, replace
from typing import Final

import aiohttp
import structlog
from aiohttp import web
from yarl import URL

from proxyrunner.backends.directory import Backend, BackendDirectory
from proxyrunner.config import RunConfig
from proxyrunner.errors import BackendUnavailable, StoreUnavailable
from proxyrunner.metrics import Metrics
from proxyrunner.proxy import protocol, standard_headers
from proxyrunner.proxy.deadlines import DeadlineWatch
from proxyrunner.proxy.headers import (
    backend_request_head,
    backend_request_headers,
    client_response_headers,
)
from proxyrunner.proxy.protocol import SESSION_HEADER
from proxyrunner.proxy.routing import Router
from proxyrunner.proxy.streams import StreamRegistry, relay_event_stream
from proxyrunner.proxy.upstream import BackendResponse, HostKey, UpstreamPool
from proxyrunner.sessions.record import SessionRecord, new_session_id
from proxyrunner.sessions.store import SessionStore

# Bodies up to this size are read whole (so a request can be replayed on another backend
# after a re-bind); larger ones stream straight through.
_BUFFERED_BODY_LIMIT: Final = 1024 * 1024
# JSON answers up to this size are relayed in one write; larger ones stream.
_BUFFERED_RESPONSE_LIMIT: Final = 1024 * 1024
_INITIALIZED_NOTIFICATION: Final = b'{"jsonrpc":"2.0","method":"notifications/initialized"}'
# Backend URLs whose pooled-client target was worked out; reset past this many (pods come
# and go, each with its own URL).
_TARGET_CACHE_LIMIT: Final = 4096


class _BackendFailure(Exception):
    def __init__(self, status: int, code: int, message: str, kind: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.kind = kind


class _BodyTooLarge(Exception):
    pass


class _BodyIncomplete(Exception):
    pass


@dataclass(slots=True)
class ProxyParts:
    """Everything the data path needs, built once by the composition root."""

    config: RunConfig
    store: SessionStore
    directory: BackendDirectory
    metrics: Metrics
    client: aiohttp.ClientSession
    streams: StreamRegistry
    log: structlog.stdlib.BoundLogger
    upstream: UpstreamPool
    """The lean pooled client for POSTs with a body in memory; ``client`` does the rest."""


@dataclass(frozen=True, slots=True)
class _PooledTarget:
    """A plain-http backend endpoint as the pooled client addresses it."""

    key: HostKey
    start: bytes
    """``POST <path> HTTP/1.1`` and the Host header, serialized."""


def _pooled_target(url: URL) -> _PooledTarget | None:
    host = url.raw_host
    port = url.port
    authority = url.host_port_subcomponent  # the Host header ClientSession would send
    if url.scheme != "http" or host is None or port is None or authority is None:
        return None
    if url.raw_query_string or url.raw_fragment:
        return None
    start = f"POST {url.raw_path} HTTP/1.1\r\nHost: {authority}\r\n".encode("ascii")
    return _PooledTarget((host, port), start)


class StreamableHTTPProxy:
    def __init__(self, parts: ProxyParts) -> None:
        self._p = parts
        self._router = Router(parts.directory, parts.store)
        self._limit = parts.config.listen.max_request_body
        self._headers_timeout = parts.config.backend.timeout
        self._deadlines = DeadlineWatch()
        self._targets: dict[URL, _PooledTarget | None] = {}

    # ------------------------------------------------------------------ entry points

    async def handle(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        method = request.method
        rpc_method = method  # refined from the body for POST
        metrics = self._p.metrics
        response: web.StreamResponse | None = None
        try:
            if method == "POST":
                response, rpc_method = await self._post(request)
            elif method == "GET":
                rpc_method = "GET stream"
                response = await self._get(request)
            else:
                rpc_method = "DELETE session"
                response = await self._delete(request)
            return response
        finally:
            status = response.status if response is not None else 499
            metrics.requests.labels(rpc_method, str(status)).inc()
            metrics.request_duration.labels(rpc_method).observe(time.perf_counter() - started)

    async def _post(self, request: web.Request) -> tuple[web.StreamResponse, str]:
        version = request.headers.get(protocol.PROTOCOL_VERSION_HEADER)
        client_sid = request.headers.get(SESSION_HEADER)
        if client_sid is not None and standard_headers.applies_to(version):
            # 2026-07-28 has no sessions: there a session header means nothing, and is
            # ignored rather than looked up (and answered 404).
            client_sid = None
        try:
            body = await self._read_body(request, buffer_all=client_sid is None)
        except _BodyTooLarge:
            return self._too_large(), "unknown"
        except _BodyIncomplete:
            return (
                protocol.error_response(
                    400, protocol.INVALID_REQUEST, "body shorter than its Content-Length"
                ),
                "unknown",
            )
        rpc_method = protocol.peek_method(body) if isinstance(body, bytes) else "streamed"
        if isinstance(body, bytes) and standard_headers.declared(version, body):
            refused = self._refuse_mismatched_headers(request, body, client_sid, rpc_method)
            if refused is not None:
                return refused, rpc_method
        if client_sid is None:
            assert isinstance(body, bytes)
            try:
                init = protocol.parse_initialize(body)
            except ValueError:
                return (
                    protocol.error_response(
                        400, protocol.PARSE_ERROR, "Parse error: the body is not JSON"
                    ),
                    rpc_method,
                )
            if init is not None:
                return await self._initialize(request, body, init), rpc_method
            return await self._stateless(request, body, rpc_method), rpc_method
        return await self._in_session(request, client_sid, body, rpc_method), rpc_method

    async def _get(self, request: web.Request) -> web.StreamResponse:
        client_sid = request.headers.get(SESSION_HEADER)
        if client_sid is None:
            return await self._stateless(request, None, "GET stream")
        return await self._in_session(request, client_sid, None, "GET stream")

    async def _delete(self, request: web.Request) -> web.StreamResponse:
        client_sid = request.headers.get(SESSION_HEADER)
        if client_sid is None:
            return protocol.error_response(
                400, protocol.INVALID_REQUEST, f"DELETE needs an {SESSION_HEADER} header"
            )
        record = await self._p.store.get(client_sid)
        if record is None:
            return protocol.session_not_found()
        backend = self._router.backend_of(record)
        response: web.StreamResponse = web.Response(status=204)
        if backend is not None:
            try:
                upstream = await self._send(request, backend, None, record.backend_session_id)
                response = await self._relay(request, upstream, None)
            except _BackendFailure as failure:
                # The backend session dies with its backend; ours is removed regardless.
                self._log_failure(failure, record.session_id, backend.name, "DELETE session")
        try:
            await self._p.store.delete(client_sid)
        except StoreUnavailable:
            self._p.log.warning(
                "session delete not recorded in the shared store",
                session=client_sid,
                backend=record.backend,
            )
        self._p.log.info("session deleted", session=client_sid, backend=record.backend)
        return response

    # ----------------------------------------------------------------- the three kinds

    async def _initialize(
        self, request: web.Request, body: bytes, init: protocol.InitializeRequest
    ) -> web.StreamResponse:
        try:
            backend = self._router.pick_for_new_session()
            upstream = await self._send(request, backend, body, None)
        except BackendUnavailable as exc:
            return self._unavailable(str(exc), "initialize")
        except _BackendFailure as failure:
            self._log_failure(failure, None, None, "initialize")
            return self._failure_response(failure)
        backend_sid = upstream.headers.get(SESSION_HEADER)
        if backend_sid is None or upstream.status != 200:
            # A stateless backend (or a refusal): nothing to remember.
            return await self._relay(request, upstream, None)
        now = time.time()
        record = SessionRecord(
            session_id=new_session_id(),
            backend=backend.name,
            backend_session_id=backend_sid,
            protocol_version=init.protocol_version,
            transport="streamable-http",
            created=now,
            last_used=now,
            init_request=body.decode("utf-8", "replace"),
        )
        try:
            created = await self._p.store.create(record)
        except StoreUnavailable:
            created = False
        if not created:
            upstream.release()
            return self._unavailable("the session store cannot record new sessions", "initialize")
        self._p.log.info(
            "session created",
            session=record.session_id,
            backend=backend.name,
            protocol_version=init.protocol_version,
        )
        return await self._relay(request, upstream, record.session_id)

    async def _stateless(
        self, request: web.Request, body: bytes | None, rpc_method: str
    ) -> web.StreamResponse:
        try:
            backend = self._router.pick_stateless()
            upstream = await self._send(request, backend, body, None)
        except BackendUnavailable as exc:
            return self._unavailable(str(exc), rpc_method)
        except _BackendFailure as failure:
            self._log_failure(failure, None, None, rpc_method)
            return self._failure_response(failure)
        return await self._relay(request, upstream, None)

    async def _in_session(
        self,
        request: web.Request,
        client_sid: str,
        body: bytes | aiohttp.StreamReader | None,
        rpc_method: str,
    ) -> web.StreamResponse:
        record = await self._p.store.get(client_sid)
        if record is None:
            return protocol.session_not_found()
        backend = self._router.backend_of(record)
        if backend is None:
            rebound = await self._rebind(record, reason="backend gone")
            if rebound is None:
                return protocol.session_not_found()
            record, backend = rebound
        try:
            upstream = await self._send(request, backend, body, record.backend_session_id)
            replayable = not isinstance(body, aiohttp.StreamReader)
            if upstream.status == 404 and replayable and record.init_request is not None:
                # The backend lost the session (it restarted): re-initialize and retry once.
                upstream.release()
                rebound = await self._rebind(record, reason="backend lost the session")
                if rebound is None:
                    return protocol.session_not_found()
                record, backend = rebound
                upstream = await self._send(request, backend, body, record.backend_session_id)
        except _BackendFailure as failure:
            self._log_failure(failure, client_sid, backend.name, rpc_method)
            return self._failure_response(failure)
        return await self._relay(request, upstream, client_sid)

    # ------------------------------------------------------------------ re-binding

    async def _rebind(
        self, record: SessionRecord, reason: str
    ) -> tuple[SessionRecord, Backend] | None:
        """Re-initialize the session on a ready backend by replaying its initialize, and
        move the session there (compare-and-set, so replicas racing agree on one)."""
        if record.init_request is None:
            return None
        log = self._p.log.bind(session=record.session_id, backend=record.backend)
        try:
            backend = self._router.pick_for_new_session()
            backend_sid = await self._replay_initialize(backend, record)
        except (BackendUnavailable, _BackendFailure) as exc:
            log.warning("session could not be re-initialized", reason=reason, error=str(exc))
            return None
        moved = replace(
            record, backend=backend.name, backend_session_id=backend_sid, last_used=time.time()
        )
        try:
            won = await self._p.store.rebind(record.session_id, record.backend, moved)
        except StoreUnavailable:
            won = False
        if not won:
            # Another replica moved it first (or deleted it): follow the store's truth.
            current = await self._p.store.get(record.session_id)
            winner = self._router.backend_of(current) if current is not None else None
            if current is None or winner is None:
                return None
            return current, winner
        self._p.metrics.sessions_rebound.inc()
        log.info("session re-initialized", reason=reason, new_backend=backend.name)
        return moved, backend

    async def _replay_initialize(self, backend: Backend, record: SessionRecord) -> str | None:
        assert record.init_request is not None
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json, text/event-stream",
        }
        url = backend.url
        client = self._p.client
        try:
            async with asyncio.timeout(self._headers_timeout):
                async with client.post(
                    url, data=record.init_request.encode(), headers=headers
                ) as response:
                    await response.read()
                    if response.status != 200:
                        raise _BackendFailure(
                            502,
                            protocol.BACKEND_UNAVAILABLE,
                            f"backend refused initialize (HTTP {response.status})",
                            "refused",
                        )
                    backend_sid = response.headers.get(SESSION_HEADER)
                if backend_sid is not None:
                    headers[SESSION_HEADER] = backend_sid
                if record.protocol_version:
                    headers[protocol.PROTOCOL_VERSION_HEADER] = record.protocol_version
                async with client.post(
                    url, data=_INITIALIZED_NOTIFICATION, headers=headers
                ) as response:
                    await response.read()
        except TimeoutError as exc:
            raise _BackendFailure(
                504, protocol.BACKEND_TIMEOUT, "backend timed out", "timeout"
            ) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise _BackendFailure(
                502, protocol.BACKEND_UNAVAILABLE, "backend unreachable", "refused"
            ) from exc
        return backend_sid

    # ---------------------------------------------------------------- I/O primitives

    async def _read_body(
        self, request: web.Request, buffer_all: bool
    ) -> bytes | aiohttp.StreamReader:
        length = request.content_length
        if length is not None and length > self._limit:
            raise _BodyTooLarge
        if not buffer_all and (length is None or length > _BUFFERED_BODY_LIMIT):
            return request.content
        if length == 0:
            return b""
        if length is not None:
            # Known size (the usual case): one read of exactly that many bytes, which is
            # cheaper than request.read()'s chunk loop. The size was checked above.
            try:
                return await request.content.readexactly(length)
            except asyncio.IncompleteReadError as exc:
                raise _BodyIncomplete from exc
        try:
            return await request.read()
        except web.HTTPRequestEntityTooLarge as exc:
            raise _BodyTooLarge from exc

    def _body_stream(self, reader: aiohttp.StreamReader) -> aiohttp.payload.AsyncIterablePayload:
        limit = self._limit

        async def chunks() -> object:
            sent = 0
            async for chunk in reader.iter_any():
                sent += len(chunk)
                if sent > limit:
                    raise _BodyTooLarge
                yield chunk

        return aiohttp.payload.AsyncIterablePayload(chunks())  # type: ignore[arg-type]

    def _target(self, url: URL) -> _PooledTarget | None:
        targets = self._targets
        try:
            return targets[url]
        except KeyError:
            if len(targets) >= _TARGET_CACHE_LIMIT:
                targets.clear()
            target = targets[url] = _pooled_target(url)
            return target

    async def _send(
        self,
        request: web.Request,
        backend: Backend,
        body: bytes | aiohttp.StreamReader | None,
        backend_sid: str | None,
    ) -> BackendResponse:
        """Send the request to the backend; returns once its response headers arrived.

        A POST with its body in memory and no query string goes through the pooled
        client; everything else through the ClientSession.
        """
        url: URL = backend.url
        try:
            if type(body) is bytes and request.method == "POST" and "?" not in request.raw_path:
                target = self._target(url)
                if target is not None:
                    head = backend_request_head(request, backend_sid, target.start, len(body))
                    async with self._deadlines.limit(self._headers_timeout):
                        return await self._p.upstream.send(target.key, head, body)
            if request.query_string:
                url = url.with_query(request.query_string)
            data: object = (
                self._body_stream(body) if isinstance(body, aiohttp.StreamReader) else body
            )
            async with self._deadlines.limit(self._headers_timeout):
                return await self._p.client.request(
                    request.method,
                    url,
                    data=data,
                    headers=backend_request_headers(request, backend_sid),
                    allow_redirects=False,
                )
        except TimeoutError as exc:
            raise _BackendFailure(
                504,
                protocol.BACKEND_TIMEOUT,
                f"backend {backend.name} did not answer within {self._headers_timeout:g}s",
                "timeout",
            ) from exc
        except (aiohttp.ClientError, OSError) as exc:
            if isinstance(exc.__cause__, _BodyTooLarge) or isinstance(exc, _BodyTooLarge):
                raise _BackendFailure(
                    413, protocol.REQUEST_TOO_LARGE, "request body too large", "too_large"
                ) from exc
            raise _BackendFailure(
                502,
                protocol.BACKEND_UNAVAILABLE,
                f"backend {backend.name} unreachable ({exc.__class__.__name__})",
                "refused",
            ) from exc

    async def _relay(
        self, request: web.Request, upstream: BackendResponse, client_sid: str | None
    ) -> web.StreamResponse:
        """Send the backend's answer to the client: JSON whole, anything else streamed."""
        headers = client_response_headers(upstream.headers, client_sid)
        response: web.StreamResponse | None = None
        try:
            length = upstream.content_length
            is_event_stream = upstream.content_type == "text/event-stream"
            if not is_event_stream and length is not None and length <= _BUFFERED_RESPONSE_LIMIT:
                body = await upstream.read()
                return web.Response(status=upstream.status, body=body, headers=headers)
            response = web.StreamResponse(status=upstream.status, headers=headers)
            await response.prepare(request)
            if is_event_stream and request.method == "GET":
                # A listen stream: the one kind drain ends early (with a retry hint).
                streams = self._p.streams
                streams.open += 1
                self._p.metrics.streams_open.inc()
                try:
                    await relay_event_stream(upstream, response, streams, closable=True)
                finally:
                    streams.open -= 1
                    self._p.metrics.streams_open.dec()
            elif is_event_stream:
                await relay_event_stream(upstream, response, self._p.streams, closable=False)
            else:
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
            await response.write_eof()
            return response
        except (aiohttp.ClientError, ConnectionResetError) as exc:
            # The backend or the client went away mid-body. Once headers are out there is
            # nothing more to say; before that, the client gets a 502.
            self._p.log.debug("relay ended early", error=exc.__class__.__name__)
            if response is not None:
                return response
            return protocol.error_response(
                502, protocol.BACKEND_UNAVAILABLE, "backend closed the response early"
            )
        finally:
            upstream.release()

    # ------------------------------------------------------------------ error answers

    def _refuse_mismatched_headers(
        self, request: web.Request, body: bytes, client_sid: str | None, rpc_method: str
    ) -> web.Response | None:
        """400/-32020 when a 2026-07-28 request's standard headers disagree with its body
        (see standard_headers for why the proxy, not only the backend, must check)."""
        try:
            message = protocol.parse_json(body)
        except ValueError:
            return protocol.error_response(
                400, protocol.PARSE_ERROR, "Parse error: the body is not JSON"
            )
        try:
            standard_headers.check(request.headers, message)
        except standard_headers.HeaderMismatch as exc:
            self._p.log.info(
                "request refused: header mismatch",
                session=client_sid,
                method=rpc_method,
                reason=str(exc),
            )
            request_id = message.get("id") if isinstance(message, dict) else None
            return protocol.error_response(
                400, protocol.HEADER_MISMATCH, str(exc), request_id=request_id
            )
        return None

    def _too_large(self) -> web.Response:
        return protocol.error_response(
            413,
            protocol.REQUEST_TOO_LARGE,
            f"Request body larger than the limit of {self._limit} bytes",
        )

    def _unavailable(self, message: str, rpc_method: str) -> web.Response:
        self._p.log.warning("request refused", method=rpc_method, reason=message)
        return protocol.error_response(
            503, protocol.BACKEND_UNAVAILABLE, message, headers={"Retry-After": "1"}
        )

    def _failure_response(self, failure: _BackendFailure) -> web.Response:
        if failure.status == 413:
            return self._too_large()
        return protocol.error_response(failure.status, failure.code, str(failure))

    def _log_failure(
        self, failure: _BackendFailure, session: str | None, backend: str | None, method: str
    ) -> None:
        self._p.metrics.backend_errors.labels(failure.kind).inc()
        self._p.log.warning(
            "backend request failed",
            session=session,
            backend=backend,
            method=method,
            status=failure.status,
            error=str(failure),
        )
