"""Legacy HTTP+SSE transport (protocol 2024-11-05): GET /sse and POST /messages.

The client holds one event stream; the server names, in the stream's first ``endpoint``
event, the URL the client must POST its messages to. The proxy rewrites that event: the
client gets ``/messages?session_id=<proxy id>`` and never the backend's URL. Answers to
POSTed messages travel back over the stream, so a POST may land on any replica: it is
routed through the shared store to the backend's message URL, while the replica holding
the stream relays the answer. Both requests take the one forwarding path, so
``backend_timeout`` bounds them like any other.
"""

from __future__ import annotations

import time
from typing import Final

from aiohttp import web
from yarl import URL

from proxyrunner.errors import StoreFull, StoreUnavailable
from proxyrunner.mcp.revisions import LEGACY_SSE_REVISION
from proxyrunner.principal import short_hash
from proxyrunner.proxy.errors import (
    BackendMisbehaved,
    InvalidRequest,
    ServiceUnavailable,
    SessionNotFound,
)
from proxyrunner.proxy.headers import client_response_headers
from proxyrunner.proxy.ownership import SessionOwnership, binding_of
from proxyrunner.proxy.parts import ProxyParts
from proxyrunner.proxy.pipeline import Exchange
from proxyrunner.proxy.relay import Relay
from proxyrunner.proxy.routing import Router
from proxyrunner.proxy.stream_caps import StreamCaps
from proxyrunner.proxy.upstream import BackendResponse
from proxyrunner.sessions.record import SessionRecord, new_session_id
from proxyrunner.telemetry import context as trace_context
from proxyrunner.telemetry import semconv

# The endpoint event comes first and is short; a backend that sends more before it is
# not a legacy MCP server.
_ENDPOINT_EVENT_LIMIT: Final = 64 * 1024
_SESSION_PARAM: Final = "session_id"


async def read_endpoint_event(upstream: BackendResponse) -> str:
    """Read the stream up to the end of its first event; return the endpoint path.
    BackendMisbehaved if that is not an endpoint event."""
    buffer = b""
    while b"\n\n" not in buffer.replace(b"\r\n", b"\n"):
        chunk = await upstream.content.readany()
        if not chunk or len(buffer) > _ENDPOINT_EVENT_LIMIT:
            raise BackendMisbehaved("backend sent no endpoint event")
        buffer += chunk
    event, _, rest = buffer.replace(b"\r\n", b"\n").partition(b"\n\n")
    if rest:
        # Anything after the first event belongs to later events: keep it for the relay.
        upstream.content.unread_data(rest)
    kind, data = "message", []
    for line in event.decode("utf-8", "replace").split("\n"):
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            kind = value
        elif field == "data":
            data.append(value)
    if kind != "endpoint" or not data:
        raise BackendMisbehaved("backend sent no endpoint event")
    return "\n".join(data)


class LegacySSE:
    def __init__(self, parts: ProxyParts, router: Router, relay: Relay, caps: StreamCaps) -> None:
        self._p = parts
        self._caps = caps
        self._router = router
        self._relay = relay
        self._ownership = SessionOwnership(parts.store, parts.metrics, parts.log)

    async def handle(self, exchange: Exchange) -> web.StreamResponse:
        if exchange.request.method == "GET":
            self._caps.take(None)  # the stream creates its session: no per-session cap
            try:
                return await self.stream(exchange)
            finally:
                self._caps.give_back(None)
        return await self.message(exchange)

    async def stream(self, exchange: Exchange) -> web.StreamResponse:
        parts = self._p
        request = exchange.request
        backend = self._router.place_new_session()
        upstream = await parts.forwarder.forward(exchange, backend, url=backend.url)
        record: SessionRecord | None = None
        try:
            if upstream.status != 200:
                return web.Response(status=upstream.status, body=await upstream.read())
            message_url = backend.url.join(URL(await read_endpoint_event(upstream)))
            if message_url.origin() != backend.url.origin():
                # The proxy would POST every client message of the session there, from
                # inside the cluster network: a server must not be able to point it
                # elsewhere (the spec has the endpoint on the server's own origin).
                parts.log.warning(
                    "backend named a message endpoint on another origin; refused",
                    backend=backend.name,
                )
                raise BackendMisbehaved("backend named a message endpoint on another origin")
            record = await self._create(
                backend.name, str(message_url.relative()), binding_of(exchange)
            )
            parts.traffic.hold(record.session_id)  # the stream is the session's work
            own_endpoint = request.url.with_path("/messages").with_query(
                {_SESSION_PARAM: record.session_id}
            )
            prefix = f"event: endpoint\ndata: {own_endpoint.relative()}\n\n".encode()
            return await self._relay.answer(exchange, upstream, None, prefix=prefix)
        finally:
            upstream.release()
            if record is not None:
                parts.traffic.release(record.session_id)
                # The stream was the session: when it ends, so does the session.
                try:
                    await parts.store.delete(record.session_id)
                except StoreUnavailable:
                    parts.log.warning("session end not recorded", session=record.session_id)

    async def _create(self, backend: str, message_path: str, owner: str | None) -> SessionRecord:
        now = time.time()
        record = SessionRecord(
            session_id=new_session_id(),
            backend=backend,
            backend_session_id=message_path,
            protocol_version=LEGACY_SSE_REVISION,
            transport="sse",
            created=now,
            last_used=now,
            principal=owner,
        )
        try:
            await self._p.store.create(record)
        except StoreFull as exc:
            raise ServiceUnavailable(str(exc)) from None
        except StoreUnavailable as exc:
            raise ServiceUnavailable("the session store cannot record sessions") from exc
        self._p.log.info("session created", session=record.session_id, backend=backend)
        return record

    async def message(self, exchange: Exchange) -> web.StreamResponse:
        parts = self._p
        request = exchange.request
        session_id = request.query.get(_SESSION_PARAM)
        if not session_id:
            raise InvalidRequest(f"missing {_SESSION_PARAM} query parameter")
        record = await self._ownership.record_of(exchange, session_id)
        if record.transport != "sse" or record.backend_session_id is None:
            raise SessionNotFound
        backend = self._router.backend_of(record)
        if backend is None:
            raise SessionNotFound
        # The message names its session in the query, not in a header the telemetry
        # stage reads: its span learns the session and revision here.
        trace_context.annotate(semconv.SESSION, short_hash(record.session_id))
        if record.protocol_version:
            trace_context.annotate(semconv.PROTOCOL_VERSION, record.protocol_version)
        url = backend.url.join(URL(record.backend_session_id))
        headers = parts.forwarder.headers_for(exchange, None, (backend.name, url))
        # After: a traced request's body gets the proxy's context in its _meta.
        body = exchange.body
        assert body is None or isinstance(body, bytes), "legacy messages are read whole"
        answer = await parts.forwarder.fetch(
            "POST",
            url,
            headers,
            body,
            backend=backend.name,
            exchange=exchange,
        )
        return web.Response(
            status=answer.status,
            body=answer.body,
            headers=client_response_headers(answer.headers, None),
        )
