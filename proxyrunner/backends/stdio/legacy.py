"""The stdio bridge's legacy HTTP+SSE face (``proxy_mode: sse``): GET /sse, POST /messages.

The stream is the session: its first event names the message URL, every answer and
server message travels on it, and when the stream ends the session ends.
"""

from __future__ import annotations

import functools
import itertools

from aiohttp import web

from proxyrunner.backends.stdio.conversation import Pending, Session
from proxyrunner.backends.stdio.multiplexer import Multiplexer
from proxyrunner.backends.stdio.streamable import (
    open_event_stream,
    pump,
    read_messages,
    server_not_running,
)
from proxyrunner.http_answers import error_response
from proxyrunner.mcp import jsonrpc
from proxyrunner.mcp.jsonrpc import Message
from proxyrunner.tasks import Supervisor


class LegacyFace:
    def __init__(self, mux: Multiplexer, tasks: Supervisor) -> None:
        self._mux = mux
        self._tasks = tasks
        self._handshakes = itertools.count(1)

    async def stream(self, request: web.Request) -> web.StreamResponse:
        mux = self._mux
        if not mux.attached:
            return server_not_running()
        session = mux.new_session()
        session.streams += 1
        try:
            response = await open_event_stream(request)
            endpoint = f"/messages?session_id={session.id}".encode()
            await response.write(b"event: endpoint\ndata: " + endpoint + b"\n\n")
            await pump(response, session.outbox)
            await response.write_eof()
        finally:
            session.streams -= 1
            mux.drop(session)
        return response

    async def message(self, request: web.Request) -> web.Response:
        mux = self._mux
        session = mux.find(request.query.get("session_id"))
        if session is None:
            return web.Response(status=404, text="session not found")
        read = await read_messages(request, mux)
        if isinstance(read, web.Response):
            return read
        for message in read[0]:
            refused = None if jsonrpc.is_request(message) else mux.refusal(session, message)
            if refused is not None:
                return error_response(400, jsonrpc.INVALID_REQUEST, refused)
        for message in read[0]:
            if message.get("method") == "initialize":
                # The answer goes on the stream, so the POST does not wait for it.
                name = f"legacy initialize {next(self._handshakes)}"
                self._tasks.spawn(
                    name, functools.partial(self._handshake, session, message), policy="once"
                )
            elif jsonrpc.is_request(message):
                pending = mux.open(session, message, "legacy")
                pending.done.add_done_callback(functools.partial(self._forget, pending))
            else:
                mux.from_client(session, message)
        return web.Response(status=202, text="Accepted")

    def _forget(self, pending: Pending, _: object) -> None:
        self._mux.close(pending)

    async def _handshake(self, session: Session, message: Message) -> None:
        session.outbox.put((await self._mux.handshake(message)).answer)
