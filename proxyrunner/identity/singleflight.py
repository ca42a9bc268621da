"""One request for many callers: concurrent lookups of the same key share one task.

The task belongs to the SingleFlight, not to whichever caller started it: a caller that
is cancelled (its client went away) does not cancel the lookup the others wait for.
``close()`` cancels what is still running, so nothing outlives the owner.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class SingleFlight(Generic[K, V]):
    def __init__(self, name: str) -> None:
        self._name = name
        self._running: dict[K, asyncio.Task[V]] = {}

    async def run(self, key: K, work: Callable[[], Awaitable[V]]) -> V:
        task = self._running.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._wrap(work), name=self._name)
            self._running[key] = task
            task.add_done_callback(lambda done: self._forget(key, done))
        return await asyncio.shield(task)

    async def close(self) -> None:
        tasks = list(self._running.values())
        self._running.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    @staticmethod
    async def _wrap(work: Callable[[], Awaitable[V]]) -> V:
        return await work()

    def _forget(self, key: K, task: asyncio.Task[V]) -> None:
        if self._running.get(key) is task:
            del self._running[key]
        # Retrieve the exception so that a lookup nobody awaits any more (all its callers
        # cancelled) is not reported as "exception never retrieved".
        if not task.cancelled():
            task.exception()
