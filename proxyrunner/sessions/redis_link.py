"""The tiered store's connection to Redis: the clients, and the one boundary for errors.

The rule of this module: no redis-py exception leaves it. Every command runs inside
``RedisLink.errors``, which turns library errors into the project's own:

- connection trouble (refused, reset, timeout, a restart) marks Redis down and raises
  StoreUnavailable; the store then serves from its cache until a probe succeeds;
- credentials refused (the password was rotated, the ACL user disabled) does the same,
  raising CredentialsRefused so that ``start()`` can tell it apart, and names the
  authentication failure in ``health()``, never the password;
- a refused command (a script error, out of memory) raises StoreUnavailable and leaves
  the connection state alone: Redis is up, that one command failed.

The store's public methods, its loops and this module's callers therefore only ever see
StoreUnavailable (and CredentialsRefused, a StoreUnavailable).
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, TypeVar

import redis.asyncio as aioredis
import structlog
from redis.asyncio.client import Pipeline, PubSub
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import (
    AuthenticationError,
    AuthenticationWrongNumberOfArgsError,
    AuthorizationError,
    RedisError,
    ResponseError,
)
from redis.retry import Retry

from proxyrunner.config import SessionRedisConfig
from proxyrunner.errors import StoreUnavailable
from proxyrunner.metrics import Metrics
from proxyrunner.sessions.record import SessionRecord
from proxyrunner.sessions.store import StoreHealth

if TYPE_CHECKING:
    from proxyrunner.telemetry.runtime import Telemetry

T = TypeVar("T")

# Small timeouts: a slow Redis must never stall requests for long.
SOCKET_TIMEOUT: Final = 0.5

_REFUSED: Final = (AuthenticationError, AuthorizationError, AuthenticationWrongNumberOfArgsError)
_AUTH_FAILED: Final = "authentication failed"


@dataclass(frozen=True, slots=True)
class Keys:
    """Where one MCP server's sessions live in Redis, and the commands that write them."""

    prefix: str
    """``<key_prefix><name>:session:``; the session id follows."""
    channel: str
    """Invalidations: ``<key_prefix><name>:invalidate``."""
    replica: str
    """This process's tag on what it publishes, so that it ignores its own messages."""
    ttl: int
    """Seconds a session lives in Redis after its last refresh."""

    def key(self, session_id: str) -> str:
        return self.prefix + session_id

    def message(self, session_id: str) -> str:
        return f"{self.replica} {session_id}"

    def set_new(self, target: aioredis.Redis, session_id: str, record: SessionRecord) -> Any:
        """``SET NX EX`` on the client (a command to await) or a pipeline (queued)."""
        return target.set(self.key(session_id), record.to_json(), nx=True, ex=self.ttl)


class CredentialsRefused(StoreUnavailable):
    """Redis refused our credentials. Fatal at start (exit 3); mid-run, an outage that
    ends when the credentials are accepted again."""


