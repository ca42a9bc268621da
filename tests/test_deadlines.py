"""Per-request deadlines: overdue work times out, other work and outside cancellation
are untouched, and the sweeper does not outlive the work it watches."""

from __future__ import annotations

import asyncio

import pytest

from proxyrunner.proxy.deadlines import DeadlineWatch


async def test_overdue_work_gets_timeout_error() -> None:
    watch = DeadlineWatch(resolution=0.01)
    with pytest.raises(TimeoutError):
        async with watch.limit(0.05):
            await asyncio.Event().wait()


async def test_work_within_its_deadline_completes() -> None:
    watch = DeadlineWatch(resolution=0.01)
    async with watch.limit(5):
        await asyncio.sleep(0.03)
    assert watch._sweeper is None or not watch._deadlines


async def test_cancellation_from_outside_stays_a_cancellation() -> None:
    watch = DeadlineWatch(resolution=0.01)

    async def work() -> None:
        async with watch.limit(5):
            await asyncio.Event().wait()

    task = asyncio.create_task(work())
    await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_only_the_overdue_request_of_many_times_out() -> None:
    watch = DeadlineWatch(resolution=0.01)

    async def work(limit: float, duration: float) -> str:
        async with watch.limit(limit):
            await asyncio.sleep(duration)
        return "done"

    results = await asyncio.gather(
        work(0.05, 1), work(5, 0.1), work(5, 0.1), return_exceptions=True
    )
    assert isinstance(results[0], TimeoutError)
    assert results[1:] == ["done", "done"]
