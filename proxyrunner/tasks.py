"""Supervised background tasks: a task that dies is logged, then restarted or fatal.

Every long-lived loop of the process (Redis flush and invalidations, probes, child
processes, pod and StatefulSet watches, attach streams, stdio conversations) runs under
a Supervisor, never as a bare ``create_task`` whose exception nobody sees. A loop handles
the failures it expects itself (logging a warning and backing off); the supervisor is the
net for everything else:

- ``restart`` (the default): log the exception with its traceback, wait with backoff,
  and run the loop again. A loop that returns normally is finished.
- ``fatal``: log it and call ``on_fatal``: the process cannot go on without this loop.
- ``once``: log it and let it end: one-off work (an answer sent in the background) whose
  failure must be seen but cannot be repeated.

``close()`` cancels and awaits every task, so nothing outlives its owner.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Literal

import structlog

from proxyrunner.backoff import Backoff

Policy = Literal["restart", "fatal", "once"]
Work = Callable[[], Awaitable[None]]
OnFatal = Callable[[str, BaseException], None]


class Supervisor:
    def __init__(self, log: structlog.stdlib.BoundLogger, on_fatal: OnFatal | None = None) -> None:
        self._log = log
        self._on_fatal = on_fatal
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._closed = False

    def spawn(
        self,
        name: str,
        work: Work,
        *,
        policy: Policy = "restart",
        backoff: Backoff | None = None,
    ) -> asyncio.Task[None]:
        """Run ``work()`` under supervision as the task ``name`` (unique per supervisor;
        a task of that name still running is cancelled first)."""
        if self._closed:
            raise RuntimeError(f"supervisor closed; cannot start {name!r}")
        if policy == "fatal" and self._on_fatal is None:
            raise ValueError(f"{name!r}: a fatal task needs a supervisor with on_fatal")
        previous = self._tasks.pop(name, None)
        if previous is not None:
            previous.cancel()
        task = asyncio.get_running_loop().create_task(
            self._guard(name, work, policy, backoff or Backoff(first=0.5, maximum=30.0)),
            name=name,
        )
        self._tasks[name] = task
        task.add_done_callback(lambda t: self._forget(name, t))
        return task

    def running(self) -> list[str]:
        return [name for name, task in self._tasks.items() if not task.done()]

    def cancel(self, name: str) -> asyncio.Task[None] | None:
        """Ask the task to stop; returns it so the caller may await its end."""
        task = self._tasks.pop(name, None)
        if task is not None:
            task.cancel()
        return task

    async def stop(self, name: str) -> None:
        task = self.cancel(name)
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def close(self) -> None:
        """Cancel every task and wait for each to end."""
        self._closed = True
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _forget(self, name: str, task: asyncio.Task[None]) -> None:
        if self._tasks.get(name) is task:
            del self._tasks[name]

    async def _guard(self, name: str, work: Work, policy: Policy, backoff: Backoff) -> None:
        while True:
            started = time.monotonic()
            try:
                await work()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                backoff.ran_for(time.monotonic() - started)
                if policy == "fatal":
                    self._log.error("background task failed; stopping", task=name, exc_info=exc)
                    assert self._on_fatal is not None
                    self._on_fatal(name, exc)
                    return
                if policy == "once":
                    self._log.error("background task failed", task=name, exc_info=exc)
                    return
                delay = backoff.next_delay()
                self._log.error(
                    "background task failed; restarting",
                    task=name,
                    restart_in=round(delay, 3),
                    exc_info=exc,
                )
                await asyncio.sleep(delay)