class RedisLink:
    def __init__(
        self,
        rc: SessionRedisConfig,
        password: str | None,
        metrics: Metrics,
        log: structlog.stdlib.BoundLogger,
        telemetry: Telemetry | None = None,
    ) -> None:
        self.address = rc.address
        self._telemetry = telemetry
        self._span_attributes: dict[str, str | int] = {
            "db.system.name": "redis",
            "server.address": rc.host,
            "server.port": rc.port,
        }
        self._metrics = metrics
        self._log = log
        self._up = False
        self._last_error = "not connected yet"
        common: dict[str, Any] = {
            "host": rc.host,
            "port": rc.port,
            "db": rc.db,
            "username": rc.username,
            "password": password,
            "socket_connect_timeout": SOCKET_TIMEOUT,
            "retry": Retry(NoBackoff(), 0),  # never retry on the request path
            "health_check_interval": 0,  # every command counts against our budget
            "socket_keepalive": True,
        }
        if rc.tls:
            common["ssl"] = True
            common["ssl_ca_certs"] = rc.ca_file
            common["ssl_cert_reqs"] = ssl.CERT_REQUIRED
        self._redis = aioredis.Redis(socket_timeout=SOCKET_TIMEOUT, **common)
        # Pub/sub waits indefinitely for messages: no read timeout on that connection.
        self._subscriber = aioredis.Redis(socket_timeout=None, **common)

    # ------------------------------------------------------------------- state

    @property
    def up(self) -> bool:
        return self._up

    @property
    def last_error(self) -> str:
        """What failed last, in a few words (an exception class name, or
        "authentication failed"); never a message that could carry a secret."""
        return self._last_error

    def health(self) -> StoreHealth:
        # States only: /readyz answers anyone who reaches the pod, and the address is
        # in the config (and in the startup log) for the operator.
        if self._up:
            return StoreHealth(True, "redis reachable")
        if self._last_error == _AUTH_FAILED:
            return StoreHealth(False, f"redis refused our credentials ({_AUTH_FAILED})")
        return StoreHealth(False, f"redis unreachable ({self._last_error})")

    def mark_up(self) -> None:
        if not self._up:
            self._up = True
            self._log.info("Redis reachable")

    def _mark_down(self, error: str) -> None:
        self._last_error = error
        if not self._up:
            return
        self._up = False
        if error == _AUTH_FAILED:
            self._log.warning(
                "Redis refused our credentials; serving cached sessions and keeping new "
                "ones locally until it accepts them again",
                error=error,
            )
        else:
            self._log.warning("Redis unreachable; serving cached sessions", error=error)

    # ---------------------------------------------------------------- commands

    @contextlib.contextmanager
    def errors(self, kind: str) -> Iterator[None]:
        """Translate redis-py's exceptions raised in the block into the project's."""
        try:
            yield
        except _REFUSED as exc:
            self._metrics.redis_errors.labels(kind=kind).inc()
            self._mark_down(_AUTH_FAILED)
            raise CredentialsRefused(f"redis {kind} failed ({_AUTH_FAILED})") from exc
        except (RedisError, OSError) as exc:
            self._metrics.redis_errors.labels(kind=kind).inc()
            if not isinstance(exc, ResponseError):
                self._mark_down(exc.__class__.__name__)
            raise StoreUnavailable(f"redis {kind} failed ({exc.__class__.__name__})") from exc

    async def command(
        self, kind: str, awaitable: Awaitable[T], count: int | Mapping[str, int] = 1
    ) -> T:
        """Await one command, or one pipeline of ``count`` commands (a number of ``kind``,
        or a number per kind), counting them in ``redis_commands``."""
        for counted, n in count.items() if isinstance(count, Mapping) else [(kind, count)]:
            self._metrics.redis_commands.labels(kind=counted).inc(n)
        telemetry = self._telemetry
        if telemetry is None:
            with self.errors(kind):
                return await awaitable
        # Within a traced request, a span per round trip (none for background work).
        attributes = {**self._span_attributes, "db.operation.name": kind}
        with telemetry.child_span(f"redis {kind}", attributes), self.errors(kind):
            return await awaitable

    @property
    def client(self) -> aioredis.Redis:
        """For building commands only: await them through ``command``."""
        return self._redis

    def pipeline(self) -> Pipeline:
        """One round trip, no MULTI: results (errors included) come back per command."""
        return self._redis.pipeline(transaction=False)

    @contextlib.asynccontextmanager
    async def subscription(self, channel: str) -> AsyncIterator[AsyncIterator[bytes | str]]:
        """Subscribe to ``channel``, returning once the server confirmed it (so that
        whatever is published after reaches us); yields the messages' payloads. The
        iteration raises StoreUnavailable when the subscription breaks."""
        pubsub = self._subscriber.pubsub()
        try:
            await self.command("subscribe", pubsub.subscribe(channel))
            with self.errors("subscribe"):
                confirmation = None
                while confirmation is None or confirmation.get("type") != "subscribe":
                    confirmation = await pubsub.get_message(timeout=SOCKET_TIMEOUT * 2)
                    if confirmation is None:
                        raise StoreUnavailable("no subscription confirmation from Redis")
            async with contextlib.aclosing(self._messages(pubsub)) as messages:
                yield messages
        finally:
            with contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _messages(self, pubsub: PubSub) -> AsyncGenerator[bytes | str, None]:
        with self.errors("listen"):
            async for message in pubsub.listen():
                if message.get("type") == "message":
                    yield message["data"]

    def script(self, text: str) -> AsyncScript:
        return self._redis.register_script(text)

    async def forget_connections(self) -> None:
        """Drop every pooled connection, so that the next command connects (and
        authenticates) afresh. Called before each reconnect probe: after a password
        rotation, connections opened earlier may still be accepted while new ones are
        refused, and a probe on an old one would report Redis usable too soon."""
        with contextlib.suppress(RedisError, OSError):
            await self._redis.connection_pool.disconnect()

    async def close(self) -> None:
        with contextlib.suppress(RedisError, OSError):
            await self._redis.aclose()
        with contextlib.suppress(RedisError, OSError):
            await self._subscriber.aclose()
