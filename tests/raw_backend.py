"""A raw HTTP/1.1 backend for tests that need a misbehaving one: closing keep-alive
connections, answering garbage or not at all. aiohttp servers are too well-behaved."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

RESULT = b'{"jsonrpc":"2.0","id":1,"result":{}}'

ConnectionHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class RawBackend:
    """A raw TCP server: ``handle`` runs once per accepted connection."""

    def __init__(self, handle: ConnectionHandler) -> None:
        self._handle = handle
        self.connections = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    async def __aenter__(self) -> RawBackend:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    def stop_listening(self) -> None:
        """Close the listening socket: new connections are refused, the accepted ones
        go on being served."""
        assert self._server is not None
        self._server.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._handle(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


async def read_head(reader: asyncio.StreamReader) -> bytes:
    """One request's head (request line and headers); IncompleteReadError at EOF."""
    return await reader.readuntil(b"\r\n\r\n")


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """One request's body (after its head), or raise IncompleteReadError at EOF."""
    return (await read_message(reader))[1]


async def read_message(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One request: its head and its body."""
    request_head = await read_head(reader)
    length = 0
    for line in request_head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return request_head, await reader.readexactly(length)


def ok_response(body: bytes = RESULT, extra: bytes = b"") -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        + extra
        + b"Content-Length: %d\r\n\r\n" % len(body)
        + body
    )
