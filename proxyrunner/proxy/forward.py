"""The one forwarding path: every request the proxy sends to a backend goes through here.

It owns three decisions, so that no transport makes them differently:

- **Which client.** A client's POST with its body in memory, to a plain ``http://``
  backend whose URL has no query string, goes over the pooled client (``upstream``): the
  hot path. Everything else (streamed bodies, GET streams, DELETE, TLS backends, a
  configured query, the proxy's own requests) goes over the ``aiohttp.ClientSession``.
- **Which URL.** The backend's configured URL, query string included. A client's query
  never replaces it, and is not forwarded at all: no MCP route sends one to the backend
  (the legacy message route's ``session_id`` is the proxy's own, and the backend's
  message URL, from its endpoint event, carries the backend's).
- **The deadline.** The backend must send its response headers within
  ``backend_timeout``, on every path, legacy SSE included; an answer the proxy reads
  whole (``fetch``) must be complete by then.
- **The errors.** Library errors become the typed ``BackendFailure`` subclasses, which
  know their HTTP status, JSON-RPC code and metric label; each failure is counted and
  logged here, once.

Headers follow the one policy in ``headers``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import aiohttp
import structlog
from multidict import CIMultiDictProxy
from yarl import URL

from proxyrunner.backends.directory import Backend
from proxyrunner.mcp import jsonrpc
from proxyrunner.metrics import Metrics
from proxyrunner.proxy.deadlines import DeadlineWatch
from proxyrunner.proxy.errors import (
    BackendFailure,
    BackendTimeout,
    BackendUnreachable,
    BodyTimeout,
    BodyTooLarge,
    ProxyError,
)
from proxyrunner.proxy.headers import ForwardedHeaders
from proxyrunner.proxy.pipeline import Exchange
from proxyrunner.proxy.upstream import BackendResponse, HostKey, UpstreamPool
from proxyrunner.telemetry import context as trace_context

# Backend URLs whose pooled-client target was worked out; reset past this many (pods come
# and go, each with its own URL).
_TARGET_CACHE_LIMIT: Final = 4096


@dataclass(frozen=True, slots=True)
class _PooledTarget:
    """A plain-http backend endpoint as the pooled client addresses it."""

    key: HostKey
    start: bytes
    """``POST <path> HTTP/1.1`` and the Host header, serialized."""
    get_start: bytes
    """The same for ``GET`` (listen streams: far fewer objects per open stream than a
    ClientSession request and response)."""


def _with_meta_context(exchange: Exchange, carrier: Mapping[str, str]) -> bytes:
    """The request's body with ``carrier`` as its ``params._meta`` trace context (the
    parsed message is copied where it changes, so the stages' view stays the client's)."""
    message = exchange.message()
    params = dict(message["params"])
    params["_meta"] = dict(params["_meta"])
    outgoing = dict(message, params=params)
    trace_context.into_meta(outgoing, carrier)
    return jsonrpc.dumps(outgoing)


def _pooled_target(url: URL) -> _PooledTarget | None:
    host = url.raw_host
    port = url.port
    authority = url.host_port_subcomponent  # the Host header ClientSession would send
    if url.scheme != "http" or host is None or port is None or authority is None:
        return None
    if url.raw_query_string or url.raw_fragment:
        # Rare (a query in the configured URL): ClientSession serializes it.
        return None
    line = f" {url.raw_path} HTTP/1.1\r\nHost: {authority}\r\n".encode("ascii")
    return _PooledTarget((host, port), b"POST" + line, b"GET" + line)


@dataclass(frozen=True, slots=True)
class Fetched:
    """An answer read whole."""

    status: int
    headers: CIMultiDictProxy[str]
    body: bytes


class Forwarder:
    def __init__(
        self,
        client: aiohttp.ClientSession,
        pool: UpstreamPool,
        *,
        timeout: float,
        max_body: int,
        body_timeout: float = 30.0,
        trust_proxy_headers: bool = False,
        metrics: Metrics,
        log: structlog.stdlib.BoundLogger,
    ) -> None:
        self._client, self._pool = client, pool
        self.timeout = timeout
        """Seconds a backend may take to send its response headers (backend_timeout)."""
        self._body_timeout = body_timeout
        self._body_timeouts = metrics.connections_closed.labels(reason="body_timeout")
        self._max_body = max_body
        self._trust = trust_proxy_headers
        self._errors = metrics.backend_errors
        self._log = log
        self._deadlines = DeadlineWatch()
        self._targets: dict[URL, _PooledTarget | None] = {}

    async def forward(
        self,
        exchange: Exchange,
        backend: Backend,
        backend_sid: str | None = None,
        *,
        url: URL | None = None,
    ) -> BackendResponse:
        """Forward a client's request to ``backend`` (at ``url``, else its endpoint);
        returns once the response headers arrived. The caller relays the body and
        releases the response."""
        request = exchange.request
        target_url = backend.url if url is None else url
        headers = self.headers_for(exchange, backend_sid, (backend.name, target_url))
        method, body = request.method, exchange.body  # after: a traced body may change
        try:
            if type(body) is bytes and method == "POST":
                target = self._target(target_url)
                if target is not None:
                    head = headers.head(target.start, len(body))
                    async with self._deadlines.limit(self.timeout):
                        return await self._pool.send(target.key, head, body)
            elif method == "GET" and (target := self._target(target_url)) is not None:
                head = headers.head(target.get_start, None)
                async with self._deadlines.limit(self.timeout):
                    return await self._pool.send(target.key, head, b"")
            data: object = self._stream(body) if isinstance(body, aiohttp.StreamReader) else body
            async with self._deadlines.limit(self.timeout):
                return await self._client.request(
                    method,
                    target_url,
                    data=data,
                    headers=headers.multidict(),
                    allow_redirects=False,
                )
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise self._failed(exc, backend.name, exchange) from exc

    def headers_for(
        self, exchange: Exchange, backend_sid: str | None, leg: tuple[str, URL] | None = None
    ) -> ForwardedHeaders:
        """The client request's headers as the backend must see them. ``leg`` (backend
        name, URL) marks a backend call of the request: a traced request opens its
        client span for it and sends that span's context."""
        edit = exchange.header_edit
        trace = exchange.trace
        if trace is not None and leg is not None:
            edit = trace.leg(leg[0], leg[1], edit)
            if trace.meta_context and trace.sent is not None:
                exchange.body = _with_meta_context(exchange, trace.sent)
        return ForwardedHeaders(exchange.request, backend_sid, edit, trusted=self._trust)

    async def fetch(
        self,
        method: str,
        url: URL,
        headers: ForwardedHeaders | Mapping[str, str],
        body: bytes | None,
        *,
        backend: str,
        exchange: Exchange | None = None,
    ) -> Fetched:
        """Send a request whose answer the proxy reads whole (the proxy's own requests, a
        legacy message POST): headers and body both within the deadline."""
        sent = headers.multidict() if isinstance(headers, ForwardedHeaders) else headers
        try:
            async with (
                self._deadlines.limit(self.timeout),
                self._client.request(
                    method, url, data=body, headers=sent, allow_redirects=False
                ) as response,
            ):
                return Fetched(response.status, response.headers, await response.read())
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise self._failed(exc, backend, exchange) from exc

    def _failed(self, exc: BaseException, backend: str, exchange: Exchange | None) -> ProxyError:
        """The error to raise for a failed call; a backend failure is counted and logged
        here, once, whoever made the call."""
        failure = self._failure(exc, backend)
        if isinstance(failure, BackendFailure):
            self._errors.labels(failure.metric).inc()
            self._log.warning(
                "backend request failed",
                session=exchange.session_id if exchange is not None else None,
                backend=backend,
                method=exchange.rpc_method if exchange is not None else "replay",
                status=failure.status,
                error=str(failure),
            )
        return failure

    def _failure(self, exc: BaseException, backend: str) -> ProxyError:
        cause = exc.__cause__
        if isinstance(cause, BodyTimeout):
            # A streamed body that trickled: the client's fault (408, connection closed).
            self._body_timeouts.inc()
            return cause
        if isinstance(exc, TimeoutError):
            return BackendTimeout(f"backend {backend} did not answer within {self.timeout:g}s")
        if isinstance(exc, BodyTooLarge) or isinstance(exc.__cause__, BodyTooLarge):
            # A streamed body crossed the limit on its way through: the client's fault,
            # answered as such (413), not counted as a backend failure.
            return BodyTooLarge.over(self._max_body)
        return BackendUnreachable(f"backend {backend} unreachable ({exc.__class__.__name__})")

    def _stream(self, reader: aiohttp.StreamReader) -> aiohttp.payload.AsyncIterablePayload:
        """A body streamed through: within ``max_request_body``, and whole within
        ``body_timeout`` of its first read, as a body read whole must be."""
        limit, timeout = self._max_body, self._body_timeout

        async def chunks() -> object:
            sent = 0
            deadline = asyncio.get_running_loop().time() + timeout
            while True:
                try:
                    # Only the read is timed: the deadline never cancels aiohttp's writer
                    # while it writes to the backend.
                    async with asyncio.timeout_at(deadline):
                        chunk = await reader.readany()
                except TimeoutError:
                    raise BodyTimeout(f"request body not received within {timeout:g}s") from None
                if not chunk:
                    return
                sent += len(chunk)
                if sent > limit:
                    raise BodyTooLarge("request body too large")
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
