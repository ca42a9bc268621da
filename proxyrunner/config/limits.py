"""The limits concern: what one client can make a replica hold (memory, connections,
streams) and how long a slow or vanished client may keep it.

Every bound here answers an abuse that was reproduced against a live proxy (issue 10):
padded initializes stored whole, sessions pushed out of a full store, half-sent headers
holding connections, abandoned streams. The defaults are far above what a well-behaved
client needs and low enough that a replica with the chart's memory limit survives.
"""

from __future__ import annotations

from dataclasses import dataclass

from proxyrunner.config.problems import Problems


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    max_stored_initialize: int = 64 * 1024
    """Largest ``initialize`` body kept in the session record, in bytes
    (``max_stored_initialize``; 64 KiB). A larger initialize still creates a working
    session, but one that cannot be re-initialized transparently: when its backend is
    gone or lost the session, the client gets 404 / -32001 and initializes again
    (counted in ``proxyrunner_initialize_not_stored_total``)."""
    max_pending_sessions: int = 10_000
    """New sessions kept only in this replica while Redis is down, waiting to be written
    (``max_pending_sessions``; 10 000). Past it, ``initialize`` gets 503 with
    ``Retry-After`` rather than growing memory (``proxyrunner_sessions_refused_total``).
    Deletes waiting for Redis are bounded by it too: past it the oldest is dropped
    (``proxyrunner_pending_deletes_dropped_total``) and its session ends by its TTL."""
    header_timeout: float = 10.0
    """A request's line and headers must arrive within this from their first byte
    (``header_timeout``; 10 s); the connection is closed otherwise (slowloris)."""
    body_timeout: float = 30.0
    """A request body must arrive within this (``body_timeout``; 30 s); 408 and the
    connection closed otherwise. A body read whole is timed by the body stage, one
    streamed through to the backend (large, in a session) by the forwarder."""
    keepalive_timeout: float = 75.0
    """An idle keep-alive connection (or one that sends nothing) is closed after this
    (``keepalive_timeout``; 75 s, above the usual load balancer idle timeout of 60 s, so
    that the balancer, not the proxy, closes first)."""
    max_connections: int = 10_000
    """Client connections one replica holds at once (``max_connections``; 10 000);
    a connection past it gets 503 and is closed."""
    max_streams_per_session: int = 4
    """Open listen streams (``GET /mcp``) one session may hold (``max_streams_per_session``;
    4), 429 with a JSON-RPC error beyond."""
    max_streams: int = 5_000
    """Open listen streams (``GET /mcp``, legacy ``GET /sse``) one replica holds
    (``max_streams``; 5 000), 503 with ``Retry-After`` beyond."""
    stream_keepalive: float = 15.0
    """An SSE answer or listen stream quiet for this long gets a ``: keep-alive`` comment
    (``stream_keepalive``; 15 s): load balancers keep it open, and a client that went
    away is noticed (and the backend stream closed) within one interval."""

    def __post_init__(self) -> None:
        p = Problems()
        for name in (
            "max_stored_initialize",
            "max_pending_sessions",
            "max_connections",
            "max_streams_per_session",
            "max_streams",
        ):
            value = getattr(self, name)
            if p.at_least(name, value, 0) and not value:
                p.add(name, "must be > 0")
        for name in ("header_timeout", "body_timeout", "keepalive_timeout", "stream_keepalive"):
            p.positive(name, getattr(self, name))
        p.raise_if_any()
