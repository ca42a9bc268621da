"""Signals and the stop request.

Signal handlers only set state: the first SIGTERM/SIGINT asks for a graceful drain, a
second one asks to stop at once. Everything else happens in ordinary coroutines that
wait on these events.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable

import structlog


class StopSignals:
    def __init__(self, log: structlog.stdlib.BoundLogger) -> None:
        self._log = log
        self.stop_requested = asyncio.Event()
        self.force_requested = asyncio.Event()
        self.received: list[str] = []

    def install(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig.name)

    def uninstall(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(ValueError, RuntimeError):
                loop.remove_signal_handler(sig)

    def _on_signal(self, name: str) -> None:
        self.received.append(name)
        if self.stop_requested.is_set():
            self._log.warning(
                "second signal: stopping now, in-flight work is abandoned", signal=name
            )
            self.force_requested.set()
        else:
            self._log.info("signal received: draining", signal=name)
            self.stop_requested.set()

    async def wait_or_force(self, seconds: float) -> bool:
        """Wait ``seconds`` unless a forced stop comes first; True if forced."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self.force_requested.wait()
        return self.force_requested.is_set()


async def unless(work: Awaitable[None], event: asyncio.Event, seconds: float | None = None) -> bool:
    """Run ``work`` until it ends, unless ``event`` is set (or ``seconds`` pass) first;
    then ``work`` is cancelled and awaited. True if ``work`` ended by itself; its
    exception, if it raised one, propagates."""
    task = asyncio.ensure_future(work)
    interrupt = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait({task, interrupt}, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()  # the caller gave up: so does the work
        raise
    finally:
        interrupt.cancel()
    if task.done():
        task.result()
        return True
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return False
