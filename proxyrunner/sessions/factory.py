"""Build the session store the RunConfig asks for."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import structlog

from proxyrunner.config import RunConfig, Secrets
from proxyrunner.metrics import Metrics
from proxyrunner.sessions.memory import MemorySessionStore
from proxyrunner.sessions.store import SessionStore

if TYPE_CHECKING:
    from proxyrunner.telemetry.runtime import Telemetry


def build_store(
    config: RunConfig,
    secrets: Secrets,
    metrics: Metrics,
    log: structlog.stdlib.BoundLogger,
    busy: Callable[[str], bool] = lambda session_id: False,
    telemetry: Telemetry | None = None,
) -> SessionStore:
    """``busy`` says whether a session has a request or stream in flight (the memory
    store never evicts such a one)."""
    if config.sessions.redis is None:
        if (config.backend.replicas or 1) > 1 or len(config.backend.urls) > 1:
            log.warning(
                "sessions are kept in memory: fine for one proxy replica, "
                "but other replicas will not know this one's sessions (set session_redis)"
            )
        return MemorySessionStore(
            config.sessions.cache_size, config.sessions.ttl, metrics, busy=busy
        )
    from proxyrunner.sessions.tiered import TieredSessionStore

    return TieredSessionStore(config, secrets, metrics, log, telemetry=telemetry)
