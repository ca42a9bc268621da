"""Server-sent events, read incrementally: for answer watchers, which see each JSON-RPC
message of an SSE answer. The relay itself never parses events (it copies bytes)."""

from __future__ import annotations

import contextlib
from typing import Any

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
