"""The LRU-over-Redis session store, two or more "replicas" against a real redis-server.

What every store does is in test_store_contract.py; Redis outages, refused credentials
and the errors that must not leak are in test_redis_outages.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import replace
from typing import Any

import pytest
from structlog.testing import capture_logs

from proxyrunner.config import Secrets
from proxyrunner.errors import StartupError
from proxyrunner.logging import get_logger
from proxyrunner.metrics import Metrics
from proxyrunner.sessions.record import SessionRecord, could_be_session_id, new_session_id
from proxyrunner.sessions.tiered import TieredSessionStore
from tests.redis_server import RedisServer
from tests.stores import Replicas, eventually_async, record, run_config

Factory = Callable[..., Coroutine[Any, Any, TieredSessionStore]]


@pytest.fixture
async def replica(redis_server: RedisServer) -> AsyncIterator[Factory]:
    async with Replicas(redis_server) as replicas:
        yield replicas.make


async def test_a_session_created_on_one_replica_is_served_by_another(replica: Factory) -> None:
    a, b = await replica(), await replica()
    session = record()
    assert await a.create(session)
    assert await b.get(session.session_id) == session


async def test_delete_on_one_replica_reaches_the_other_within_a_second(
    replica: Factory,
) -> None:
    a, b = await replica(), await replica()
    session = record()
    await a.create(session)
    assert await b.get(session.session_id) is not None  # now cached on b
    started = time.monotonic()
    assert await a.delete(session.session_id)

    async def gone() -> bool:
        return await b.get(session.session_id) is None

    await eventually_async(gone, 1.0, "the delete to reach b")
    assert time.monotonic() - started < 1.0


async def test_creation_never_overwrites_another_replicas_session(replica: Factory) -> None:
    a, b = await replica(), await replica()
    first = record("b0")
    clash = SessionRecord(
        first.session_id, "b1", "other", None, "streamable-http", first.created, first.last_used
    )
    assert await a.create(first)
    assert not await b.create(clash)
    found = await b.get(first.session_id)
    assert found is not None
    assert found.backend == "b0"


async def test_racing_rebinds_have_exactly_one_winner(replica: Factory) -> None:
    a, b = await replica(), await replica()
    session = record("b0")
    await a.create(session)
    results = await asyncio.gather(
        a.rebind(session.session_id, "b0", replace(session, backend="b1")),
        b.rebind(session.session_id, "b0", replace(session, backend="b2")),
    )
    assert sorted(results) == [False, True]
    winner = "b1" if results[0] else "b2"
    for store in (a, b):
        found = await store.get(session.session_id)
        assert found is not None
        assert found.backend == winner


async def test_warm_lookups_cost_at_most_005_redis_commands_each(
    replica: Factory, redis_server: RedisServer
) -> None:
    # Short intervals so that several refresh and re-read cycles happen in the test:
    # the budget must hold with the background work included.
    a = await replica({"session_local_max_age": "1s", "session_touch_interval": "1s"})
    sessions = [record() for _ in range(5)]
    for session in sessions:
        await a.create(session)
    before = redis_server.total_commands()
    lookups = 0
    deadline = time.monotonic() + 3.5
    while time.monotonic() < deadline:
        for session in sessions:
            assert await a.get(session.session_id) is not None
            lookups += 1
        await asyncio.sleep(0.001)
    commands = redis_server.total_commands() - before
    assert lookups > 2000
    assert commands / lookups <= 0.05, (commands, lookups)
    assert commands > 0, "TTL refreshes and re-reads did happen"


async def test_cached_sessions_keep_working_while_redis_is_down(
    replica: Factory, redis_server: RedisServer
) -> None:
    a = await replica()
    session = record()
    await a.create(session)
    redis_server.kill()
    started = time.monotonic()
    assert await a.get(session.session_id) == session
    assert await a.get(new_session_id()) is None  # unknown: asks Redis
    assert time.monotonic() - started < 1.5
    assert not a.health().usable
    assert "unreachable" in a.health().reason


async def test_sessions_created_during_an_outage_are_written_through_afterwards(
    replica: Factory, redis_server: RedisServer
) -> None:
    a, b = await replica(), await replica()
    redis_server.kill()
    survivor = record()
    await a.get(new_session_id())  # notice the outage
    assert await a.create(survivor)
    redis_server.start()

    async def visible_on_b() -> bool:
        return await b.get(survivor.session_id) is not None

    await eventually_async(visible_on_b, 10)
    assert a.health().usable


async def test_wrong_password_is_a_startup_error_that_never_shows_the_password(
    redis_server: RedisServer,
) -> None:
    wrong = "not-the-password-x9"
    store = TieredSessionStore(
        run_config(redis_server), Secrets(redis_password=wrong), Metrics(), get_logger()
    )
    with capture_logs() as logs, pytest.raises(StartupError) as info:
        await store.start()
    await store.close()
    message = str(info.value)
    assert "Redis" in message
    assert "authentication" in message
    assert wrong not in message
    assert redis_server.password not in message
    assert wrong not in repr(logs)


async def test_redis_unreachable_at_start_does_not_fail_start(redis_server: RedisServer) -> None:
    redis_server.kill()
    store = TieredSessionStore(
        run_config(redis_server), Secrets(redis_password="x"), Metrics(), get_logger()
    )
    with capture_logs():
        await store.start()
    try:
        assert not store.health().usable
    finally:
        await store.close()


async def test_password_never_appears_in_logs(replica: Factory, redis_server: RedisServer) -> None:
    with capture_logs() as logs:
        a = await replica()
        await a.create(record())
        redis_server.kill()
        await a.get(new_session_id())  # asks Redis: logs the outage
    assert redis_server.password not in repr(logs)


async def test_a_redis_restart_that_loses_data_keeps_cached_sessions(
    replica: Factory, redis_server: RedisServer
) -> None:
    a, b = await replica(), await replica()
    session = record()
    await a.create(session)
    redis_server.kill()
    redis_server.start()  # no persistence: every key is gone

    async def restored() -> bool:
        return await b.get(session.session_id) is not None

    await eventually_async(restored, 10)
    assert await a.get(session.session_id) == session


def test_every_minted_session_id_has_the_shape_lookups_accept() -> None:
    assert all(could_be_session_id(new_session_id()) for _ in range(2000))
    for garbage in ("", "nope", "a" * 42, "a" * 44, "a" * 42 + "=", "a" * 42 + "\n"):
        assert not could_be_session_id(garbage)
