"""The tiered store when Redis fails: what the README promises, counted, not timed.

- Library exception types never leak out: whatever Redis does (refuses our password
  mid-run, dies, restarts, stalls, runs out of memory), every public method returns or
  raises StoreUnavailable, the background loops survive, and the store recovers.
- While Redis is down, unknown ids make no connection attempt each, cached sessions keep
  serving past their max age, and deletes and TTL refreshes wait to be sent afterwards.
- The final flush is one round trip and may be cancelled at a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import pytest
from structlog.testing import capture_logs

from proxyrunner.errors import StoreUnavailable
from proxyrunner.metrics import Metrics
from proxyrunner.sessions.record import SessionRecord, new_session_id
from proxyrunner.sessions.tiered import TieredSessionStore
from tests.redis_server import CountingListener, RedisServer, RoundTripRelay
from tests.stores import (
    KEY_PREFIX,
    FakeClock,
    Replicas,
    eventually_async,
    record,
    redis_errors,
)


@pytest.fixture
async def replicas(redis_server: RedisServer) -> AsyncIterator[Replicas]:
    async with Replicas(redis_server) as made:
        yield made


@pytest.fixture
def persistent_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server that keeps its data across a SIGKILL (append-only file)."""
    workdir = tmp_path / "persistent-redis"
    workdir.mkdir()
    server = RedisServer(workdir, persistent=True).start()
    yield server
    server.kill()


def usable(store: TieredSessionStore) -> Callable[[], bool]:
    return lambda: store.health().usable


def unusable(store: TieredSessionStore) -> Callable[[], bool]:
    return lambda: not store.health().usable


# ------------------------------------------------------ library exceptions never leak


def more_errors(metrics: Metrics, how_many: int) -> Callable[[], bool]:
    target = redis_errors(metrics) + how_many
    return lambda: redis_errors(metrics) >= target


@dataclass(frozen=True)
class Failure:
    provoke: Callable[[RedisServer], None]
    heal: Callable[[RedisServer], None]
    lasting: bool = True
    """Whether the failure lasts until healed (a restart is over once it happened)."""


def _rotate(via: Literal["config", "acl"]) -> Failure:
    new = secrets.token_urlsafe(16)

    def provoke(redis: RedisServer) -> None:
        redis.set_password(new, via)
        # Redis keeps connections that logged in before: a failover or restart would
        # not, so the pooled ones must log in again (and are refused). The subscription
        # is spared, so that a request, not the listen loop, meets the refusal first.
        redis.kill_command_clients()

    return Failure(provoke, lambda redis: redis.restore_password(via))


def _start(redis: RedisServer) -> None:
    redis.start()


def _nothing(redis: RedisServer) -> None:
    return None


def _redis_says(*args: str) -> Callable[[RedisServer], None]:
    def send(redis: RedisServer) -> None:
        assert "-ERR" not in redis.command(*args)

    return send


FAILURES = {
    "password rotated with CONFIG SET": _rotate("config"),
    "password rotated with ACL SETUSER": _rotate("acl"),
    "server killed": Failure(RedisServer.kill, _start),
    "server restarted, data lost": Failure(RedisServer.restart, _nothing, lasting=False),
    "writes stalled past the socket timeout": Failure(
        _redis_says("CLIENT", "PAUSE", "30000", "WRITE"), _redis_says("CLIENT", "UNPAUSE")
    ),
    "out of memory": Failure(
        _redis_says("CONFIG", "SET", "maxmemory", "1"),
        _redis_says("CONFIG", "SET", "maxmemory", "0"),
    ),
    "commands refused by the ACL": Failure(
        _redis_says("ACL", "SETUSER", "default", "-set", "-del", "-evalsha", "-get"),
        _redis_says("ACL", "SETUSER", "default", "+set", "+del", "+evalsha", "+get"),
    ),
}

Call = Callable[[TieredSessionStore, SessionRecord], Awaitable[Any]]


async def _sync(value: object) -> object:
    return value


CALLS: dict[str, Call] = {
    "create": lambda store, known: store.create(record("b1")),
    "get a cached session": lambda store, known: store.get(known.session_id),
    "get an unknown id": lambda store, known: store.get(new_session_id()),
    "get a malformed id": lambda store, known: store.get("not-an-id"),
    "rebind": lambda store, known: store.rebind(
        known.session_id, known.backend, replace(known, backend="b2")
    ),
    "delete": lambda store, known: store.delete(new_session_id()),
    "health": lambda store, known: _sync(store.health()),
    "counts": lambda store, known: _sync(dict(store.local_sessions_by_backend())),
}


