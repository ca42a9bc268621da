"""Prometheus metrics of one proxy process.

Each Metrics owns its own CollectorRegistry (no global registry), so several proxies can
live in one test process and a metric can never be registered twice.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

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


class _IntChild:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def inc(self, amount: int = 1) -> None:
        self.value += amount


_Child = TypeVar("_Child")


class _HotFamily(Collector, Generic[_Child]):
    """A labelled metric for the hot path: ``labels(...)`` returns a plain child object
    (no lock, no float boxing) whose values the registry reads at scrape time. Safe because
    every update happens on the event loop thread."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: tuple[str, ...],
        registry: CollectorRegistry,
    ) -> None:
        self._name = name
        self._documentation = documentation
        self._labelnames = labelnames
        self._children: dict[tuple[str, ...], _Child] = {}
        registry.register(self)

    def labels(self, *values: str) -> _Child:
        """The child for these label values, in ``labelnames`` order (positional only:
        keyword arguments would cost a dict per call on the hot path)."""
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._new_child()
        return child

    def _new_child(self) -> _Child:
        raise NotImplementedError

    def _empty(self) -> Metric:
        raise NotImplementedError

    def _add(self, family: Metric, key: tuple[str, ...], child: _Child) -> None:
        raise NotImplementedError

    def collect(self) -> Iterator[Metric]:
        family = self._empty()
        for key, child in self._children.items():
            self._add(family, key, child)
        yield family

    def describe(self) -> Iterator[Metric]:
        yield self._empty()


class HotCounter(_HotFamily[_IntChild]):
    def _new_child(self) -> _IntChild:
        return _IntChild()

    def _empty(self) -> CounterMetricFamily:
        return CounterMetricFamily(self._name, self._documentation, labels=self._labelnames)

    def _add(self, family: Metric, key: tuple[str, ...], child: _IntChild) -> None:
        assert isinstance(family, CounterMetricFamily)
        family.add_metric(list(key), child.value)


class _HistogramChild:
    __slots__ = ("buckets", "counts", "sum")

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value


