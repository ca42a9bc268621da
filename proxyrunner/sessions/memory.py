"""In-process session store: one replica, bounded, idle sessions expire.

Ordered by last use, so both the idle sweep and the size bound remove from the front in
O(1) per removed entry; a get on a live session is a dict lookup and a move-to-end.

A session with a request or stream in flight (``busy``) is never evicted or expired: met
at the front, it is in use now, so it moves to the back. When every session is busy, a
new one is refused (StoreFull: 503) rather than pushing a live client out; otherwise
anyone could end everyone else's sessions by initializing enough of their own.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import replace

from proxyrunner.errors import StoreFull
from proxyrunner.metrics import Metrics
from proxyrunner.sessions.counts import BackendCounts
from proxyrunner.sessions.record import SessionRecord
from proxyrunner.sessions.store import StoreHealth


class MemorySessionStore:
    kind = "memory"

    def __init__(
        self,
        max_sessions: int,
        ttl: float,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
        busy: Callable[[str], bool] = lambda session_id: False,
    ) -> None:
        if max_sessions <= 0:
            raise ValueError("max_sessions must be > 0")
        self._max = max_sessions
        self._ttl = ttl
        self._clock = clock
        self._metrics = metrics
        self._busy = busy
        # session id -> (record, last use); the dict's order is least recently used first.
        self._entries: OrderedDict[str, tuple[SessionRecord, float]] = OrderedDict()
        self._by_backend = BackendCounts()

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        self._entries.clear()
        self._by_backend.clear()
        self._metrics.sessions_live.set(0)

    def health(self) -> StoreHealth:
        return StoreHealth(usable=True, reason="in-memory store")

    def _drop(self, session_id: str, reason: str) -> SessionRecord | None:
        entry = self._entries.pop(session_id, None)
        if entry is None:
            return None
        record = entry[0]
        self._by_backend.remove(record.backend)
        self._metrics.sessions_ended.labels(reason=reason).inc()
        self._metrics.sessions_live.set(len(self._entries))
        return record

    def _expire(self, now: float) -> None:
        deadline = now - self._ttl
        while self._entries:
            session_id, (record, last_use) = next(iter(self._entries.items()))
            if last_use > deadline:
                break
            if self._busy(session_id):
                self._touch(session_id, record, now)
            else:
                self._drop(session_id, "expired")

    def _touch(self, session_id: str, record: SessionRecord, now: float) -> None:
        self._entries[session_id] = (record, now)
        self._entries.move_to_end(session_id)

    def _make_room(self, now: float) -> None:
        """Evict the least recently used idle session; StoreFull if none is idle. Each
        busy one passed moves to the back, so the next search does not pass it again."""
        for _ in range(len(self._entries)):
            session_id, (record, _) = next(iter(self._entries.items()))
            if not self._busy(session_id):
                self._drop(session_id, "evicted")
                return
            self._touch(session_id, record, now)
        self._metrics.sessions_refused.labels(reason="store_full").inc()
        raise StoreFull("every session this replica holds is in use; try again later")

    def make_room(self) -> None:
        now = self._clock()
        self._expire(now)
        while len(self._entries) >= self._max:
            self._make_room(now)

    async def create(self, record: SessionRecord) -> bool:
        now = self._clock()
        self._expire(now)
        if record.session_id in self._entries:
            return False
        while len(self._entries) >= self._max:
            self._make_room(now)
        self._entries[record.session_id] = (record, now)
        self._by_backend.add(record.backend)
        self._metrics.sessions_created.inc()
        self._metrics.sessions_live.set(len(self._entries))
        return True

    async def get(self, session_id: str) -> SessionRecord | None:
        entry = self._entries.get(session_id)
        if entry is None:
            self._metrics.store_lookups.labels("miss").inc()
            return None
        now = self._clock()
        record, last_use = entry
        if now - last_use >= self._ttl:
            self._drop(session_id, "expired")
            self._metrics.store_lookups.labels("miss").inc()
            return None
        self._touch(session_id, record, now)
        self._metrics.store_lookups.labels("hit").inc()
        return record

    async def rebind(self, session_id: str, expected_backend: str, record: SessionRecord) -> bool:
        entry = self._entries.get(session_id)
        if entry is None or entry[0].backend != expected_backend:
            return False
        self._by_backend.remove(expected_backend)
        self._by_backend.add(record.backend)
        self._entries[session_id] = (replace(record, session_id=session_id), self._clock())
        self._entries.move_to_end(session_id)
        return True

    async def delete(self, session_id: str) -> bool:
        return self._drop(session_id, "deleted") is not None

    def local_sessions_by_backend(self) -> Mapping[str, int]:
        self._expire(self._clock())
        return self._by_backend.view()
