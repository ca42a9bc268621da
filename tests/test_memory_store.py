"""The in-memory store's own behaviour: the size bound drops whole sessions, least
recently used first, and a use restarts the idle timer. What every store does is in
test_store_contract.py; the record and its ids are tested here too."""

from __future__ import annotations

from proxyrunner.metrics import Metrics
from proxyrunner.sessions.memory import MemorySessionStore
from proxyrunner.sessions.record import SessionRecord, new_session_id
from tests.stores import FakeClock


def record(session_id: str, backend: str = "b0") -> SessionRecord:
    return SessionRecord(session_id, backend, "backend-sid", "2025-06-18", "streamable-http", 0, 0)


async def test_each_use_restarts_the_idle_timer_so_used_sessions_outlive_the_ttl() -> None:
    clock = FakeClock()
    store = MemorySessionStore(10, ttl=60, metrics=Metrics(), clock=clock)
    await store.create(record("idle"))
    await store.create(record("busy"))
    for _ in range(3):
        clock.advance(40)
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


def test_session_ids_are_long_random_visible_ascii() -> None:
    ids = {new_session_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(len(i) >= 43 and all(0x21 <= ord(c) <= 0x7E for c in i) for i in ids)


def test_records_round_trip_and_unknown_versions_read_as_absent() -> None:
    original = record("s")
    assert SessionRecord.from_json(original.to_json()) == original
    assert SessionRecord.from_json('{"v": 99, "session_id": "s"}') is None
    assert SessionRecord.from_json("not json") is None
