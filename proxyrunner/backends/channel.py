"""A stdio MCP server's conversation, wherever its stdin and stdout live.

A stdio server reads newline-delimited JSON-RPC messages on stdin and writes them on
stdout. The bridge only needs to send a line and receive the next one; whether the server
is a child process of this proxy or a container reached through the Kubernetes attach
subresource is the channel's business.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import signal
from typing import Final, Protocol

import structlog

# One JSON-RPC message per line. A line longer than this (a tool result of many MiB) is
# skipped with an error in the log rather than buffered without bound.
MAX_LINE: Final = 32 * 1024 * 1024
_STDERR_LINES: Final = 20


class MessageChannel(Protocol):
    async def receive(self) -> bytes | None:
        """The next line from the server, without its newline; None once it is gone."""

    async def send(self, line: bytes) -> None:
        """Write one message (no newline inside it) to the server.
        Raises ConnectionError when the server is gone."""

    async def close(self) -> None:
        """Stop talking; the server may keep running (an attached container does)."""


class ProcessChannel:
    """stdin and stdout of a child process started with both as pipes."""

    def __init__(
        self, process: asyncio.subprocess.Process, log: structlog.stdlib.BoundLogger
    ) -> None:
        assert process.stdin is not None
        assert process.stdout is not None
        self._stdin = process.stdin
        self._stdout = process.stdout
        self._log = log

    async def receive(self) -> bytes | None:
        while True:
            try:
                line = await self._stdout.readline()
            except ValueError:
                # Over the reader's limit: asyncio has dropped the oversized line.
                self._log.error("stdio server wrote a line over the size limit; skipped")
                continue
            if not line:
                return None
            return line.rstrip(b"\r\n")

    async def send(self, line: bytes) -> None:
        try:
            self._stdin.write(line + b"\n")
            await self._stdin.drain()
        except (BrokenPipeError, ConnectionResetError, RuntimeError) as exc:
            raise ConnectionError("the stdio server's stdin is closed") from exc

    async def close(self) -> None:
        with contextlib.suppress(OSError, RuntimeError):
            self._stdin.close()


class StderrTail:
    """The last lines a server wrote to stderr: logged at debug, quoted when it fails."""

    def __init__(self) -> None:
        self.lines: collections.deque[str] = collections.deque(maxlen=_STDERR_LINES)

    def add(self, raw: bytes, log: structlog.stdlib.BoundLogger) -> None:
        for part in raw.decode("utf-8", "replace").splitlines():
            line = part.rstrip()
            if line:
                self.lines.append(line)
                log.debug("backend output", line=line[:500])


async def stop_process(process: asyncio.subprocess.Process, grace: float) -> None:
    """SIGTERM to the child's process group, ``grace`` seconds, SIGKILL. The caller's
    closing deadline may cut the grace short (this is cancelled): the child is killed all
    the same. The child must have been started with ``start_new_session``."""
    if process.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        async with asyncio.timeout(grace):
            await process.wait()
    except TimeoutError:
        pass
    finally:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
    await process.wait()
