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

While Redis is unreachable the store degrades instead of failing: sessions in the LRU
keep working (even past their max age), unknown ids answer None at once (no connect
attempt per request), new sessions live in the LRU and are written through once Redis is
back, as are pending refreshes and deletes. ``health()`` is then unusable, so /readyz
turns 503 and the Service sends new clients to replicas that can reach Redis. Wrong
credentials at start are a StartupError (exit 3) naming Redis, never the password.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Final

import redis.asyncio as aioredis
import structlog
from cachetools import LRUCache
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, RedisError, ResponseError
from redis.retry import Retry

from proxyrunner.config import RunConfig, Secrets
from proxyrunner.errors import StartupError, StoreUnavailable
from proxyrunner.metrics import Metrics
from proxyrunner.sessions.record import SessionRecord, could_be_session_id
from proxyrunner.sessions.store import StoreHealth
from proxyrunner.tasks import Supervisor

# Small timeouts: a slow Redis must never stall requests for long.
_SOCKET_TIMEOUT: Final = 0.5
_FLUSH_INTERVAL: Final = 1.0
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


@dataclass(slots=True)
class _Entry:
    record: SessionRecord
    fetched: float
    """Monotonic time the copy was read from (or written to) Redis."""
    used_since_refresh: bool = False


class TieredSessionStore:
    kind = "redis"

    def __init__(
        self,
        config: RunConfig,
        secrets: Secrets,
        metrics: Metrics,
        log: structlog.stdlib.BoundLogger,
    ) -> None:
        rc = config.sessions.redis
        assert rc is not None, "the tiered store needs session_redis"
        self._address = rc.address
        self._ttl = max(1, round(config.sessions.ttl))
        self._max_age = config.sessions.local_max_age
        self._touch_interval = config.sessions.touch_interval
        self._prefix = f"{rc.key_prefix}{config.name}:session:"
        self._channel = f"{rc.key_prefix}{config.name}:invalidate"
        self._replica = uuid.uuid4().hex[:12]
        self._metrics = metrics
        self._log = log.bind(store="redis", redis=rc.address)
        self._cache: LRUCache[str, _Entry] = LRUCache(maxsize=config.sessions.cache_size)
        self._pending_creates: dict[str, SessionRecord] = {}
        self._pending_deletes: set[str] = set()
        self._up = False
        self._last_error = "not connected yet"
        self._next_refresh = time.monotonic() + self._touch_interval
        self._tasks = Supervisor(self._log)
        self._rebind: Any = None
        self._run_id: str | None = None
        self._subscribed = asyncio.Event()
        common: dict[str, Any] = {
            "host": rc.host,
            "port": rc.port,
            "db": rc.db,
            "username": rc.username,
            "password": secrets.redis_password,
            "socket_connect_timeout": _SOCKET_TIMEOUT,
            "retry": Retry(NoBackoff(), 0),  # never retry on the request path
            "health_check_interval": 0,  # every command counts against our budget
            "socket_keepalive": True,
        }
        if rc.tls:
            common["ssl"] = True
            common["ssl_ca_certs"] = rc.ca_file
            common["ssl_cert_reqs"] = ssl.CERT_REQUIRED
        self._redis = aioredis.Redis(socket_timeout=_SOCKET_TIMEOUT, **common)
        # Pub/sub waits indefinitely for messages: no read timeout on that connection.
        self._subscriber = aioredis.Redis(socket_timeout=None, **common)

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        try:
            await self._check_restart()
            self._set_up(True)
        except AuthenticationError:
            raise StartupError(
                f"Redis at {self._address} refused our credentials (authentication failed); "
                "check THV_SESSION_REDIS_PASSWORD and session_redis.username"
            ) from None
        except StoreUnavailable:
            self._log.warning(
                "Redis unreachable at start; serving from the local cache until it is back",
                error=self._last_error,
            )
        self._rebind = self._redis.register_script(_REBIND_SCRIPT)
        self._tasks.spawn("redis-flush", self._flush_loop)
        self._tasks.spawn("redis-invalidations", self._listen_loop)
        if self._up:
            # Serve only once invalidations reach us: a session cached before the
            # subscription is live could miss a delete made on another replica.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_SOCKET_TIMEOUT * 2):
                    await self._subscribed.wait()

    async def close(self) -> None:
        await self._tasks.close()
        if self._up:
            with contextlib.suppress(StoreUnavailable):
                await self._flush()
        await self._redis.aclose()
        await self._subscriber.aclose()

    def health(self) -> StoreHealth:
        if self._up:
            return StoreHealth(True, f"redis at {self._address}")
        return StoreHealth(False, f"redis at {self._address} unreachable ({self._last_error})")

    # ---------------------------------------------------------------- protocol

    async def create(self, record: SessionRecord) -> bool:
        sid = record.session_id
        if sid in self._cache:
            return False
        if self._up:
            try:
                created = await self._command(
                    "set", self._redis.set(self._key(sid), record.to_json(), nx=True, ex=self._ttl)
                )
            except StoreUnavailable:
                self._pending_creates[sid] = record
            else:
                if not created:
                    return False
        else:
            self._pending_creates[sid] = record
        self._cache[sid] = _Entry(record, time.monotonic())
        self._metrics.sessions_created.inc()
        return True

    async def get(self, session_id: str) -> SessionRecord | None:
        if not could_be_session_id(session_id):
            # Garbage ids (a scanner, a client of another proxy) cost no Redis round trip.
            self._metrics.store_lookups.labels("malformed").inc()
            return None
        entry = self._cache.get(session_id)
        now = time.monotonic()
        if entry is not None and (now - entry.fetched < self._max_age or not self._up):
            entry.used_since_refresh = True
            self._metrics.store_lookups.labels("hit").inc()
            return entry.record
        self._metrics.store_lookups.labels("miss").inc()
        if not self._up:
            return None
        try:
            raw = await self._command("get", self._redis.get(self._key(session_id)))
        except StoreUnavailable:
            return entry.record if entry is not None else None
        record = SessionRecord.from_json(raw) if raw is not None else None
        if record is None:
            if self._cache.pop(session_id, None) is not None:
                self._metrics.sessions_ended.labels(reason="expired").inc()
            return None
        self._cache[session_id] = _Entry(record, now, used_since_refresh=True)
        return record

    async def rebind(self, session_id: str, expected_backend: str, record: SessionRecord) -> bool:
        if not self._up or self._rebind is None:
            raise StoreUnavailable(f"redis at {self._address} unreachable")
        moved = replace(record, session_id=session_id)
        won = await self._command(
            "rebind",
            self._rebind(
                keys=[self._key(session_id)], args=[expected_backend, moved.to_json(), self._ttl]
            ),
        )
        self._cache.pop(session_id, None)
        if won:
            self._cache[session_id] = _Entry(moved, time.monotonic())
            await self._publish(session_id)
        return bool(won)

    async def delete(self, session_id: str) -> bool:
        existed = self._cache.pop(session_id, None) is not None
        self._pending_creates.pop(session_id, None)
        if not self._up:
            self._pending_deletes.add(session_id)
            return existed
        try:
            removed = await self._command("delete", self._redis.delete(self._key(session_id)))
            await self._publish(session_id)
        except StoreUnavailable:
            self._pending_deletes.add(session_id)
            return existed
        if existed or removed:
            self._metrics.sessions_ended.labels(reason="deleted").inc()
        return existed or bool(removed)

    def local_sessions_by_backend(self) -> Mapping[str, int]:
        return Counter(entry.record.backend for entry in self._cache.values())

    # ---------------------------------------------------------------- internals

    def _key(self, session_id: str) -> str:
        return self._prefix + session_id

    async def _command(self, kind: str, awaitable: Any, count: int = 1) -> Any:
        """Await one Redis command, counting it; library errors become StoreUnavailable
        (connection trouble also marks Redis down until the flush loop reconnects)."""
        self._metrics.redis_commands.labels(kind=kind).inc(count)
        try:
            return await awaitable
        except AuthenticationError:
            self._metrics.redis_errors.labels(kind=kind).inc()
            self._last_error = "authentication failed"
            self._set_up(False)
            raise
        except (RedisError, OSError) as exc:
            self._metrics.redis_errors.labels(kind=kind).inc()
            if not isinstance(exc, ResponseError):
                self._last_error = exc.__class__.__name__
                self._set_up(False)
            raise StoreUnavailable(f"redis {kind} failed ({exc.__class__.__name__})") from exc

    def _set_up(self, up: bool) -> None:
        if up == self._up:
            return
        self._up = up
        if up:
            self._log.info("Redis reachable")
        else:
            self._log.warning("Redis unreachable; serving cached sessions", error=self._last_error)

    async def _publish(self, session_id: str) -> None:
        with contextlib.suppress(StoreUnavailable):
            await self._command(
                "publish", self._redis.publish(self._channel, f"{self._replica} {session_id}")
            )

    def _invalidate(self, message: bytes | str) -> None:
        text = message.decode() if isinstance(message, bytes) else message
        sender, _, session_id = text.partition(" ")
        if sender == self._replica:
            return
        self._metrics.invalidations.inc()
        if self._cache.pop(session_id, None) is not None:
            self._metrics.sessions_ended.labels(reason="invalidated").inc()

    async def _check_restart(self) -> None:
        """Notice a Redis restart (a new run_id) and write back the cached sessions it may
        have lost, with SET NX so that nothing newer is overwritten."""
        info = await self._command("info", self._redis.info("server"))
        run_id = str(info.get("run_id", ""))
        if self._run_id is not None and run_id != self._run_id and len(self._cache):
            pipe = self._redis.pipeline(transaction=False)
            for sid, entry in self._cache.items():
                pipe.set(self._key(sid), entry.record.to_json(), nx=True, ex=self._ttl)
            restored = await self._command("restore", pipe.execute(), count=len(self._cache))
            self._log.warning(
                "Redis restarted; wrote back the sessions it lost from this replica's cache",
                sessions=sum(bool(r) for r in restored),
            )
        self._run_id = run_id

    async def _flush(self) -> None:
        """Write through what waited for Redis, then refresh the TTL of used sessions."""
        for sid, record in list(self._pending_creates.items()):
            await self._command(
                "set", self._redis.set(self._key(sid), record.to_json(), nx=True, ex=self._ttl)
            )
            del self._pending_creates[sid]
        for sid in list(self._pending_deletes):
            await self._command("delete", self._redis.delete(self._key(sid)))
            await self._publish(sid)
            self._pending_deletes.discard(sid)
        now = time.monotonic()
        if now < self._next_refresh:
            return
        self._next_refresh = now + self._touch_interval
        due = [sid for sid, entry in self._cache.items() if entry.used_since_refresh]
        if not due:
            return
        pipe = self._redis.pipeline(transaction=False)
        for sid in due:
            pipe.expire(self._key(sid), self._ttl)
        results = await self._command("touch", pipe.execute(), count=len(due))
        for sid, alive in zip(due, results, strict=True):
            entry = self._cache.get(sid)
            if entry is None:
                continue
            if alive:
                entry.used_since_refresh = False
            else:
                # Expired or deleted in Redis meanwhile: the session is over everywhere.
                self._cache.pop(sid, None)
                self._metrics.sessions_ended.labels(reason="expired").inc()

    async def _flush_loop(self) -> None:
        backoff = _RECONNECT_FIRST
        while True:
            if self._up:
                await asyncio.sleep(_FLUSH_INTERVAL)
                with contextlib.suppress(StoreUnavailable):
                    await self._flush()
                continue
            await asyncio.sleep(backoff)
            try:
                await self._check_restart()
            except (StoreUnavailable, AuthenticationError):
                backoff = min(backoff * 2, _RECONNECT_MAX)
                continue
            backoff = _RECONNECT_FIRST
            self._set_up(True)
            with contextlib.suppress(StoreUnavailable):
                await self._flush()

    async def _listen_loop(self) -> None:
        backoff = _RECONNECT_FIRST
        first = True
        while True:
            pubsub = self._subscriber.pubsub()
            try:
                await self._command("subscribe", pubsub.subscribe(self._channel))
                # Subscribed once the server confirms it: publishes after that reach us.
                confirmation = None
                while confirmation is None or confirmation.get("type") != "subscribe":
                    confirmation = await pubsub.get_message(timeout=_SOCKET_TIMEOUT * 2)
                    if confirmation is None:
                        raise StoreUnavailable("no subscription confirmation from Redis")
                self._subscribed.set()
                if not first:
                    await self._check_restart()
                    self._set_up(True)
                    # Messages may have been missed while disconnected: re-read every
                    # cached session before trusting it again.
                    for entry in self._cache.values():
                        entry.fetched = 0.0
                first = False
                backoff = _RECONNECT_FIRST
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        self._invalidate(message["data"])
            except (StoreUnavailable, AuthenticationError, RedisError, OSError) as exc:
                # The subscription breaks first when Redis goes away: say so at once, so
                # that readiness does not wait for a request to find out.
                self._last_error = exc.__class__.__name__
                self._set_up(False)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _RECONNECT_MAX)
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
