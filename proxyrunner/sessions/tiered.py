"""Sessions shared by every replica: a bounded LRU in front of Redis.

Two promises, and how they are kept:

- **A warm session costs (nearly) no Redis round trip.** A lookup that hits the LRU and
  is younger than ``session_local_max_age`` does no I/O at all. TTL refreshes are not sent
  per request: a session used since its last refresh is refreshed at most once per
  ``session_touch_interval``, by one pipelined ``EXPIRE`` batch for all sessions due.
  With the defaults (15 s, 60 s) a hot session costs one GET per 15 s and one EXPIRE per
  minute, whatever its request rate.
- **A change on one replica is seen by all others within a bounded time.** Deletes and
  re-binds are published on a channel; every replica drops its copy on receipt. A lost
  message cannot keep a stale copy alive longer than ``session_local_max_age``, after
  which the copy is read again from Redis.

Creation is ``SET NX`` (two replicas never overwrite each other's session); re-binding
is compare-and-set on the stored backend (a Lua script), so replicas racing to move a
session agree on one winner.

While Redis is unreachable, or refuses our credentials, the store degrades instead of
failing: sessions in the LRU keep working (even past their max age), unknown ids answer
None at once (no connect attempt per request), new sessions live in the LRU and are
written through once Redis is back, as are pending refreshes and deletes (one pipelined
round trip). ``health()`` is then unusable, so /readyz turns 503 and the Service sends new
clients to replicas that can reach Redis. Only the flush loop turns the store usable
again, after a probe on a fresh connection. Wrong credentials at start are a StartupError
(exit 3) naming Redis, never the password. No redis-py exception leaves this package
(see ``redis_link``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Final

import structlog

from proxyrunner.backoff import Backoff
from proxyrunner.config import RunConfig, Secrets
from proxyrunner.errors import StartupError, StoreFull, StoreUnavailable
from proxyrunner.metrics import Metrics
from proxyrunner.sessions.lru import CachedSession, SessionCache
from proxyrunner.sessions.record import SessionRecord, could_be_session_id
from proxyrunner.sessions.redis_link import SOCKET_TIMEOUT, CredentialsRefused, Keys, RedisLink
from proxyrunner.sessions.store import StoreHealth
from proxyrunner.sessions.writeback import PendingWrites
from proxyrunner.tasks import Supervisor

if TYPE_CHECKING:
    from proxyrunner.telemetry.runtime import Telemetry

FLUSH_INTERVAL: Final = 1.0
_RECONNECT_FIRST: Final = 0.1
_RECONNECT_MAX: Final = 5.0

# Replace the record only if it is still bound to the expected backend.
_REBIND_SCRIPT: Final = """
local current = redis.call('GET', KEYS[1])
if not current then return 0 end
local ok, doc = pcall(cjson.decode, current)
if not ok or doc['backend'] ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
return 1
"""


def _reconnect_backoff() -> Backoff:
    # Reset by hand on success: a long outage must not make the next one start slow.
    return Backoff(first=_RECONNECT_FIRST, maximum=_RECONNECT_MAX, reset_after=None)


class TieredSessionStore:
    kind = "redis"

    def __init__(
        self,
        config: RunConfig,
        secrets: Secrets,
        metrics: Metrics,
        log: structlog.stdlib.BoundLogger,
        clock: Callable[[], float] = time.monotonic,
        flush_interval: float = FLUSH_INTERVAL,
        telemetry: Telemetry | None = None,
    ) -> None:
        rc = config.sessions.redis
        assert rc is not None, "the tiered store needs session_redis"
        self._keys = Keys(
            prefix=f"{rc.key_prefix}{config.name}:session:",
            channel=f"{rc.key_prefix}{config.name}:invalidate",
            replica=uuid.uuid4().hex[:12],
            ttl=max(1, round(config.sessions.ttl)),
        )
        self._max_age = config.sessions.local_max_age
        self._max_pending = config.limits.max_pending_sessions
        self._metrics = metrics
        self._clock = clock
        self._flush_interval = flush_interval
        self._log = log.bind(store="redis", redis=rc.address)
        self._link = RedisLink(rc, secrets.redis_password, metrics, self._log, telemetry)
        self._cache = SessionCache(config.sessions.cache_size)
        self._pending = PendingWrites(
            self._link,
            self._keys,
            self._cache,
            metrics,
            config.sessions.touch_interval,
            clock,
            max_deletes=self._max_pending,
        )
        self._tasks = Supervisor(self._log)
        self._rebind_script = self._link.script(_REBIND_SCRIPT)
        self._run_id: str | None = None
        self._subscribed = asyncio.Event()
        self._closed = False

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        try:
            await self._check_restart()
            self._link.mark_up()
        except CredentialsRefused:
            raise StartupError(
                f"Redis at {self._link.address} refused our credentials (authentication "
                "failed); check THV_SESSION_REDIS_PASSWORD and session_redis.username"
            ) from None
        except StoreUnavailable:
            self._log.warning(
                "Redis unreachable at start; serving from the local cache until it is back",
                error=self._link.last_error,
            )
        self._tasks.spawn("redis-flush", self._flush_loop)
        self._tasks.spawn("redis-invalidations", self._listen_loop)
        if self._link.up:
            # Serve only once invalidations reach us: a session cached before the
            # subscription is live could miss a delete made on another replica.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(SOCKET_TIMEOUT * 2):
                    await self._subscribed.wait()

    async def close(self) -> None:
        """Stop the loops, write what is pending in one round trip, release connections.

        Safe to cancel at a deadline: the connections are released whatever happens,
        and what could not be written is logged (by count; never session ids)."""
        if self._closed:
            return
        self._closed = True
        try:
            await self._tasks.close()
            if self._link.up:
                with contextlib.suppress(StoreUnavailable):
                    await self._pending.flush(final=True)
        finally:
            if self._pending.creates or self._pending.deletes:
                self._log.warning(
                    "closing with session writes Redis never received",
                    creates=self._pending.creates,
                    deletes=self._pending.deletes,
                )
            await self._link.close()

    def health(self) -> StoreHealth:
        return self._link.health()

    # ---------------------------------------------------------------- protocol

    async def create(self, record: SessionRecord) -> bool:
        sid = record.session_id
        if sid in self._cache or self._pending.created(sid) is not None:
            return False
        if self._link.up:
            try:
                created = await self._link.command(
                    "set", self._keys.set_new(self._link.client, sid, record)
                )
            except StoreUnavailable:
                self._hold_pending(record)
            else:
                if not created:
                    return False
        else:
            self._hold_pending(record)
        self._cache.put(sid, CachedSession(record, self._clock()))
        self._metrics.sessions_created.inc()
        return True

    async def get(self, session_id: str) -> SessionRecord | None:
        if not could_be_session_id(session_id):
            # Garbage ids (a scanner, a client of another proxy) cost no Redis round trip.
            self._metrics.store_lookups.labels("malformed").inc()
            return None
        entry = self._cache.get(session_id)
        now = self._clock()
        up = self._link.up
        if entry is None:
            entry = self._recall_pending(session_id, now)
        if entry is not None and (now - entry.fetched < self._max_age or not up):
            entry.used_since_refresh = True
            self._metrics.store_lookups.labels("hit").inc()
            return entry.record
        self._metrics.store_lookups.labels("miss").inc()
        if not up:
            return None
        try:
            raw = await self._link.command("get", self._link.client.get(self._keys.key(session_id)))
        except StoreUnavailable:
            return entry.record if entry is not None else None
        record = SessionRecord.from_json(raw) if raw is not None else None
        if record is None:
            pending = self._pending.created(session_id)
            if pending is not None:
                # Created here, its SET NX not yet through: Redis cannot know it yet.
                return pending
            if self._cache.pop(session_id) is not None:
                self._metrics.sessions_ended.labels(reason="expired").inc()
            return None
        self._cache.put(session_id, CachedSession(record, now, used_since_refresh=True))
        return record

    async def rebind(self, session_id: str, expected_backend: str, record: SessionRecord) -> bool:
        if not self._link.up:
            raise StoreUnavailable(f"redis at {self._link.address} unreachable")
        moved = replace(record, session_id=session_id)
        won = await self._link.command(
            "rebind",
            self._rebind_script(
                keys=[self._keys.key(session_id)],
                args=[expected_backend, moved.to_json(), self._keys.ttl],
            ),
        )
        self._cache.pop(session_id)
        if won:
            self._cache.put(session_id, CachedSession(moved, self._clock()))
            await self._publish(session_id)
        return bool(won)

    async def delete(self, session_id: str) -> bool:
        existed = self._cache.pop(session_id) is not None
        if self._pending.forget_create(session_id):
            # Its SET NX may be on the wire in a flush right now, to land after the DEL
            # below: the next flush deletes it once more.
            self._pending.delete(session_id)
        if not self._link.up:
            self._pending.delete(session_id)
            return existed
        try:
            removed = await self._link.command(
                "delete", self._link.client.delete(self._keys.key(session_id))
            )
            await self._publish(session_id)
        except StoreUnavailable:
            self._pending.delete(session_id)
            return existed
        if existed or removed:
            self._metrics.sessions_ended.labels(reason="deleted").inc()
        return existed or bool(removed)

    def local_sessions_by_backend(self) -> Mapping[str, int]:
        return self._cache.by_backend()

    def _recall_pending(self, session_id: str, now: float) -> CachedSession | None:
        """A session the LRU evicted before Redis received it: back into the LRU from the
        pending creates (this replica's copy is the only one; Redis is not asked)."""
        record = self._pending.created(session_id)
        if record is None:
            return None
        entry = CachedSession(record, now)
        self._cache.put(session_id, entry)
        return entry

    def make_room(self) -> None:
        # Redis up: a create goes there, and is held only if that very command fails.
        if not self._link.up:
            self._refuse_if_pending_full()

    def _refuse_if_pending_full(self) -> None:
        if self._pending.creates >= self._max_pending:
            self._metrics.sessions_refused.labels(reason="pending_full").inc()
            raise StoreFull("this replica holds all the new sessions it can until Redis is back")

    def _hold_pending(self, record: SessionRecord) -> None:
        """Keep a new session until Redis is back, within ``max_pending_sessions``: a
        long outage must not let new clients grow this process without bound."""
        self._refuse_if_pending_full()
        self._pending.create(record)

    # ---------------------------------------------------------------- internals

    async def _publish(self, session_id: str) -> None:
        with contextlib.suppress(StoreUnavailable):
            await self._link.command(
                "publish",
                self._link.client.publish(self._keys.channel, self._keys.message(session_id)),
            )

    def _invalidate(self, message: bytes | str) -> None:
        text = message.decode(errors="replace") if isinstance(message, bytes) else message
        sender, _, session_id = text.partition(" ")
        if sender == self._keys.replica:
            return
        self._metrics.invalidations.inc()
        if self._cache.pop(session_id) is not None:
            self._metrics.sessions_ended.labels(reason="invalidated").inc()

    async def _check_restart(self) -> None:
        """Notice a Redis restart (a new run_id) and write back the cached sessions it may
        have lost, with SET NX so that nothing newer is overwritten."""
        info = await self._link.command("info", self._link.client.info("server"))
        run_id = str(info.get("run_id", ""))
        if self._run_id is not None and run_id != self._run_id and len(self._cache):
            entries = list(self._cache.entries())
            pipe = self._link.pipeline()
            for sid, entry in entries:
                self._keys.set_new(pipe, sid, entry.record)
            restored = await self._link.command("restore", pipe.execute(), count=len(entries))
            self._log.warning(
                "Redis restarted; wrote back the sessions it lost from this replica's cache",
                sessions=sum(bool(r) for r in restored),
            )
        self._run_id = run_id

    async def _reconnect(self) -> bool:
        """Probe Redis on fresh connections; True (and usable again) once it answers."""
        await self._link.forget_connections()
        try:
            await self._check_restart()
        except StoreUnavailable:
            return False
        self._link.mark_up()
        return True

    async def _flush_loop(self) -> None:
        backoff = _reconnect_backoff()
        while True:
            await (asyncio.sleep(self._flush_interval) if self._link.up else backoff.wait())
            # Checked after the wait: Redis may have gone away (or come back) meanwhile.
            if not self._link.up:
                if not await self._reconnect():
                    continue
                backoff.reset()
            with contextlib.suppress(StoreUnavailable):
                await self._pending.flush()

    async def _listen_loop(self) -> None:
        backoff = _reconnect_backoff()
        first = True
        while True:
            try:
                async with self._link.subscription(self._keys.channel) as messages:
                    self._subscribed.set()
                    if not first:
                        # Messages may have been missed while disconnected: re-read every
                        # cached session before trusting it again.
                        for _, entry in self._cache.entries():
                            entry.fetched = float("-inf")
                    first = False
                    backoff.reset()
                    # The subscription breaks first when Redis goes away, and the link
                    # marks it down at once: readiness need not wait for a request.
                    async for data in messages:
                        self._invalidate(data)
            except StoreUnavailable:
                pass
            await backoff.wait()
