"""Legacy HTTP+SSE transport (protocol 2024-11-05): GET /sse and POST /messages.

The client holds one event stream; the server names, in the stream's first ``endpoint``
event, the URL the client must POST its messages to. The proxy rewrites that event: the
client gets ``/messages?session_id=<proxy id>`` and never the backend's URL. Answers to
POSTed messages travel back over the stream, so a POST may land on any replica: it is
routed through the shared store to the backend's message URL, while the replica holding
the stream relays the answer.
"""

from __future__ import annotations

import time
from typing import Final

import aiohttp
from aiohttp import web
from yarl import URL

from proxyrunner.errors import BackendUnavailable, StoreUnavailable
from proxyrunner.proxy import protocol
from proxyrunner.proxy.headers import backend_request_headers, client_response_headers
from proxyrunner.proxy.routing import Router
from proxyrunner.proxy.streamable import ProxyParts
from proxyrunner.proxy.streams import relay_event_stream
from proxyrunner.sessions.record import SessionRecord, new_session_id

# The endpoint event comes first and is short; a backend that sends more before it is
# not a legacy MCP server.
_ENDPOINT_EVENT_LIMIT: Final = 64 * 1024
_SESSION_PARAM: Final = "session_id"


class _NotAnEndpointEvent(Exception):
    pass


async def _read_endpoint_event(upstream: aiohttp.ClientResponse) -> str:
    """Read the stream up to the end of its first event; return the endpoint path."""
    buffer = b""
    while b"\n\n" not in buffer.replace(b"\r\n", b"\n"):
        chunk = await upstream.content.readany()
        if not chunk or len(buffer) > _ENDPOINT_EVENT_LIMIT:
            raise _NotAnEndpointEvent
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
        raise _NotAnEndpointEvent
    return "\n".join(data)


class LegacySSEProxy:
    def __init__(self, parts: ProxyParts) -> None:
        self._p = parts
        self._router = Router(parts.directory, parts.store)

    async def stream(self, request: web.Request) -> web.StreamResponse:
        parts = self._p
        try:
            backend = self._router.pick_for_new_session()
        except BackendUnavailable as exc:
            return protocol.error_response(503, protocol.BACKEND_UNAVAILABLE, str(exc))
        try:
            upstream = await parts.client.get(
                backend.url, headers=backend_request_headers(request, None)
            )
        except (aiohttp.ClientError, OSError):
            parts.metrics.backend_errors.labels("refused").inc()
            return protocol.error_response(
                502, protocol.BACKEND_UNAVAILABLE, f"backend {backend.name} unreachable"
            )
        record: SessionRecord | None = None
        try:
            if upstream.status != 200:
                body = await upstream.read()
                return web.Response(status=upstream.status, body=body)
            try:
                endpoint = await _read_endpoint_event(upstream)
            except _NotAnEndpointEvent:
                return protocol.error_response(
                    502, protocol.BACKEND_UNAVAILABLE, "backend sent no endpoint event"
                )
            message_url = backend.url.join(URL(endpoint))
            if message_url.origin() != backend.url.origin():
                # The proxy would POST every client message of the session there, from
                # inside the cluster network: a server must not be able to point it
                # elsewhere (the spec has the endpoint on the server's own origin).
                parts.log.warning(
                    "backend named a message endpoint on another origin; refused",
                    backend=backend.name,
                )
                return protocol.error_response(
                    502,
                    protocol.BACKEND_UNAVAILABLE,
                    "backend named a message endpoint on another origin",
                )
            now = time.time()
            record = SessionRecord(
                session_id=new_session_id(),
                backend=backend.name,
                backend_session_id=str(message_url.relative()),
                protocol_version="2024-11-05",
                transport="sse",
                created=now,
                last_used=now,
            )
            try:
                await parts.store.create(record)
            except StoreUnavailable:
                return protocol.error_response(
                    503, protocol.BACKEND_UNAVAILABLE, "the session store cannot record sessions"
                )
            parts.log.info("session created", session=record.session_id, backend=backend.name)
            response = web.StreamResponse(headers=client_response_headers(upstream.headers, None))
            await response.prepare(request)
            own_endpoint = request.url.with_path("/messages").with_query(
                {_SESSION_PARAM: record.session_id}
            )
            await response.write(f"event: endpoint\ndata: {own_endpoint.relative()}\n\n".encode())
            parts.streams.open += 1
            parts.metrics.streams_open.inc()
            try:
                await relay_event_stream(upstream, response, parts.streams, closable=True)
            except (aiohttp.ClientError, ConnectionResetError):
                pass
            finally:
                parts.streams.open -= 1
                parts.metrics.streams_open.dec()
            return response
        finally:
            upstream.release()
            if record is not None:
                # The stream was the session: when it ends, so does the session.
                try:
                    await parts.store.delete(record.session_id)
                except StoreUnavailable:
                    parts.log.warning("session end not recorded", session=record.session_id)

    async def message(self, request: web.Request) -> web.StreamResponse:
        parts = self._p
        session_id = request.query.get(_SESSION_PARAM)
        if not session_id:
            return protocol.error_response(
                400, protocol.INVALID_REQUEST, f"missing {_SESSION_PARAM} query parameter"
            )
        length = request.content_length
        if length is not None and length > parts.config.listen.max_request_body:
            return protocol.error_response(413, protocol.REQUEST_TOO_LARGE, "body too large")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return protocol.error_response(413, protocol.REQUEST_TOO_LARGE, "body too large")
        record = await parts.store.get(session_id)
        if record is None or record.transport != "sse" or record.backend_session_id is None:
            return protocol.session_not_found()
        backend = self._router.backend_of(record)
        if backend is None:
            return protocol.session_not_found()
        url = backend.url.join(URL(record.backend_session_id))
        try:
            async with parts.client.post(
                url, data=body, headers=backend_request_headers(request, None)
            ) as upstream:
                answer = await upstream.read()
                return web.Response(
                    status=upstream.status,
                    body=answer,
                    headers=client_response_headers(upstream.headers, None),
                )
        except (aiohttp.ClientError, OSError):
            parts.metrics.backend_errors.labels("refused").inc()
            return protocol.error_response(
                502, protocol.BACKEND_UNAVAILABLE, f"backend {backend.name} unreachable"
            )
