"""Prometheus metrics of one proxy process.

Each Metrics owns its own CollectorRegistry (no global registry), so several proxies can
live in one test process and a metric can never be registered twice.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest

# Proxy overhead is sub-millisecond; tool calls can take minutes.
_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "proxyrunner_requests",
            "Proxied MCP HTTP requests by JSON-RPC method and HTTP status.",
            ["method", "status"],
            registry=r,
        )
        self.request_duration = Histogram(
            "proxyrunner_request_duration_seconds",
            "Time from receiving a request to the backend's response headers, by method.",
            ["method"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.inflight = Gauge(
            "proxyrunner_inflight_requests", "Requests being served now.", registry=r
        )
        self.streams_open = Gauge(
            "proxyrunner_streams_open", "Open server-sent-event streams to clients.", registry=r
        )
        self.backend_errors = Counter(
            "proxyrunner_backend_errors",
            "Requests that failed to reach a backend, by kind (refused, timeout, reset).",
            ["kind"],
            registry=r,
        )
        self.backends_ready = Gauge(
            "proxyrunner_backends_ready", "Backends currently ready to serve.", registry=r
        )
        self.sessions_live = Gauge(
            "proxyrunner_sessions_live", "Sessions held in this process's store.", registry=r
        )
        self.sessions_created = Counter(
            "proxyrunner_sessions_created", "Sessions created by this process.", registry=r
        )
        self.sessions_ended = Counter(
            "proxyrunner_sessions_ended",
            "Sessions removed from this process's store, by reason "
            "(deleted, expired, evicted, invalidated).",
            ["reason"],
            registry=r,
        )
        self.sessions_rebound = Counter(
            "proxyrunner_sessions_rebound",
            "Sessions re-initialized on another backend after theirs went away.",
            registry=r,
        )
        self.store_lookups = Counter(
            "proxyrunner_session_cache_lookups",
            "Session lookups in the local cache, by result (hit, miss).",
            ["result"],
            registry=r,
        )
        self.redis_commands = Counter(
            "proxyrunner_redis_commands",
            "Redis commands sent, by kind (get, set, touch, delete, publish, ...).",
            ["kind"],
            registry=r,
        )
        self.redis_errors = Counter(
            "proxyrunner_redis_errors",
            "Redis commands that failed, by kind.",
            ["kind"],
            registry=r,
        )
        self.invalidations = Counter(
            "proxyrunner_session_invalidations_received",
            "Session invalidation messages received from other replicas.",
            registry=r,
        )
        self.apply_skipped = Counter(
            "proxyrunner_statefulset_apply_skipped",
            "Backend applies skipped because a newer MCPServer generation was already applied.",
            registry=r,
        )
        self.apply_total = Counter(
            "proxyrunner_statefulset_apply",
            "Backend StatefulSet applies, by result (applied, skipped, conflict, error).",
            ["result"],
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
