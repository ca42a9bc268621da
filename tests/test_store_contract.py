"""The SessionStore contract, one set of behaviour tests for every store: the in-memory
store and the tiered store over a real redis-server.

What differs between the two is only how time passes for a TTL (the memory store's clock
is moved; for the tiered store Redis expires the key on its own clock, and the local copy
is re-read once the store's clock passes ``session_local_max_age``) and how the test reads
what a store holds, for the recount that checks its per-backend counts.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from proxyrunner.config import RunConfig
from proxyrunner.metrics import Metrics
from proxyrunner.sessions.memory import MemorySessionStore
from proxyrunner.sessions.record import new_session_id
from proxyrunner.sessions.store import SessionStore
from proxyrunner.sessions.tiered import TieredSessionStore
from tests.redis_server import RedisServer
from tests.stores import KEY_PREFIX, FakeClock, Replicas, eventually_async, record, run_config

BACKENDS = ("b0", "b1", "b2", "b3")


def key_gone(redis: RedisServer, session_id: str) -> Callable[[], bool]:
    return lambda: redis.integer("EXISTS", KEY_PREFIX + session_id) == 0


@dataclass
class Harness:
    """Opens stores of one kind; every store it opened is closed after the test."""

    kind: str
    redis: RedisServer | None
    replicas: Replicas | None
    clock: FakeClock = field(default_factory=FakeClock)
    config: RunConfig | None = None
    _memory: list[MemorySessionStore] = field(default_factory=list)

    async def open(self, **config: object) -> SessionStore:
        """A started store with this RunConfig (ToolHive JSON fields, e.g. session_ttl)."""
        self.config = run_config(self.redis, **config)
        if self.replicas is not None:
            return await self.replicas.make(config, clock=self.clock)
        rc = self.config
        store = MemorySessionStore(
            rc.sessions.cache_size, rc.sessions.ttl, Metrics(), clock=self.clock
        )
        self._memory.append(store)
        await store.start()
        return store

    async def let_ttl_pass(self, session_ids: Iterable[str]) -> None:
        """Make the TTL (of the config last opened) run out for these unused sessions."""
        assert self.config is not None
        if self.redis is None:
            self.clock.advance(self.config.sessions.ttl)
            return
        for sid in session_ids:
            await eventually_async(key_gone(self.redis, sid), 10, "Redis to expire it")
        self.clock.advance(self.config.sessions.local_max_age)

    def recount(self, store: SessionStore) -> Counter[str]:
        """Sessions per backend counted from scratch over what the store holds (its
        private entries: the point is to check the counts against them)."""
        if isinstance(store, MemorySessionStore):
            return Counter(rec.backend for rec, _ in store._entries.values())
        assert isinstance(store, TieredSessionStore)
        return Counter(entry.record.backend for _, entry in store._cache.entries())

    async def close(self) -> None:
        for store in self._memory:
            await store.close()


@pytest.fixture(params=["memory", "redis"])
async def harness(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Harness]:
    if request.param == "memory":
        memory = Harness("memory", None, None)
        yield memory
        await memory.close()
        return
    redis_server: RedisServer = request.getfixturevalue("redis_server")
    async with Replicas(redis_server) as replicas:
        yield Harness("redis", redis_server, replicas)


async def test_a_created_session_is_found_by_its_id_and_an_unknown_id_is_not(
    harness: Harness,
) -> None:
    store = await harness.open()
    session = record("b0")
    assert await store.create(session)
    assert await store.get(session.session_id) == session
    assert await store.get(new_session_id()) is None


async def test_creating_an_id_that_exists_fails_and_keeps_the_first_record(
    harness: Harness,
) -> None:
    store = await harness.open()
    first = record("b0")
    assert await store.create(first)
    assert not await store.create(replace(first, backend="b1"))
    assert await store.get(first.session_id) == first
    assert dict(store.local_sessions_by_backend()) == {"b0": 1}


async def test_rebind_replaces_the_record_only_while_it_is_bound_to_the_expected_backend(
    harness: Harness,
) -> None:
    store = await harness.open()
    session = record("b0")
    await store.create(session)
    # The stored record keeps the session's id whatever id the new record carries.
    assert await store.rebind(session.session_id, "b0", record("b1"))
    assert not await store.rebind(session.session_id, "b0", record("b2"))
    found = await store.get(session.session_id)
    assert found is not None
    assert (found.session_id, found.backend) == (session.session_id, "b1")
    assert dict(store.local_sessions_by_backend()) == {"b1": 1}


async def test_rebinding_a_session_that_does_not_exist_fails(harness: Harness) -> None:
    store = await harness.open()
    missing = new_session_id()
    assert not await store.rebind(missing, "b0", record("b1", missing))
    assert await store.get(missing) is None
    assert dict(store.local_sessions_by_backend()) == {}


async def test_delete_removes_the_session_and_reports_whether_it_existed(
    harness: Harness,
) -> None:
    store = await harness.open()
    session = record()
    await store.create(session)
    assert await store.delete(session.session_id)
    assert not await store.delete(session.session_id)
    assert await store.get(session.session_id) is None
    assert dict(store.local_sessions_by_backend()) == {}


async def test_a_session_left_unused_for_its_ttl_is_gone(harness: Harness) -> None:
    store = await harness.open(session_ttl="1s", session_touch_interval="500ms")
    idle, other = record("b0"), record("b1")
    await store.create(idle)
    await store.create(other)
    await harness.let_ttl_pass([idle.session_id, other.session_id])
    assert await store.get(idle.session_id) is None
    assert await store.get(other.session_id) is None
    assert dict(store.local_sessions_by_backend()) == {}


async def test_counts_per_backend_follow_creates_rebinds_and_deletes(harness: Harness) -> None:
    store = await harness.open()
    sessions = [record(backend) for backend in ("b0", "b0", "b1", "b2")]
    for session in sessions:
        await store.create(session)
    assert dict(store.local_sessions_by_backend()) == {"b0": 2, "b1": 1, "b2": 1}
    await store.rebind(sessions[0].session_id, "b0", record("b2"))
    await store.delete(sessions[2].session_id)
    assert dict(store.local_sessions_by_backend()) == {"b0": 1, "b2": 2}


async def test_the_counts_never_exceed_the_cache_size(harness: Harness) -> None:
    store = await harness.open(session_cache_size=3)
    for i in range(10):
        assert await store.create(record(BACKENDS[i % 4]))
    assert sum(store.local_sessions_by_backend().values()) == 3


async def test_a_started_store_is_usable_and_says_what_it_is(harness: Harness) -> None:
    store = await harness.open()
    health = store.health()
    assert health.usable
    assert health.reason
    assert store.kind == harness.kind


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_counts_per_backend_match_a_recount_after_every_operation(
    harness: Harness, seed: int
) -> None:
    """Placement reads counts kept up to date incrementally; after each step of a random
    run of creates, duplicates, uses, rebinds, deletes, evictions (a cache of 8), expiry
    (memory) and changes made by another replica (tiered: invalidations, re-reads of
    sessions Redis no longer has), they equal a count from scratch."""
    rng = random.Random(seed)
    store = await harness.open(session_cache_size=8, session_ttl="120s")
    other = await harness.open() if harness.redis is not None else None
    known: list[str] = []

    def pick() -> str:
        return rng.choice(known) if known and rng.random() < 0.9 else new_session_id()

    for _ in range(300):
        op = rng.randrange(8)
        if op <= 1:
            session = record(rng.choice(BACKENDS))
            known.append(session.session_id)
            await store.create(session)
        elif op == 2:
            await store.create(record(rng.choice(BACKENDS), pick()))
        elif op == 3:
            await store.get(pick())
        elif op == 4:
            sid = pick()
            await store.rebind(sid, rng.choice(BACKENDS), record(rng.choice(BACKENDS), sid))
        elif op == 5:
            await store.delete(pick())
        elif other is None:
            harness.clock.advance(rng.uniform(0, 20))
        elif op == 6:
            # Another replica deletes or moves it: our copy goes when the message lands.
            sid = pick()
            if rng.random() < 0.5:
                await other.delete(sid)
            else:
                await other.rebind(sid, rng.choice(BACKENDS), record(rng.choice(BACKENDS), sid))
        else:
            assert harness.redis is not None
            harness.redis.command("DEL", KEY_PREFIX + pick())
            harness.clock.advance(rng.uniform(0, 20))  # max age 15 s: some copies re-read
        await asyncio.sleep(0)  # let invalidations land mid-run too
        counts = dict(store.local_sessions_by_backend())
        assert counts == dict(harness.recount(store))
        assert all(n > 0 for n in counts.values())
