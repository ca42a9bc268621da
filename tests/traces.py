"""Helpers for the OpenTelemetry end-to-end tests: a client's trace context, the proxy's
``telemetry_config`` pointed at the trace backend, and the spans a call through the
proxy must leave (tests/trace_backend.py reads them back from Jaeger)."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

from tests.trace_backend import Span, TraceBackend

PROXY_SERVICE = "proxyrunner-under-test"
"""The service name the proxies of these tests export their spans under."""


def new_context() -> tuple[str, str, str]:
    """A fresh sampled W3C context: trace id, span id and the ``traceparent``."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return trace_id, span_id, f"00-{trace_id}-{span_id}-01"


def telemetry(trace_backend: TraceBackend, **extra: Any) -> dict[str, Any]:
    """A ``telemetry_config`` with tracing and metrics on, at 0% sampling: only a
    client's sampled context is traced."""
    return {
        "endpoint": trace_backend.otlp_http_endpoint,
        "serviceName": PROXY_SERVICE,
        "tracingEnabled": True,
        "metricsEnabled": True,
        "samplingRate": "0",
        "insecure": True,
        "metricExportInterval": "1s",
        **extra,
    }


def chain(spans: list[Span], parent: str, tool: str) -> tuple[Span, Span, Span]:
    """The proxy's server span (child of ``parent``), its client span, and the backend's
    span under that: the three links a trace through the proxy must have."""
    name = f"tools/call {tool}"
    server = next(
        s for s in spans if s.service == PROXY_SERVICE and s.kind == "server" and s.name == name
    )
    assert server.parent_span_id == parent
    client = next(s for s in spans if s.kind == "client" and s.parent_span_id == server.span_id)
    backend = next(
        s for s in spans if s.kind == "server" and s.service != PROXY_SERVICE and s.name == name
    )
    return server, client, backend


def has_backend_span(name: str) -> Callable[[list[Span]], bool]:
    """Both sides of a call arrived: the backend's span and the proxy's (the proxy
    exports in batches, so its spans may come a moment after the backend's)."""

    def holds(spans: list[Span]) -> bool:
        ours = [s for s in spans if s.service == PROXY_SERVICE and s.name == name]
        theirs = [s for s in spans if s.service != PROXY_SERVICE and s.name == name]
        return bool(ours) and bool(theirs) and any(s.kind == "client" for s in spans)

    return holds


WHOAMI = has_backend_span("tools/call whoami_trace")
