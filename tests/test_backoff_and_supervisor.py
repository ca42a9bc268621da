"""The one backoff type and the supervisor every background loop runs under."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable

import pytest
import structlog

from proxyrunner.backoff import Backoff
from proxyrunner.lifecycle import unless
from proxyrunner.tasks import Supervisor


def test_backoff_delays_grow_to_the_maximum_and_stay_within_their_jitter_band() -> None:
    backoff = Backoff(first=0.1, maximum=1.0, rng=random.Random(7))
    nominal = [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    for expected in nominal:
        delay = backoff.next_delay()
        assert expected / 2 <= delay <= expected


def test_backoff_jitter_spreads_replicas_that_fail_together() -> None:
    delays = {Backoff(first=1.0, maximum=1.0, rng=random.Random(i)).next_delay() for i in range(20)}
    assert len(delays) == 20


def test_a_long_run_resets_the_backoff_and_a_short_one_does_not() -> None:
    backoff = Backoff(first=0.1, maximum=10.0, reset_after=30.0)
    for _ in range(4):
        backoff.next_delay()
    backoff.ran_for(5.0)
    assert backoff.nominal() == pytest.approx(1.6)
    backoff.ran_for(31.0)
    assert backoff.nominal() == pytest.approx(0.1)


@pytest.mark.parametrize(("first", "maximum", "factor"), [(0, 1, 2), (2, 1, 2), (0.1, 1, 0.5)])
def test_backoff_refuses_parameters_that_cannot_back_off(
    first: float, maximum: float, factor: float
) -> None:
    with pytest.raises(ValueError, match="Backoff"):
        Backoff(first=first, maximum=maximum, factor=factor)


async def test_a_task_that_dies_is_logged_and_restarted() -> None:
    runs = 0
    restarted = asyncio.Event()

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs == 1:
            raise RuntimeError("boom")
        restarted.set()
        await asyncio.Event().wait()

    supervisor = Supervisor(structlog.get_logger())
    with structlog.testing.capture_logs() as logs:
        supervisor.spawn("flaky", flaky, backoff=Backoff(first=0.01, maximum=0.01))
        async with asyncio.timeout(5):
            await restarted.wait()
    await supervisor.close()
    assert runs == 2
    failure = next(e for e in logs if e["event"] == "background task failed; restarting")
    assert failure["task"] == "flaky"
    assert isinstance(failure["exc_info"], RuntimeError)


async def test_a_fatal_task_that_dies_reports_to_its_owner_and_is_not_restarted() -> None:
    reported: list[tuple[str, BaseException]] = []
    done = asyncio.Event()

    def on_fatal(name: str, exc: BaseException) -> None:
        reported.append((name, exc))
        done.set()

    async def broken() -> None:
        raise ValueError("cannot go on")

    supervisor = Supervisor(structlog.get_logger(), on_fatal=on_fatal)
    task = supervisor.spawn("listener", broken, policy="fatal")
    async with asyncio.timeout(5):
        await done.wait()
        await task
    assert [(name, str(exc)) for name, exc in reported] == [("listener", "cannot go on")]
    assert supervisor.running() == []
    await supervisor.close()


async def test_close_cancels_and_awaits_every_task() -> None:
    cancelled: list[str] = []

    def forever(name: str) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.append(name)
                raise

        return run

    supervisor = Supervisor(structlog.get_logger())
    for name in ("a", "b"):
        supervisor.spawn(name, forever(name))
    await asyncio.sleep(0)
    assert sorted(supervisor.running()) == ["a", "b"]
    await supervisor.close()
    assert sorted(cancelled) == ["a", "b"]
    with pytest.raises(RuntimeError, match="closed"):
        supervisor.spawn("late", forever("late"))


def test_a_fatal_policy_needs_somewhere_to_report() -> None:
    async def noop() -> None:
        return None

    with pytest.raises(ValueError, match="on_fatal"):
        Supervisor(structlog.get_logger()).spawn("x", noop, policy="fatal")


async def test_unless_lets_work_finish_or_cancels_it_when_the_event_comes_first() -> None:
    event = asyncio.Event()
    assert await unless(asyncio.sleep(0), event)
    cancelled = asyncio.Event()

    async def forever() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    event.set()
    assert not await unless(forever(), event)
    assert cancelled.is_set()
    assert not await unless(asyncio.Event().wait(), asyncio.Event(), seconds=0.01)

    async def broken() -> None:
        raise ValueError("start failed")

    with pytest.raises(ValueError, match="start failed"):
        await unless(broken(), asyncio.Event())
