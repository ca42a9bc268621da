"""What the tiered store owes Redis, and the one pipelined round trip that pays it.

Creates and deletes that could not be sent (Redis down, credentials refused, a command
failed) wait here; so do the TTL refreshes of sessions used since their last refresh,
coalesced to one batch per ``session_touch_interval``. ``flush`` sends all of it at once.
Deletes are bounded like creates, by ``max_pending_sessions``: past it the oldest one is
dropped and counted (its session then lives on in Redis until its TTL ends it), so that a
long outage cannot grow this process without bound.
Every command is idempotent (``SET NX``, ``DEL``, ``EXPIRE``), so a flush that fails or is
cancelled half way leaves everything pending and is simply sent again.
"""

from __future__ import annotations

from collections.abc import Callable

from proxyrunner.metrics import Metrics
from proxyrunner.sessions.lru import SessionCache
from proxyrunner.sessions.record import SessionRecord
from proxyrunner.sessions.redis_link import Keys, RedisLink


class PendingWrites:
    def __init__(
        self,
        link: RedisLink,
        keys: Keys,
        cache: SessionCache,
        metrics: Metrics,
        touch_interval: float,
        clock: Callable[[], float],
        max_deletes: int,
    ) -> None:
        self._link = link
        self._keys = keys
        self._cache = cache
        self._metrics = metrics
        self._touch_interval = touch_interval
        self._clock = clock
        self._creates: dict[str, SessionRecord] = {}
        self._max_deletes = max_deletes
        # Insertion-ordered: the oldest delete is dropped first. Its session was used
        # least recently of those deleted, so its key is the nearest to expiring anyway.
        self._deletes: dict[str, None] = {}
        self._next_refresh = clock() + touch_interval

    @property
    def creates(self) -> int:
        return len(self._creates)

    @property
    def deletes(self) -> int:
        return len(self._deletes)

    def create(self, record: SessionRecord) -> None:
        self._creates[record.session_id] = record

    def delete(self, session_id: str) -> None:
        self._deletes.pop(session_id, None)
        self._deletes[session_id] = None
        if len(self._deletes) > self._max_deletes:
            del self._deletes[next(iter(self._deletes))]
            self._metrics.pending_deletes_dropped.inc()

    def created(self, session_id: str) -> SessionRecord | None:
        """The record of a session created here and not yet written to Redis: it exists
        even when the LRU has evicted it (or Redis, not having it yet, says it does not)."""
        return self._creates.get(session_id)

    def forget_create(self, session_id: str) -> bool:
        """Drop a pending create (the session was deleted); True if there was one."""
        return self._creates.pop(session_id, None) is not None

    async def flush(self, *, final: bool = False) -> None:
        """Send pending creates and deletes (with their invalidations) and, when due (on
        the final flush: always), refresh the TTL of used sessions, in one round trip.
        Raises StoreUnavailable when the round trip fails; a command that fails alone
        stays pending."""
        creates = dict(self._creates)
        deletes = list(self._deletes)
        now = self._clock()
        refreshing = final or now >= self._next_refresh
        due = (
            [sid for sid, e in self._cache.entries() if e.used_since_refresh] if refreshing else []
        )
        if not (creates or deletes or due):
            if refreshing:
                self._next_refresh = now + self._touch_interval
            return
        keys = self._keys
        pipe = self._link.pipeline()
        for sid, record in creates.items():
            keys.set_new(pipe, sid, record)
        for sid in deletes:
            pipe.delete(keys.key(sid))
            pipe.publish(keys.channel, keys.message(sid))
        for sid in due:
            pipe.expire(keys.key(sid), keys.ttl)
        # Counted by kind, as if sent one by one: the metric's kinds stay what they were.
        kinds = {"set": len(creates), "delete": len(deletes), "publish": len(deletes)}
        kinds["touch"] = len(due)
        counts = {kind: n for kind, n in kinds.items() if n}
        results = iter(
            await self._link.command("flush", pipe.execute(raise_on_error=False), counts)
        )
        if refreshing:
            # Only once the batch went through: a failed one is owed at the next flush.
            self._next_refresh = now + self._touch_interval
        for sid, record in creates.items():
            # Compared by identity: a create queued again meanwhile is a new one.
            if self._succeeded(next(results), "set") and self._creates.get(sid) is record:
                del self._creates[sid]
        for sid in deletes:
            if self._succeeded(next(results), "delete"):
                self._deletes.pop(sid, None)
            self._succeeded(next(results), "publish")
        for sid in due:
            self._refreshed(sid, next(results))

    def _succeeded(self, result: object, kind: str) -> bool:
        if isinstance(result, Exception):
            self._metrics.redis_errors.labels(kind=kind).inc()
            return False
        return True

    def _refreshed(self, session_id: str, alive: object) -> None:
        entry = self._cache.peek(session_id)
        if entry is None or not self._succeeded(alive, "touch"):
            return
        if alive:
            entry.used_since_refresh = False
        elif session_id not in self._creates:
            # Expired or deleted in Redis meanwhile: the session is over everywhere.
            self._cache.pop(session_id)
            self._metrics.sessions_ended.labels(reason="expired").inc()
