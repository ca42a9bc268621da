"""The streamable-HTTP transport: POST, GET and DELETE on /mcp, after the stages ran.

Hot path for a warm session: the body stage read the (small) body, the session id is
looked up in the store (an in-process cache hit, no I/O), the backend's session id is
swapped in, the request goes over the pooled keep-alive client, and the answer is relayed:
JSON whole, SSE chunk by chunk. The body is parsed only for an ``initialize`` without a
session id, because that is the one request whose routing depends on its content.

Three kinds of request: an ``initialize`` without a session (placed on the backend with
the fewest sessions; the proxy mints the session id), a request of a known session (sent
to its backend, re-initialized elsewhere when that backend is gone or lost the session),
and a request of no session at all (any ready backend).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable

import aiohttp
from aiohttp import web

from proxyrunner.backends.directory import Backend
from proxyrunner.errors import StoreFull, StoreUnavailable
from proxyrunner.mcp import jsonrpc
from proxyrunner.mcp.revisions import SESSION_HEADER, initialize_request
from proxyrunner.principal import short_hash
from proxyrunner.proxy.errors import (
    BackendFailure,
    InvalidRequest,
    ServiceUnavailable,
    SessionNotFound,
)
from proxyrunner.proxy.ownership import SessionOwnership, binding_of
from proxyrunner.proxy.parts import ProxyParts
from proxyrunner.proxy.pipeline import Exchange
from proxyrunner.proxy.rebind import Rebinder
from proxyrunner.proxy.relay import Relay
from proxyrunner.proxy.routing import Router
from proxyrunner.proxy.stream_caps import StreamCaps
from proxyrunner.proxy.upstream import BackendResponse
from proxyrunner.sessions.record import SessionRecord, new_session_id
from proxyrunner.telemetry import context as trace_context
from proxyrunner.telemetry import semconv


class StreamableHTTP:
    def __init__(self, parts: ProxyParts, router: Router, relay: Relay, caps: StreamCaps) -> None:
        self._p = parts
        self._caps = caps
        self._router = router
        self._relay = relay
        self._rebinder = Rebinder(parts, router)
        self._ownership = SessionOwnership(parts.store, parts.metrics, parts.log)

    def handle(self, exchange: Exchange) -> Awaitable[web.StreamResponse]:
        # A plain function returning the coroutine it picks: no coroutine layer of its own.
        method = exchange.request.method
        if method == "POST":
            if exchange.rpc_method in jsonrpc.LISTEN_METHODS:
                return self._listen(exchange)
            return self._post(exchange)
        if method == "GET":
            return self._listen(exchange)
        return self._delete(exchange)

    async def _listen(self, exchange: Exchange) -> web.StreamResponse:
        """A listen stream, within the stream caps."""
        client_sid = exchange.session_id
        caps = self._caps
        caps.take(client_sid)
        try:
            if exchange.request.method == "POST":
                return await self._post(exchange)
            # The relay is awaited from this frame, not from one more (_in_session's):
            # whatever awaits it is held for the stream's whole life.
            if client_sid is None:
                upstream = await self._p.forwarder.forward(exchange, self._router.pick_stateless())
            else:
                upstream = await self._send_in_session(exchange, client_sid)
            return await self._relay.answer(exchange, upstream, client_sid)
        finally:
            caps.give_back(client_sid)

    async def _post(self, exchange: Exchange) -> web.StreamResponse:
        client_sid = exchange.session_id
        if client_sid is not None:
            return await self._in_session(exchange, client_sid)
        body = exchange.body
        assert isinstance(body, bytes), "the body stage reads sessionless bodies whole"
        if b'"initialize"' in body:  # cheap reject before a parse
            init = initialize_request(exchange.message())  # not JSON: the client's -32700
            if init is not None:
                return await self._initialize(exchange, body, init.protocol_version)
        return await self._stateless(exchange)

    async def _delete(self, exchange: Exchange) -> web.StreamResponse:
        client_sid = exchange.session_id
        if client_sid is None:
            raise InvalidRequest(f"DELETE needs an {SESSION_HEADER} header")
        record = await self._ownership.record_of(exchange, client_sid)
        backend = self._router.backend_of(record)
        response: web.StreamResponse = web.Response(status=204)
        log = self._p.log.bind(session=client_sid, backend=record.backend)
        if backend is not None:
            # The backend session dies with its backend; ours is removed regardless.
            with contextlib.suppress(BackendFailure):
                upstream = await self._p.forwarder.forward(
                    exchange, backend, record.backend_session_id
                )
                response = await self._relay.answer(exchange, upstream, None)
        try:
            await self._p.store.delete(client_sid)
        except StoreUnavailable:
            log.warning("session delete not recorded in the shared store")
        log.info("session deleted")
        return response

    # ----------------------------------------------------------------- the three kinds

    async def _initialize(
        self, exchange: Exchange, body: bytes, protocol_version: str | None
    ) -> web.StreamResponse:
        backend = self._router.place_new_session()
        upstream = await self._p.forwarder.forward(exchange, backend)
        backend_sid = upstream.headers.get(SESSION_HEADER)
        if backend_sid is None or upstream.status != 200:
            # A stateless backend (or a refusal): nothing to remember.
            return await self._relay.answer(exchange, upstream, None)
        now = time.time()
        stored: str | None = None
        if len(body) <= self._p.config.limits.max_stored_initialize:
            stored = body.decode("utf-8", "replace")
        else:
            # Kept in every replica's cache and in Redis for the session's life: a padded
            # initialize must not cost that. The session works; only a transparent
            # re-initialize is impossible (the client gets 404 and initializes again).
            self._p.metrics.initialize_not_stored.inc()
        record = SessionRecord(
            session_id=new_session_id(),
            backend=backend.name,
            backend_session_id=backend_sid,
            protocol_version=protocol_version,
            transport="streamable-http",
            created=now,
            last_used=now,
            init_request=stored,
            principal=binding_of(exchange),
        )
        refusal = "the session store cannot record new sessions"
        try:
            created = await self._p.store.create(record)
        except StoreFull as exc:
            refusal, created = str(exc), False
        except StoreUnavailable:
            created = False
        if not created:
            # Filled up while the backend answered: end the backend's session too.
            upstream.release()
            await self._end_backend_session(exchange, backend, backend_sid)
            raise ServiceUnavailable(refusal)
        # An initialize's span names the session it created (the request had none).
        trace_context.annotate(semconv.SESSION, short_hash(record.session_id))
        self._p.log.info(
            "session created",
            session=record.session_id,
            backend=backend.name,
            protocol_version=protocol_version,
        )
        return await self._relay.answer(exchange, upstream, record.session_id)

    async def _end_backend_session(
        self, exchange: Exchange, backend: Backend, backend_sid: str
    ) -> None:
        forwarder = self._p.forwarder
        headers = forwarder.headers_for(exchange, backend_sid)
        with contextlib.suppress(BackendFailure):
            await forwarder.fetch("DELETE", backend.url, headers, None, backend=backend.name)

    async def _stateless(self, exchange: Exchange) -> web.StreamResponse:
        backend = self._router.pick_stateless()
        upstream = await self._p.forwarder.forward(exchange, backend)
        return await self._relay.answer(exchange, upstream, None)

    async def _in_session(self, exchange: Exchange, client_sid: str) -> web.StreamResponse:
        upstream = await self._send_in_session(exchange, client_sid)
        return await self._relay.answer(exchange, upstream, client_sid)

    async def _send_in_session(self, exchange: Exchange, client_sid: str) -> BackendResponse:
        """The request of a known session sent to its backend: the response headers."""
        record = await self._ownership.record_of(exchange, client_sid)
        backend = self._router.backend_of(record)
        if backend is None:
            record, backend = await self._rebind(exchange, record, "backend gone")
        upstream = await self._p.forwarder.forward(exchange, backend, record.backend_session_id)
        replayable = not isinstance(exchange.body, aiohttp.StreamReader)
        if upstream.status == 404 and replayable and record.init_request is not None:
            # The backend lost the session (it restarted): re-initialize and retry once.
            upstream.release()
            record, backend = await self._rebind(exchange, record, "backend lost the session")
            upstream = await self._p.forwarder.forward(exchange, backend, record.backend_session_id)
        return upstream

    async def _rebind(
        self, exchange: Exchange, record: SessionRecord, reason: str
    ) -> tuple[SessionRecord, Backend]:
        edit = exchange.header_edit
        rebound = await self._rebinder.rebind(record, reason, edit.set if edit else ())
        if rebound is None:
            raise SessionNotFound
        return rebound