async def call_everything(store: TieredSessionStore, known: SessionRecord, first: str) -> None:
    """Call every public method, ``first`` first (so that it is the one to meet the
    failure); only StoreUnavailable may come out."""
    for name in [first, *(n for n in CALLS if n != first)]:
        with contextlib.suppress(StoreUnavailable):
            await CALLS[name](store, known)


@pytest.mark.parametrize("failure", list(FAILURES))
@pytest.mark.timeout(120)
async def test_library_exception_types_never_leak_out(
    failure: str, replicas: Replicas, redis_server: RedisServer
) -> None:
    mode = FAILURES[failure]
    metrics = Metrics()
    with capture_logs() as logs:
        # A short flush interval: the loops meet the failure soon, whatever it is.
        store = await replicas.make(metrics=metrics, flush_interval=0.1)
        known = record("b0")
        assert await store.create(known)
        for first in CALLS:
            await eventually_async(usable(store), 15, "the store to be usable")
            mode.provoke(redis_server)
            await call_everything(store, known, first)
            if mode.lasting:
                # The background loops meet it too (probes, retried writes), twice.
                await eventually_async(more_errors(metrics, 2), 15, "the loops to meet the failure")
                await call_everything(store, known, first)
            mode.heal(redis_server)
        # Recovered: the loops are alive (they turned the store usable again), and a
        # session created now is in Redis.
        await eventually_async(usable(store), 15, "the store to recover")
        later = record()
        assert await store.create(later)
        await eventually_async(
            lambda: redis_server.integer("EXISTS", KEY_PREFIX + later.session_id) == 1,
            15,
            "the new session to reach Redis",
        )
        mode.provoke(redis_server)
        await call_everything(store, known, "create")
        await store.close()  # the final flush meets the failure too
        mode.heal(redis_server)
    failed = [e for e in logs if str(e.get("event", "")).startswith("background task failed")]
    assert not failed, failed
    assert redis_server.password not in repr(logs)


async def test_refused_credentials_mid_run_degrade_like_an_outage_and_recover(
    replicas: Replicas, redis_server: RedisServer
) -> None:
    store = await replicas.make()
    kept = record()
    await store.create(kept)
    _rotate("config").provoke(redis_server)
    # The first command finds its connection dropped; the next login is refused.
    assert await store.get(new_session_id()) is None
    await eventually_async(
        lambda: "authentication failed" in store.health().reason, 10, "the refusal named"
    )
    health = store.health()
    assert not health.usable
    assert redis_server.password not in health.reason
    # Degraded as in an outage: cached sessions serve, new ones are kept locally.
    assert await store.get(kept.session_id) == kept
    meanwhile = [record() for _ in range(20)]
    assert all(await asyncio.gather(*(store.create(s) for s in meanwhile)))
    redis_server.restore_password()
    await eventually_async(usable(store), 15, "the store to accept the old password again")

    def all_in_redis() -> bool:
        return all(redis_server.integer("EXISTS", KEY_PREFIX + s.session_id) for s in meanwhile)

    await eventually_async(all_in_redis, 15, "the sessions created meanwhile to reach Redis")


async def test_connections_opened_before_a_rotation_do_not_make_the_store_look_usable(
    replicas: Replicas, redis_server: RedisServer
) -> None:
    """After a rotation Redis still serves connections that logged in earlier; the store
    must not turn usable again on one of those while every new login is refused."""
    metrics = Metrics()

    def refused_probes() -> float:
        return (
            metrics.registry.get_sample_value("proxyrunner_redis_errors_total", {"kind": "info"})
            or 0
        )

    with capture_logs() as logs:
        store = await replicas.make(metrics=metrics, flush_interval=0.05)
        await asyncio.gather(*(store.get(new_session_id()) for _ in range(5)))  # a pool
        rotated_at = len(logs)
        redis_server.set_password(secrets.token_urlsafe(16))
        # Only the subscription is cut: its new login is refused, while the pooled
        # connections (logged in before the rotation) would still be served.
        redis_server.kill_clients("pubsub")
        await eventually_async(
            lambda: "authentication failed" in store.health().reason, 10, "the refusal named"
        )
        # Three reconnect probes, each refused; not once did the store turn usable
        # meanwhile, as a probe on an old connection would have made it.
        probes = refused_probes()
        await eventually_async(lambda: refused_probes() >= probes + 3, 15, "three probes")
        assert not store.health().usable
    assert not [e for e in logs[rotated_at:] if e["event"] == "Redis reachable"], logs
    redis_server.restore_password()
    await eventually_async(usable(store), 15, "the store to recover")


# ------------------------------------------------------------------- Redis is down


