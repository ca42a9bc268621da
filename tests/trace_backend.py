"""A real trace backend for the OpenTelemetry tests: Jaeger v2, built by
scripts/trace-test-env from the Go module proxy.

``TraceBackend`` runs it on free loopback ports with memory storage: OTLP gRPC and HTTP
receivers, the query HTTP API (traces read back through its v1-compatible
``/api/traces/<id>``), and a metrics pipeline into the debug exporter, whose detailed
output in the log file names every metric received. Nothing listens on a fixed port (the
collector's own telemetry is off; no health check, pprof, zpages or expvar). The process
carries the marker of tests/procs.py, so the suite's "no processes left behind" check
covers it; ``kill`` SIGKILLs it (a collector dying) and ``restart`` brings it back on the
same ports, empty.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.procs import Proc, free_port, http_status, wait_until

REPO_ROOT = Path(__file__).resolve().parent.parent
TRACE_TEST_ENV = REPO_ROOT / "scripts" / "trace-test-env"
# The debug exporter's detailed output: "Descriptor:" then "     -> Name: <metric>".
_METRIC_NAME = re.compile(r"^\s*-> Name: (\S+)\s*$", re.M)


def find_jaeger() -> str | None:
    """The Jaeger binary: ``$JAEGER`` if set, else what ``trace-test-env --print-env``
    reports (None when it was never built)."""
    if path := os.environ.get("JAEGER"):
        return path if os.access(path, os.X_OK) else None
    try:
        out = subprocess.run(
            [str(TRACE_TEST_ENV), "--print-env"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in out.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key == "JAEGER" and os.access(value, os.X_OK):
            return value
    return None


@dataclass(frozen=True)
class Span:
    """One span as the backend stored it; ids are lowercase hex, kind lowercase
    (``server``, ``client``, ``internal``, ``producer``, ``consumer``)."""

    trace_id: str
    span_id: str
    parent_span_id: str | None
    name: str
    service: str
    kind: str
    attributes: dict[str, Any] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    """Each ``{"name": ..., "attributes": {...}}``."""


def _hex(value: str, width: int) -> str:
    return value.lower().rjust(width, "0")


def _tags(tags: list[dict[str, Any]]) -> dict[str, Any]:
    return {tag["key"]: tag.get("value") for tag in tags}


def parse_trace(doc: dict[str, Any]) -> list[Span]:
    """The spans of a v1 query API ``/api/traces/<id>`` answer."""
    spans = []
    for trace in doc.get("data") or []:
        processes = trace.get("processes") or {}
        for raw in trace.get("spans") or []:
            attributes = _tags(raw.get("tags") or [])
            kind = str(attributes.pop("span.kind", "internal"))
            parent = next(
                (
                    ref["spanID"]
                    for ref in raw.get("references") or []
                    if ref.get("refType") == "CHILD_OF"
                ),
                None,
            )
            events = []
            for log in raw.get("logs") or []:
                fields = _tags(log.get("fields") or [])
                events.append({"name": fields.pop("event", ""), "attributes": fields})
            process = processes.get(raw.get("processID"), {})
            spans.append(
                Span(
                    trace_id=_hex(raw["traceID"], 32),
                    span_id=_hex(raw["spanID"], 16),
                    parent_span_id=_hex(parent, 16) if parent else None,
                    name=raw.get("operationName", ""),
                    service=process.get("serviceName", ""),
                    kind=kind,
                    attributes=attributes,
                    events=events,
                )
            )
    return spans


class TraceBackend:
    """Jaeger v2 on free loopback ports, its config and log under ``work``."""

    def __init__(self, binary: str, work: Path) -> None:
        self.binary = binary
        self.work = work
        work.mkdir(parents=True, exist_ok=True)
        self.otlp_http_port = free_port()
        self.otlp_grpc_port = free_port()
        self.query_port = free_port()
        self.query_grpc_port = free_port()
        self.config_path = work / "jaeger.yaml"
        self.config_path.write_text(self.config_yaml())
        self.log_path = work / "jaeger.log"
        self.proc: Proc | None = None

    @property
    def otlp_http_endpoint(self) -> str:
        """Base URL of the OTLP/HTTP receiver (``/v1/traces``, ``/v1/metrics`` under it)."""
        return f"http://127.0.0.1:{self.otlp_http_port}"

    @property
    def otlp_grpc_endpoint(self) -> str:
        return f"127.0.0.1:{self.otlp_grpc_port}"

    @property
    def query_url(self) -> str:
        return f"http://127.0.0.1:{self.query_port}"

    def config_yaml(self) -> str:
        config = {
            "service": {
                "extensions": ["jaeger_storage", "jaeger_query"],
                "pipelines": {
                    "traces": {
                        "receivers": ["otlp"],
                        "processors": [],
                        "exporters": ["jaeger_storage_exporter"],
                    },
                    "metrics": {
                        "receivers": ["otlp"],
                        "processors": [],
                        "exporters": ["debug"],
                    },
                },
                # The collector's own metrics would listen on 8888: off, like its traces.
                "telemetry": {
                    "metrics": {"level": "none"},
                    "traces": {"level": "none"},
                    "logs": {"level": "info"},
                },
            },
            "extensions": {
                "jaeger_storage": {"backends": {"memstore": {"memory": {"max_traces": 100000}}}},
                "jaeger_query": {
                    "storage": {"traces": "memstore"},
                    # On by default: the query service would trace itself to :4317.
                    "enable_tracing": False,
                    "http": {"endpoint": f"127.0.0.1:{self.query_port}"},
                    "grpc": {"endpoint": f"127.0.0.1:{self.query_grpc_port}"},
                },
            },
            "receivers": {
                "otlp": {
                    "protocols": {
                        "grpc": {"endpoint": self.otlp_grpc_endpoint},
                        "http": {"endpoint": f"127.0.0.1:{self.otlp_http_port}"},
                    }
                }
            },
            "exporters": {
                "jaeger_storage_exporter": {"trace_storage": "memstore"},
                # Straight to stdout (the log file), not through the collector's logger.
                "debug": {"verbosity": "detailed", "use_internal_logger": False},
            },
        }
        # JSON is YAML: no dependency on a YAML writer.
        return json.dumps(config, indent=2) + "\n"

    def start(self, timeout: float = 60.0) -> TraceBackend:
        self.proc = Proc(
            [self.binary, "--config", str(self.config_path)],
            self.log_path,
            {},
        )
        self.wait_ready(timeout)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.alive()

    def wait_ready(self, timeout: float = 60.0) -> None:
        def ready() -> bool:
            if not self.alive():
                raise AssertionError(f"jaeger exited:\n{self.output_tail()}")
            return (
                http_status(f"{self.query_url}/api/services") == 200
                and http_status(self.otlp_http_endpoint) is not None
                and _listening(self.otlp_grpc_port)
            )

        wait_until(ready, timeout, "jaeger to listen", interval=0.05)

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def output_tail(self, lines: int = 40) -> str:
        return "\n".join(self.output().splitlines()[-lines:])

    def kill(self) -> None:
        """SIGKILL: the collector dies mid-flight, its stored spans with it."""
        if self.proc is not None:
            self.proc.kill()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()

    def restart(self, timeout: float = 60.0) -> TraceBackend:
        """Start again on the same ports (after ``kill`` or ``stop``; stops it first if
        it is still running). The memory storage starts empty."""
        if self.alive():
            self.stop()
        return self.start(timeout)

    def traces_for(self, trace_id: str) -> list[Span]:
        """The spans stored for ``trace_id`` (hex), [] when none are."""
        url = f"{self.query_url}/api/traces/{trace_id.lower()}"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback
                doc = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return []
            raise
        return parse_trace(doc)

    async def wait_for_spans(
        self,
        trace_id: str,
        predicate: Callable[[list[Span]], bool] = bool,
        timeout: float = 10.0,  # noqa: ASYNC109 - a polling deadline, not a cancel scope
    ) -> list[Span]:
        """Poll ``traces_for`` until ``predicate(spans)`` holds (by default: any span);
        fail at the deadline with what was stored."""
        deadline = time.monotonic() + timeout
        spans: list[Span] = []
        while True:
            spans = await asyncio.to_thread(self.traces_for, trace_id)
            if predicate(spans):
                return spans
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        raise AssertionError(
            f"timed out after {timeout}s waiting for spans of trace {trace_id}; stored: "
            + repr([(s.name, s.service, s.kind, s.span_id, s.parent_span_id) for s in spans])
        )

    def metric_names_seen(self) -> set[str]:
        """The names of every metric the OTLP receivers got (since the first start)."""
        return set(_METRIC_NAME.findall(self.output()))

    async def wait_for_metric(
        self,
        name: str,
        timeout: float = 10.0,  # noqa: ASYNC109 - a polling deadline, not a cancel scope
    ) -> None:
        deadline = time.monotonic() + timeout
        while name not in self.metric_names_seen():
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {timeout}s waiting for metric {name}; seen: "
                    f"{sorted(self.metric_names_seen())}"
                )
            await asyncio.sleep(0.05)


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False
