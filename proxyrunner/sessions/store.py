"""The contract between the data path and wherever sessions are kept.

The proxy talks to this protocol only; it never imports redis. Every method is safe to
call while the backing service is down: reads answer from what is cached locally (or
None), writes are queued or reported as not done, nothing raises a library error.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from proxyrunner.sessions.record import SessionRecord


@dataclass(frozen=True, slots=True)
class StoreHealth:
    usable: bool
    """False while the store cannot create new sessions (readiness turns 503)."""
    reason: str
    """One line for /readyz and logs, naming what is wrong."""


class SessionStore(Protocol):
    kind: str
    """"memory" or "redis"."""

    async def start(self) -> None:
        """Connect and start background work. Raises StartupError only for faults that
        retrying cannot fix (Redis refused our credentials)."""

    async def close(self) -> None:
        """Flush pending writes (one round trip) and release connections and tasks.
        Safe to cancel at a deadline: connections and tasks are released regardless."""

    def health(self) -> StoreHealth: ...

    def make_room(self) -> None:
        """Make room for one new session now (the memory store evicts an idle one if it
        must), or raise StoreFull. Called before a backend is asked to create a session,
        so that a session this store would refuse never reaches the backend."""

    async def create(self, record: SessionRecord) -> bool:
        """Store a new session; False if the id is already taken. Raises StoreUnavailable
        when the session cannot be recorded anywhere."""

    async def get(self, session_id: str) -> SessionRecord | None:
        """The live session, or None when unknown or expired. Counts as a use of the
        session (its idle timer restarts), with shared-store refreshes coalesced."""

    async def rebind(self, session_id: str, expected_backend: str, record: SessionRecord) -> bool:
        """Compare-and-set: replace the record only if it is still bound to
        ``expected_backend``. False when another replica re-bound or deleted it first."""

    async def delete(self, session_id: str) -> bool:
        """Remove the session everywhere; True if it existed."""

    def local_sessions_by_backend(self) -> Mapping[str, int]:
        """Live sessions per backend as this process knows them (for least-sessions
        placement); exact for the memory store, this replica's view for a shared one.
        Kept up to date as sessions come and go: the call costs O(backends)."""
