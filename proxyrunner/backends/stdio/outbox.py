"""Messages on their way to one client stream."""

from __future__ import annotations

import asyncio
import collections
from typing import Final

from proxyrunner.mcp.jsonrpc import Message

OUTBOX_LIMIT: Final = 1000


class Outbox:
    """Bounded: a client that never reads loses the oldest messages, not this process's
    memory. ``get`` returns None once the outbox is closed and empty."""

    def __init__(self, limit: int = OUTBOX_LIMIT) -> None:
        self._items: collections.deque[Message] = collections.deque()
        self._limit = limit
        self._changed = asyncio.Event()
        self.closed = False
        self.dropped = 0

    def put(self, message: Message) -> None:
        if self.closed:
            return
        if len(self._items) >= self._limit:
            self._items.popleft()
            self.dropped += 1
        self._items.append(message)
        self._changed.set()

    def close(self) -> None:
        self.closed = True
        self._changed.set()

    def pending(self) -> list[Message]:
        """What waits to be read, oldest first (without taking it)."""
        return list(self._items)

    async def get(self) -> Message | None:
        while not self._items:
            if self.closed:
                return None
            self._changed.clear()
            await self._changed.wait()
        return self._items.popleft()