async def test_unknown_ids_while_redis_is_down_make_no_connection_attempt_each(
    replicas: Replicas, redis_server: RedisServer
) -> None:
    store = await replicas.make()
    redis_server.kill()
    await eventually_async(unusable(store), 10, "the store to notice the outage")
    with CountingListener(redis_server.port) as listener:
        before = listener.accepted
        for _ in range(2000):
            assert await store.get(new_session_id()) is None
        during = listener.accepted - before
        # The contrast that shows the listener counts this store's attempts: its
        # reconnect probes (backoff, one per loop at a time) do arrive.
        await eventually_async(lambda: listener.accepted > before + during, 15, "a probe")
    # At most the attempt each background loop had under way when the lookups began.
    assert during <= 2, during


async def test_cached_sessions_keep_serving_past_their_max_age_while_redis_is_down(
    replicas: Replicas, redis_server: RedisServer
) -> None:
    clock = FakeClock()
    store = await replicas.make({"session_local_max_age": "15s"}, clock=clock)
    session, stale = record(), record()
    await store.create(session)
    await store.create(stale)
    # The contrast: with Redis up, a copy past its max age is read again (one GET).
    clock.advance(16)
    before = redis_server.total_commands()
    assert await store.get(stale.session_id) == stale
    assert redis_server.total_commands() - before == 1
    redis_server.kill()
    await eventually_async(unusable(store), 10, "the store to notice the outage")
    clock.advance(3600)  # far past the max age of both copies
    with CountingListener(redis_server.port) as listener:
        before_attempts = listener.accepted
        for _ in range(100):
            assert await store.get(session.session_id) == session
            assert await store.get(stale.session_id) == stale
        assert listener.accepted - before_attempts <= 2


async def test_deletes_and_refreshes_queued_during_an_outage_reach_redis_after_it(
    persistent_redis: RedisServer,
) -> None:
    clock = FakeClock()
    async with Replicas(persistent_redis) as replicas:
        store = await replicas.make({"session_touch_interval": "1s"}, clock=clock)
        used, dropped = record(), record()
        await store.create(used)
        await store.create(dropped)
        # A short TTL in Redis, so that a refresh (back to session_ttl) shows.
        persistent_redis.command("EXPIRE", KEY_PREFIX + used.session_id, "300")
        persistent_redis.command("SET", KEY_PREFIX + "control", "x")  # not the store's
        persistent_redis.kill()
        await eventually_async(unusable(store), 10, "the store to notice the outage")
        assert await store.get(used.session_id) == used  # a use: its refresh is owed
        assert await store.delete(dropped.session_id)  # queued
        clock.advance(2)  # the refresh is due
        persistent_redis.start()
        # The data survived the outage (the control key), so what changes is our doing.
        assert persistent_redis.integer("EXISTS", KEY_PREFIX + "control") == 1

        def delete_and_refresh_arrived() -> bool:
            gone = persistent_redis.integer("EXISTS", KEY_PREFIX + dropped.session_id) == 0
            ttl = persistent_redis.integer("TTL", KEY_PREFIX + used.session_id)
            return gone and ttl > 300

        await eventually_async(delete_and_refresh_arrived, 15, "the queued writes")
        assert await store.get(dropped.session_id) is None


async def test_deletes_queued_during_an_outage_are_bounded_dropping_the_oldest_counted(
    persistent_redis: RedisServer,
) -> None:
    metrics = Metrics()

    def dropped() -> float:
        sample = "proxyrunner_pending_deletes_dropped_total"
        return metrics.registry.get_sample_value(sample) or 0

    async with Replicas(persistent_redis) as replicas:
        store = await replicas.make({"max_pending_sessions": 3}, metrics=metrics)
        sessions = [record() for _ in range(5)]
        for session in sessions:
            assert await store.create(session)
        persistent_redis.kill()
        await eventually_async(unusable(store), 10, "the store to notice the outage")
        for session in sessions:
            assert await store.delete(session.session_id)
        # A delete queued twice is one delete: nothing more is dropped.
        assert await store.delete(sessions[-1].session_id) is False
        assert dropped() == 2
        persistent_redis.start()
        newest = [KEY_PREFIX + s.session_id for s in sessions[2:]]
        await eventually_async(
            lambda: not any(persistent_redis.integer("EXISTS", key) for key in newest),
            15,
            "the three newest deletes to reach Redis",
        )
        # The two oldest were dropped: their sessions live on in Redis until their TTL.
        for session in sessions[:2]:
            key = KEY_PREFIX + session.session_id
            assert persistent_redis.integer("EXISTS", key) == 1
            assert persistent_redis.integer("TTL", key) > 0
    assert dropped() == 2


