"""The tiered store's local copy of sessions: a bounded LRU that counts per backend.

The one rule: every way an entry enters or leaves (insert, replace, pop, LRU eviction)
passes through this class, so the per-backend counts that placement reads never need a
recount. cachetools evicts through ``popitem``, which the private subclass below reports
back; nothing outside this module touches the LRUCache itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from cachetools import Cache, LRUCache

from proxyrunner.sessions.counts import BackendCounts
from proxyrunner.sessions.record import SessionRecord


@dataclass(slots=True)
class CachedSession:
    record: SessionRecord
    """Never reassigned: a changed record is a new entry (``SessionCache.put``), so that
    the counts follow the backend."""
    fetched: float
    """Store-clock time the copy was read from (or written to) Redis."""
    used_since_refresh: bool = False


class _EvictionReportingLRU(LRUCache[str, CachedSession]):
    def __init__(self, maxsize: int, on_evict: Callable[[str, CachedSession], None]) -> None:
        super().__init__(maxsize=maxsize)
        self._on_evict = on_evict

    def popitem(self) -> tuple[str, CachedSession]:
        key, entry = super().popitem()
        self._on_evict(key, entry)
        return key, entry


class SessionCache:
    def __init__(self, maxsize: int) -> None:
        self._counts = BackendCounts()
        self._lru = _EvictionReportingLRU(maxsize, self._evicted)

    def __len__(self) -> int:
        return len(self._lru)

    def __contains__(self, session_id: object) -> bool:
        return session_id in self._lru

    def get(self, session_id: str) -> CachedSession | None:
        """The entry, marked as the most recently used."""
        return self._lru.get(session_id)

    def peek(self, session_id: str) -> CachedSession | None:
        """The entry, leaving the LRU order alone (for background work)."""
        if session_id not in self._lru:
            return None
        entry: CachedSession = Cache.__getitem__(self._lru, session_id)
        return entry

    def entries(self) -> Iterator[tuple[str, CachedSession]]:
        """A snapshot of every entry, in no particular order, without touching the LRU
        order: background sweeps must not make every session look recently used."""
        for session_id in list(self._lru):
            entry = self.peek(session_id)
            if entry is not None:
                yield session_id, entry

    def put(self, session_id: str, entry: CachedSession) -> None:
        """Insert or replace; may evict the least recently used entry."""
        old = self.peek(session_id)
        if old is not None:
            self._counts.remove(old.record.backend)
        self._lru[session_id] = entry
        self._counts.add(entry.record.backend)

    def pop(self, session_id: str) -> CachedSession | None:
        entry = self.peek(session_id)
        if entry is None:
            return None
        del self._lru[session_id]
        self._counts.remove(entry.record.backend)
        return entry

    def by_backend(self) -> Mapping[str, int]:
        return self._counts.view()

    def _evicted(self, session_id: str, entry: CachedSession) -> None:
        self._counts.remove(entry.record.backend)
