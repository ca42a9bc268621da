"""The in-memory session store: bounded, idle expiry, compare-and-set re-binding."""

from __future__ import annotations

from proxyrunner.metrics import Metrics
from proxyrunner.sessions.memory import MemorySessionStore
from proxyrunner.sessions.record import SessionRecord, new_session_id


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def record(session_id: str, backend: str = "b0") -> SessionRecord:
    return SessionRecord(session_id, backend, "backend-sid", "2025-06-18", "streamable-http", 0, 0)


async def test_idle_sessions_expire_after_the_ttl_and_used_ones_do_not() -> None:
    clock = FakeClock()
    store = MemorySessionStore(10, ttl=60, metrics=Metrics(), clock=clock)
    await store.create(record("idle"))
    await store.create(record("busy"))
    for _ in range(3):
        clock.now += 40
        assert await store.get("busy") is not None
    assert await store.get("idle") is None
    assert dict(store.local_sessions_by_backend()) == {"b0": 1}


async def test_the_store_never_holds_more_than_its_size() -> None:
    store = MemorySessionStore(3, ttl=60, metrics=Metrics(), clock=FakeClock())
    for i in range(5):
        assert await store.create(record(f"s{i}"))
    assert await store.get("s0") is None
    assert await store.get("s1") is None
    assert all([await store.get(f"s{i}") for i in (2, 3, 4)])
    assert sum(store.local_sessions_by_backend().values()) == 3


async def test_creating_an_existing_id_fails() -> None:
    store = MemorySessionStore(3, ttl=60, metrics=Metrics())
    assert await store.create(record("same", "b0"))
    assert not await store.create(record("same", "b1"))
    found = await store.get("same")
    assert found is not None
    assert found.backend == "b0"


async def test_rebind_is_compare_and_set_on_the_backend() -> None:
    store = MemorySessionStore(3, ttl=60, metrics=Metrics())
    await store.create(record("s", "b0"))
    assert await store.rebind("s", "b0", record("s", "b1"))
    assert not await store.rebind("s", "b0", record("s", "b2"))
    found = await store.get("s")
    assert found is not None
    assert found.backend == "b1"
    assert dict(store.local_sessions_by_backend()) == {"b1": 1}


async def test_delete_removes_and_reports_whether_it_existed() -> None:
    store = MemorySessionStore(3, ttl=60, metrics=Metrics())
    await store.create(record("s"))
    assert await store.delete("s")
    assert not await store.delete("s")
    assert await store.get("s") is None


def test_session_ids_are_long_random_visible_ascii() -> None:
    ids = {new_session_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(len(i) >= 43 and all(0x21 <= ord(c) <= 0x7E for c in i) for i in ids)


def test_records_round_trip_and_unknown_versions_read_as_absent() -> None:
    original = record("s")
    assert SessionRecord.from_json(original.to_json()) == original
    assert SessionRecord.from_json('{"v": 99, "session_id": "s"}') is None
    assert SessionRecord.from_json("not json") is None
