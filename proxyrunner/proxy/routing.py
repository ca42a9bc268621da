"""Choosing backends: where a new session goes, and which backend holds a session.

Placement is least-live-sessions among ready backends (ties broken round robin), so that
sessions spread evenly and a backend that was just added fills up first. A session is
only ever routed to the backend that holds it; when that backend is gone the caller
re-initializes elsewhere (see ``rebind``) rather than sending the request to a stranger.
"""

from __future__ import annotations

import itertools

from proxyrunner.backends.directory import Backend, BackendDirectory
from proxyrunner.errors import StoreFull
from proxyrunner.proxy.errors import ServiceUnavailable
from proxyrunner.sessions.record import SessionRecord
from proxyrunner.sessions.store import SessionStore


class Router:
    def __init__(self, directory: BackendDirectory, store: SessionStore) -> None:
        self._directory = directory
        self._store = store
        self._turn = itertools.count()

    def _ready(self, exclude: str | None = None) -> list[Backend]:
        ready = [b for b in self._directory.ready_backends() if b.name != exclude]
        if not ready:
            raise ServiceUnavailable(f"no backend is ready ({self._directory.describe()})")
        return ready

    def pick_for_new_session(self, exclude: str | None = None) -> Backend:
        """The ready backend with the fewest live sessions; raises ServiceUnavailable (503)."""
        ready = self._ready(exclude)
        if len(ready) == 1:
            return ready[0]
        counts = self._store.local_sessions_by_backend()
        start = next(self._turn) % len(ready)
        rotated = ready[start:] + ready[:start]
        return min(rotated, key=lambda b: counts.get(b.name, 0))

    def place_new_session(self) -> Backend:
        """``pick_for_new_session``, once the store has made room for the session: a
        full store (503) is found out before any backend creates a session for it."""
        backend = self.pick_for_new_session()
        try:
            self._store.make_room()
        except StoreFull as exc:
            raise ServiceUnavailable(str(exc)) from None
        return backend

    def pick_stateless(self) -> Backend:
        """Any ready backend, round robin: for requests that belong to no session."""
        ready = self._ready()
        return ready[next(self._turn) % len(ready)]

    def backend_of(self, record: SessionRecord) -> Backend | None:
        """The backend holding this session if it is ready, else None."""
        backend = self._directory.get(record.backend)
        return backend if backend is not None and backend.ready else None
