"""Fixtures for the OpenTelemetry tests: a real trace backend and traced MCP servers.

- ``trace_backend``: one ``TraceBackend`` (Jaeger v2, tests/trace_backend.py) for the
  whole session, started on free loopback ports; skipped when scripts/trace-test-env
  never built it, failed instead when ``PROXYRUNNER_REQUIRE_KUBE=1`` (scripts/test sets
  it whenever Go is present, so there the tier must run). A test that kills it should
  ``restart()`` it before it ends.
- ``start_traced_backend(service_name="traced-backend", transport="streamable-http")``:
  the traced server (tests/traced_server.py; ``transport="sse"``: the legacy HTTP+SSE
  one) exporting to ``trace_backend``, ready; killed at teardown.

Tests use them once conftest.py imports them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.trace_backend import TraceBackend, find_jaeger
from tests.traced_server import TracedBackend

StartTracedBackend = Callable[..., TracedBackend]


@pytest.fixture(scope="session")
def trace_backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TraceBackend]:
    binary = find_jaeger()
    if binary is None:
        message = "jaeger not built: run scripts/trace-test-env"
        if os.environ.get("PROXYRUNNER_REQUIRE_KUBE") == "1":
            pytest.fail(message + " (PROXYRUNNER_REQUIRE_KUBE=1)")
        pytest.skip(message)
    backend = TraceBackend(binary, tmp_path_factory.mktemp("jaeger")).start()
    yield backend
    backend.stop()


@pytest.fixture
def start_traced_backend(
    tmp_path: Path, trace_backend: TraceBackend
) -> Iterator[StartTracedBackend]:
    started: list[TracedBackend] = []

    def start(
        service_name: str = "traced-backend", transport: str = "streamable-http"
    ) -> TracedBackend:
        backend = TracedBackend(tmp_path, trace_backend.otlp_http_endpoint, service_name, transport)
        started.append(backend)
        return backend.wait_ready()

    yield start
    for backend in started:
        backend.kill()