class HotHistogram(_HotFamily[_HistogramChild]):
    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: tuple[str, ...],
        buckets: tuple[float, ...],
        registry: CollectorRegistry,
    ) -> None:
        self._buckets = tuple(sorted(buckets))
        super().__init__(name, documentation, labelnames, registry)

    def _new_child(self) -> _HistogramChild:
        return _HistogramChild(self._buckets)

    def _empty(self) -> HistogramMetricFamily:
        return HistogramMetricFamily(self._name, self._documentation, labels=self._labelnames)

    def _add(self, family: Metric, key: tuple[str, ...], child: _HistogramChild) -> None:
        assert isinstance(family, HistogramMetricFamily)
        cumulative, running = [], 0
        for bound, count in zip((*self._buckets, float("inf")), child.counts, strict=True):
            running += count
            cumulative.append(("+Inf" if bound == float("inf") else repr(bound), running))
        family.add_metric(list(key), cumulative, child.sum)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)

        def counter(name: str, doc: str, *labels: str) -> Counter:
            return Counter(f"proxyrunner_{name}", doc, labels, registry=r)

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(f"proxyrunner_{name}", doc, registry=r)

        def hot(name: str, doc: str, *labels: str) -> HotCounter:
            return HotCounter(f"proxyrunner_{name}", doc, labels, registry=r)

        self.requests = hot(
            "requests", "Proxied MCP HTTP requests by JSON-RPC method and HTTP status.",
            "method", "status",
        )  # fmt: skip
        self.request_duration = HotHistogram(
            "proxyrunner_request_duration_seconds",
            "Time from receiving a request to the end of its answer, by method.",
            ("method",),
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.inflight = gauge("inflight_requests", "Requests being served now.")
        self.streams_open = gauge("streams_open", "Open client listen streams (SSE).")
        self.backend_errors = counter(
            "backend_errors",
            "Requests that failed to reach a backend, by kind (refused, timeout, reset).",
            "kind",
        )
        self.backends_ready = gauge("backends_ready", "Backends currently ready to serve.")
        self.stdio_children = gauge(
            "stdio_children",
            "stdio server processes running for one session each (stdio_isolation: per-session).",
        )
        self.stdio_sessions_refused = counter(
            "stdio_sessions_refused",
            "initialize requests refused with 503 because stdio_max_sessions processes ran.",
        )
        self.sessions_live = gauge("sessions_live", "Sessions held in this process's store.")
        self.sessions_created = counter("sessions_created", "Sessions created by this process.")
        self.sessions_ended = counter(
            "sessions_ended",
            "Sessions removed from this process's store, by reason "
            "(deleted, expired, evicted, invalidated).",
            "reason",
        )
        self.sessions_rebound = counter(
            "sessions_rebound", "Sessions re-initialized on another backend after theirs went away."
        )
        self.store_lookups = hot(
            "session_cache_lookups",
            "Session lookups in the local cache, by result: hit, miss, malformed (an id"
            " that cannot be one of ours, answered without asking Redis).",
            "result",
        )
        self.redis_commands = counter(
            "redis_commands",
            "Redis commands sent, by kind (get, set, touch, delete, publish, ...).",
            "kind",
        )
        self.redis_errors = counter("redis_errors", "Redis commands that failed, by kind.", "kind")
        self.invalidations = counter(
            "session_invalidations_received",
            "Session invalidation messages received from other replicas.",
        )
        self.auth_refusals = counter(
            "auth_refusals",
            "Requests refused by the identity and authorization stages, by reason "
            "(missing_token, invalid_token, insufficient_scope, idp_unavailable, "
            "session_principal_mismatch, policy_denied).",
            "reason",
        )
        self.idp_requests = counter(
            "idp_requests",
            "Requests to the identity provider, by kind (jwks, discovery, introspection, "
            "token); a request with a warm token cache makes none.",
            "kind",
        )
        self.apply_total = counter(
            "statefulset_apply",
            "Backend StatefulSet applies, by result (applied, skipped, conflict, error).",
            "result",
        )
        self.stray_pods = counter(
            "stray_pods_ignored",
            "Pods that carry the backend's labels but are not the applied StatefulSet's own "
            "(wrong owner UID or name), ignored as backends and attach targets; counted once "
            "per pod.",
        )
        self.initialize_not_stored = counter(
            "initialize_not_stored",
            "Sessions whose initialize was larger than max_stored_initialize: they work, "
            "but cannot be re-initialized transparently on another backend.",
        )
        self.sessions_refused = counter(
            "sessions_refused",
            "New sessions refused with 503 to bound memory, by reason (pending_full: "
            "Redis down and max_pending_sessions reached; store_full: every stored "
            "session has a request or stream in flight).",
            "reason",
        )
        self.pending_deletes_dropped = counter(
            "pending_deletes_dropped",
            "Session deletes dropped unsent while Redis was down, past max_pending_sessions "
            "waiting (the oldest first); each session lives on in Redis until its TTL.",
        )
        self.connections_open = gauge("client_connections", "Open client connections.")
        self.connections_closed = counter(
            "client_connections_closed",
            "Client connections the proxy closed to bound what slow or excess clients "
            "hold, by reason (max_connections, header_timeout, body_timeout).",
            "reason",
        )
        self.streams_refused = counter(
            "streams_refused",
            "Listen streams refused, by limit (session: max_streams_per_session, "
            "replica: max_streams).",
            "limit",
        )
        # Incremented from the span exporter's thread (prometheus_client is thread-safe).
        self.spans_dropped = counter(
            "telemetry_spans_dropped",
            "Finished spans not exported: the queue was full (collector slow or down), "
            "the collector refused or did not answer a batch, or the process stopped.",
        )
        self.telemetry_export_failures = counter(
            "telemetry_export_failures",
            "Span batches the OTLP collector did not accept (after the exporter's retries).",
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