async def test_sessions_created_during_an_outage_stay_findable_when_the_lru_evicts_them(
    replicas: Replicas, redis_server: RedisServer
) -> None:
    store = await replicas.make({"session_cache_size": 2})
    redis_server.kill()
    await eventually_async(unusable(store), 10, "the store to notice the outage")
    created = [record() for _ in range(6)]
    for session in created:
        assert await store.create(session)
    assert sum(store.local_sessions_by_backend().values()) == 2  # the LRU evicted four
    # Each one is still found (and a second create of the same id is still refused),
    # however often the LRU evicts the others meanwhile.
    for _ in range(2):
        for session in created:
            assert await store.get(session.session_id) == session
            assert not await store.create(session)
    redis_server.start()

    def all_in_redis() -> bool:
        return all(redis_server.integer("EXISTS", KEY_PREFIX + s.session_id) for s in created)

    await eventually_async(all_in_redis, 15, "the sessions created meanwhile to reach Redis")
    for session in created:
        assert await store.get(session.session_id) == session


async def test_a_created_session_redis_refused_to_store_is_found_after_eviction(
    replicas: Replicas, redis_server: RedisServer
) -> None:
    """Redis up but refusing the SET (out of memory): nothing is marked down, Redis
    answers "no such key", and the session still exists."""
    store = await replicas.make({"session_cache_size": 1}, flush_interval=3600)
    redis_server.command("CONFIG", "SET", "maxmemory", "1")
    refused = record()
    assert await store.create(refused)
    redis_server.command("CONFIG", "SET", "maxmemory", "0")
    assert await store.create(record())  # evicts the refused one from the LRU
    assert store.health().usable
    assert redis_server.integer("EXISTS", KEY_PREFIX + refused.session_id) == 0
    assert await store.get(refused.session_id) == refused


# --------------------------------------------------------------------- the final flush


async def queue_writes_while_usable(
    store: TieredSessionStore, redis: RedisServer, used: list[SessionRecord]
) -> list[SessionRecord]:
    """Leave creates and deletes pending on a usable store: Redis refuses the commands
    themselves (out of memory, the ACL), which marks nothing down. Returns the creates."""
    redis.command("CONFIG", "SET", "maxmemory", "1")
    redis.command("ACL", "SETUSER", "default", "-del")
    created = [record() for _ in range(10)]
    for session in created:
        assert await store.create(session)
    for session in used[:3]:
        assert await store.delete(session.session_id)
    redis.command("CONFIG", "SET", "maxmemory", "0")
    redis.command("ACL", "SETUSER", "default", "+del")
    assert store.health().usable
    return created


async def test_the_final_flush_sends_creates_deletes_and_refreshes_in_one_round_trip(
    replicas: Replicas, redis_server: RedisServer
) -> None:
    async with RoundTripRelay(redis_server.port) as relay:
        via_relay = {"address": f"127.0.0.1:{relay.port}", "key_prefix": "test"}
        # The flush loop stays asleep: what is pending is the final flush's to send.
        store = await replicas.make({"session_redis": via_relay}, flush_interval=3600)
        used = [record() for _ in range(5)]
        for session in used:
            await store.create(session)
            await store.get(session.session_id)  # used since its last refresh
            redis_server.command("EXPIRE", KEY_PREFIX + session.session_id, "300")
        created = await queue_writes_while_usable(store, redis_server, used)
        before = relay.round_trips
        await store.close()
        assert relay.round_trips - before == 1
    for session in created:
        assert redis_server.integer("EXISTS", KEY_PREFIX + session.session_id) == 1
    for session in used[:3]:
        assert redis_server.integer("EXISTS", KEY_PREFIX + session.session_id) == 0
    for session in used[3:]:
        assert redis_server.integer("TTL", KEY_PREFIX + session.session_id) > 300


async def test_close_cancelled_at_a_deadline_releases_its_connections(
    replicas: Replicas, redis_server: RedisServer
) -> None:
    store = await replicas.make(flush_interval=3600)
    used = [record() for _ in range(3)]
    for session in used:
        await store.create(session)
    await queue_writes_while_usable(store, redis_server, used)
    redis_server.command("CLIENT", "PAUSE", "30000", "WRITE")  # the final flush hangs
    with capture_logs() as logs, pytest.raises(TimeoutError):
        async with asyncio.timeout(0.1):
            await store.close()
    redis_server.command("CLIENT", "UNPAUSE")
    # Every connection of the store is gone (only the one asking remains).
    await eventually_async(
        lambda: redis_server.info_field("clients", "connected_clients") == 1,
        10,
        "the store's connections to close",
    )
    unsent = [e for e in logs if e["event"] == "closing with session writes Redis never received"]
    assert unsent
    assert unsent[0]["creates"] == 10
    assert unsent[0]["deletes"] == 3
    assert not [e for e in logs if e.get("log_level") == "error"], logs
