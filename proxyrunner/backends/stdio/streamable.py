"""The stdio bridge's streamable-HTTP face: POST, GET and DELETE on /mcp.

The data path in front treats the bridge like any other HTTP backend: it initializes
sessions here, sends their requests with the bridge's session ids, opens listen streams
and deletes sessions. This module turns those into multiplexer calls and the answers
back into HTTP: a JSON body, or an SSE stream when the client asks for one.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Final

from aiohttp import web

from proxyrunner.backends.stdio.conversation import Mode, Outcome, Pending
from proxyrunner.backends.stdio.multiplexer import Multiplexer
from proxyrunner.backends.stdio.outbox import Outbox
from proxyrunner.http_answers import error_response, json_response, session_not_found
from proxyrunner.mcp import jsonrpc, revisions
from proxyrunner.mcp.jsonrpc import Message
from proxyrunner.telemetry import context as trace_context
from proxyrunner.telemetry import semconv

if TYPE_CHECKING:
    from proxyrunner.telemetry.runtime import Finish, Telemetry

KEEPALIVE: Final = 15.0
_EVENT_STREAM: Final = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
_STATUS_OF: Final = {
    Outcome.ANSWERED: 200,
    Outcome.CANCELLED: 200,
    Outcome.TIMED_OUT: 504,
    Outcome.SERVER_GONE: 502,
}


def server_not_running() -> web.Response:
    return error_response(502, jsonrpc.BACKEND_UNAVAILABLE, "the stdio server is not running")


async def read_messages(
    request: web.Request, mux: Multiplexer
) -> tuple[list[Message], bool] | web.Response:
    """The JSON-RPC messages of a POST and whether they came as a batch, or the error
    answer for a body that is not one."""
    try:
        parsed = jsonrpc.parse_json(await request.read())
    except ValueError:
        return error_response(400, jsonrpc.PARSE_ERROR, "the body is not JSON")
    batch = isinstance(parsed, list)
    messages = parsed if batch else [parsed]
    if not messages or not all(isinstance(m, dict) and m.get("jsonrpc") == "2.0" for m in messages):
        return error_response(400, jsonrpc.INVALID_REQUEST, "not a JSON-RPC 2.0 message")
    reason = jsonrpc.odd_id(parsed)
    if reason is not None:
        # The multiplexer keys its maps by id: an unhashable one must not get that far.
        return error_response(400, jsonrpc.INVALID_REQUEST, f"Invalid Request: {reason}")
    if not mux.attached:
        return server_not_running()
    return messages, batch


def revision_refusal(request: web.Request, messages: list[Message]) -> web.Response | None:
    """The answer to messages of a revision without the initialize handshake, else None.

    A stdio server lives in one era for its whole life, set by its first message: a
    2026-07-28 request would lock it out of the initialize handshake, and every session of
    an earlier revision (most clients) would fail until it restarts. So it is kept in the
    handshake era; "unsupported version" with the versions it speaks is what makes a
    negotiating client fall back to initialize."""
    revision = revisions.claimed_revision(
        request.headers.get(revisions.PROTOCOL_VERSION_HEADER), messages
    )
    if revision is None:
        return None
    return error_response(
        400,
        jsonrpc.UNSUPPORTED_PROTOCOL_VERSION,
        "Unsupported protocol version",
        request_id=messages[0].get("id") if len(messages) == 1 else None,
        data={"supported": list(revisions.HANDSHAKE_REVISIONS), "requested": revision},
    )


async def open_event_stream(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers=_EVENT_STREAM)
    await response.prepare(request)
    return response


def sse_event(message: Message) -> bytes:
    return b"event: message\ndata: " + jsonrpc.dumps(message) + b"\n\n"


async def pump(response: web.StreamResponse, outbox: Outbox) -> None:
    """Write the outbox as SSE until it closes; comments keep idle streams alive."""
    while True:
        try:
            message = await asyncio.wait_for(outbox.get(), KEEPALIVE)
        except TimeoutError:
            await response.write(b": keepalive\n\n")
            continue
        if message is None:
            return
        await response.write(sse_event(message))


def _error_type(pending: Pending) -> str | None:
    outcome = pending.outcome
    if outcome is None:
        return "abandoned"  # the client went away before the answer
    if outcome is not Outcome.ANSWERED:
        return outcome.name.lower()
    error = semconv.error_of(pending.done.result()) if pending.done.done() else None
    return error[1] if error is not None else None


class StreamableFace:
    def __init__(self, mux: Multiplexer, telemetry: Telemetry | None = None) -> None:
        self._mux = mux
        self._telemetry = telemetry

    async def post(self, request: web.Request) -> web.StreamResponse:
        mux = self._mux
        read = await read_messages(request, mux)
        if isinstance(read, web.Response):
            return read
        messages, batch = read
        unsupported = revision_refusal(request, messages)
        if unsupported is not None:
            return unsupported
        if any(m.get("method") == "initialize" for m in messages):
            if batch:
                return error_response(
                    400, jsonrpc.INVALID_REQUEST, "initialize must not be part of a batch"
                )
            return await self._initialize(messages[0])
        session_id = request.headers.get(revisions.SESSION_HEADER)
        session = mux.find(session_id) if session_id else mux.sessionless()
        if session is None:
            return session_not_found()
        requests = [m for m in messages if jsonrpc.is_request(m)]
        for message in messages:
            refused = None if jsonrpc.is_request(message) else mux.refusal(session, message)
            if refused is not None:
                # Checked before anything is passed on, so that a refused batch has no
                # effect at all. A forged answer to another session's question ends here.
                return error_response(400, jsonrpc.INVALID_REQUEST, refused)
        for message in messages:
            if not jsonrpc.is_request(message):
                mux.from_client(session, message)
        if not requests:
            return web.Response(status=202)
        streamed = not batch and "text/event-stream" in request.headers.get("Accept", "")
        mode: Mode = "stream" if streamed else "json"
        finishes = self._traced(request, requests) if self._telemetry is not None else ()
        pendings = [mux.open(session, m, mode) for m in requests]
        try:
            if streamed:
                return await self._stream_answer(request, pendings[0])
            answers = [await asyncio.shield(p.done) for p in pendings]
            gone = any(p.outcome is Outcome.SERVER_GONE for p in pendings)
            return json_response(
                502 if gone else 200, jsonrpc.dumps(answers if batch else answers[0])
            )
        finally:
            for pending in pendings:
                mux.close(pending)
            for finish, pending in zip(finishes, pendings, strict=False):
                finish(_error_type(pending))

    def _traced(self, request: web.Request, requests: list[Message]) -> list[Finish]:
        """A span per request written to the server, its context in the request's
        ``params._meta`` (the server has no headers to carry it)."""
        assert self._telemetry is not None
        carrier = trace_context.from_headers(request.headers)
        finishes = []
        for message in requests:
            method = str(message.get("method"))
            name = semconv.span_name(method, semconv.target_of(message))
            attributes = {semconv.METHOD: method, semconv.BACKEND: self._mux.name}
            finish, sent = self._telemetry.relay_span(f"stdio {name}", carrier, attributes)
            if sent is not None:
                trace_context.into_meta(message, sent)
            finishes.append(finish)
        return finishes

    async def _initialize(self, message: Message) -> web.Response:
        handshake = await self._mux.handshake(message)
        body = jsonrpc.dumps(handshake.answer)
        if not handshake.ok:
            return json_response(_STATUS_OF[handshake.outcome], body)
        session = self._mux.new_session()
        return json_response(200, body, {revisions.SESSION_HEADER: session.id})

    async def _stream_answer(self, request: web.Request, pending: Pending) -> web.StreamResponse:
        if pending.done.done() and pending.outcome is Outcome.SERVER_GONE:
            return json_response(502, jsonrpc.dumps(pending.done.result()))
        response = await open_event_stream(request)
        await pump(response, pending.related)
        await response.write_eof()
        return response

    async def get(self, request: web.Request) -> web.StreamResponse:
        session_id = request.headers.get(revisions.SESSION_HEADER)
        if not session_id:
            return web.Response(status=405, headers={"Allow": "POST, DELETE"})
        session = self._mux.find(session_id)
        if session is None:
            return session_not_found()
        response = await open_event_stream(request)
        session.streams += 1
        try:
            await pump(response, session.outbox)
        finally:
            session.streams -= 1
        await response.write_eof()
        return response

    async def delete(self, request: web.Request) -> web.Response:
        session = self._mux.find(request.headers.get(revisions.SESSION_HEADER))
        if session is None:
            return session_not_found()
        self._mux.drop(session)
        return web.Response(status=200)
