"""Helpers for the session-store tests: records, a settable clock, tiered stores over a
real redis-server (closed by their owner), and waits on conditions with a deadline."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from proxyrunner.config import RunConfig, Secrets, parse_config
from proxyrunner.logging import get_logger
from proxyrunner.metrics import Metrics
from proxyrunner.sessions.record import SessionRecord, new_session_id
from proxyrunner.sessions.tiered import TieredSessionStore
from tests.redis_server import RedisServer

KEY_PREFIX = "test:demo:session:"


class FakeClock:
    """A clock the test moves by hand (``store(clock=...)``)."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def record(backend: str = "b0", session_id: str | None = None) -> SessionRecord:
    now = time.time()
    return SessionRecord(
        session_id or new_session_id(),
        backend,
        "backend-sid",
        "2025-06-18",
        "streamable-http",
        now,
        now,
        "{}",
    )


def run_config(redis: RedisServer | None, **overrides: object) -> RunConfig:
    """A RunConfig from ToolHive JSON fields; with ``redis``, sessions go there (under
    KEY_PREFIX) unless ``session_redis`` is among the overrides."""
    doc: dict[str, object] = {"name": "demo", "remote_url": "http://127.0.0.1:1/mcp"}
    if redis is not None:
        doc["session_redis"] = {"address": redis.address, "key_prefix": "test"}
    return parse_config({**doc, **overrides})[0]


async def eventually_async(
    check: Callable[[], Awaitable[bool] | bool],
    seconds: float,
    what: str = "condition",
) -> None:
    """Poll ``check`` (sync or async) until it holds; fail naming ``what`` at the deadline."""
    deadline = time.monotonic() + seconds
    while True:
        outcome = check()
        if not isinstance(outcome, bool):
            outcome = await outcome
        if outcome:
            return
        assert time.monotonic() < deadline, f"timed out after {seconds}s waiting for {what}"
        await asyncio.sleep(0.01)


class Replicas:
    """Tiered stores ("replicas") against one redis-server, all closed on exit."""

    def __init__(self, redis: RedisServer) -> None:
        self.redis = redis
        self._stores: list[TieredSessionStore] = []

    async def make(
        self,
        config: Mapping[str, object] | None = None,
        *,
        password: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        flush_interval: float | None = None,
        start: bool = True,
        metrics: Metrics | None = None,
    ) -> TieredSessionStore:
        """A tiered store with these RunConfig fields (ToolHive JSON names)."""
        extra: dict[str, Any] = {} if flush_interval is None else {"flush_interval": flush_interval}
        store = TieredSessionStore(
            run_config(self.redis, **(config or {})),
            Secrets(redis_password=self.redis.password if password is None else password),
            metrics or Metrics(),
            get_logger(),
            clock=clock,
            **extra,
        )
        self._stores.append(store)
        if start:
            await store.start()
        return store

    async def __aenter__(self) -> Replicas:
        return self

    async def __aexit__(self, *exc: object) -> None:
        for store in self._stores:
            await store.close()


def redis_errors(metrics: Metrics) -> float:
    """Redis commands that failed so far, all kinds together."""
    return sum(
        sample.value
        for family in metrics.redis_errors.collect()
        for sample in family.samples
        if sample.name.endswith("_total")
    )
