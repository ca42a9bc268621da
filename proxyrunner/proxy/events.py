"""Server-sent events, read incrementally: for answer watchers, which see each JSON-RPC
message of an SSE answer, and for answer rewriters (the authorization stage filters list
answers). Without either the relay never parses events: it copies bytes."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable
from typing import Any, Final

from proxyrunner.mcp import jsonrpc


class EventReader:
    """Feed chunks as they arrive; get the decoded ``data`` of each complete event
    (events whose data is not JSON are skipped: they are not JSON-RPC messages)."""

    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[bytes] = []

    def feed(self, chunk: bytes) -> list[Any]:
        messages: list[Any] = []
        self._buffer += chunk
        *lines, self._buffer = self._buffer.split(b"\n")
        for raw in lines:
            line = raw.removesuffix(b"\r")
            if not line:
                if self._data:
                    with contextlib.suppress(ValueError):  # not JSON: not JSON-RPC
                        messages.append(jsonrpc.parse_json(b"\n".join(self._data)))
                    self._data = []
                continue
            field, _, value = line.partition(b":")
            if field == b"data":
                self._data.append(value.removeprefix(b" "))
        return messages


Rewrite = Callable[[Any], Any]
"""A JSON-RPC message of an answer -> the message the client gets (the same object when
it is left alone)."""

_EVENT_END: Final = re.compile(rb"\r\n\r\n|\n\n|\r\r")


class EventRewriter:
    """Feed chunks as they arrive; get back the bytes to send on, in which the ``data``
    of each complete JSON event has passed ``rewrite``. An event is held back only until
    its end arrives; events left alone are sent byte for byte (ids and names kept)."""

    def __init__(self, rewrite: Rewrite) -> None:
        self._rewrite = rewrite
        self._buffer = b""

    def feed(self, chunk: bytes) -> bytes:
        self._buffer += chunk
        out: list[bytes] = []
        start = 0
        for end in _EVENT_END.finditer(self._buffer):
            out.append(self._event(self._buffer[start : end.start()], end.group()))
            start = end.end()
        self._buffer = self._buffer[start:]
        return b"".join(out)

    def flush(self) -> bytes:
        """What is left when the stream ends (an unterminated event, sent as it came)."""
        rest, self._buffer = self._buffer, b""
        return rest

    def _event(self, event: bytes, end: bytes) -> bytes:
        lines = event.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
        data = [ln[5:].removeprefix(b" ") for ln in lines if ln.startswith(b"data:")]
        if not data:
            return event + end
        try:
            message = jsonrpc.parse_json(b"\n".join(data))
        except ValueError:
            return event + end
        rewritten = self._rewrite(message)
        if rewritten is message:
            return event + end
        kept = [ln for ln in lines if not ln.startswith(b"data:")]
        return b"\n".join([*kept, b"data: " + jsonrpc.dumps(rewritten)]) + b"\n\n"
