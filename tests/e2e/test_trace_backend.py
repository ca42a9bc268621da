"""The tracing test infrastructure itself: Jaeger stores what OTLP sends it, and the
traced MCP servers parent their SERVER spans on the W3C context they receive, over HTTP
headers and over stdio ``_meta``."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
from collections.abc import Callable

from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanKind

from tests.helpers import tool_text
from tests.procs import MARKER, MARKER_ENV
from tests.trace_backend import Span, TraceBackend
from tests.trace_fixtures import StartTracedBackend
from tests.traced_server import stdio_command


def new_context() -> tuple[str, str, str]:
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return trace_id, span_id, f"00-{trace_id}-{span_id}-01"


def server_child_of(parent: str, name: str) -> Callable[[list[Span]], bool]:
    def holds(spans: list[Span]) -> bool:
        return any(
            s.kind == "server" and s.parent_span_id == parent and s.name == name for s in spans
        )

    return holds


async def test_a_span_exported_over_otlp_http_is_found_by_its_trace_id(
    trace_backend: TraceBackend,
) -> None:
    provider = TracerProvider(resource=Resource.create({"service.name": "sdk-probe"}))
    exporter = OTLPSpanExporter(endpoint=f"{trace_backend.otlp_http_endpoint}/v1/traces")
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("probe")
    with (
        tracer.start_as_current_span("outer", kind=SpanKind.SERVER, attributes={"n": 7}) as outer,
        tracer.start_as_current_span("inner") as inner,
    ):
        inner.add_event("checkpoint", {"step": "one"})
    provider.shutdown()
    trace_id = format(outer.get_span_context().trace_id, "032x")
    outer_id = format(outer.get_span_context().span_id, "016x")

    spans = await trace_backend.wait_for_spans(trace_id, lambda s: len(s) == 2)
    by_name = {s.name: s for s in spans}
    assert by_name["outer"].kind == "server"
    assert by_name["outer"].service == "sdk-probe"
    assert by_name["outer"].attributes["n"] == 7
    assert by_name["outer"].parent_span_id is None
    assert by_name["inner"].parent_span_id == outer_id
    assert by_name["inner"].events == [{"name": "checkpoint", "attributes": {"step": "one"}}]


async def test_the_http_traced_server_parents_its_span_on_the_traceparent_header(
    trace_backend: TraceBackend, start_traced_backend: StartTracedBackend
) -> None:
    backend = start_traced_backend("traced-http")
    trace_id, parent, traceparent = new_context()
    http = create_mcp_http_client(headers={"traceparent": traceparent, "baggage": "tenant=t1"})
    async with http, Client(streamable_http_client(backend.url, http_client=http)) as client:
        seen = json.loads(tool_text(await client.call_tool("whoami_trace", {})))
    assert seen["traceparent"] == traceparent
    assert seen["baggage"] == "tenant=t1"

    spans = await trace_backend.wait_for_spans(
        trace_id, server_child_of(parent, "tools/call whoami_trace")
    )
    call = next(s for s in spans if s.name == "tools/call whoami_trace")
    assert call.service == "traced-http"
    assert call.attributes["gen_ai.tool.name"] == "whoami_trace"


async def test_the_stdio_traced_server_parents_its_span_on_meta_traceparent(
    trace_backend: TraceBackend,
) -> None:
    trace_id, parent, traceparent = new_context()
    proc = await asyncio.create_subprocess_exec(
        *stdio_command(trace_backend.otlp_http_endpoint, "traced-stdio"),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, MARKER_ENV: MARKER},
    )
    assert proc.stdin is not None
    assert proc.stdout is not None

    async def rpc(message: dict[str, object]) -> None:
        assert proc.stdin is not None
        proc.stdin.write(json.dumps(message).encode() + b"\n")
        await proc.stdin.drain()

    async def answer(request_id: int) -> dict[str, object]:
        assert proc.stdout is not None
        while True:
            doc = json.loads(await asyncio.wait_for(proc.stdout.readline(), 20))
            if doc.get("id") == request_id and "method" not in doc:
                return dict(doc)

    try:
        await rpc(
            {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "initialize",
                "params": {
                    "protocolVersion": "2025-06-18",
                    "capabilities": {},
                    "clientInfo": {"name": "test", "version": "0"},
                },
            }
        )
        await answer(1)
        await rpc({"jsonrpc": "2.0", "method": "notifications/initialized"})
        await rpc(
            {
                "jsonrpc": "2.0",
                "id": 2,
                "method": "tools/call",
                "params": {
                    "name": "whoami_trace",
                    "arguments": {},
                    "_meta": {"traceparent": traceparent, "baggage": "tenant=t2"},
                },
            }
        )
        result = await answer(2)
    finally:
        proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, "the stdio server did not exit on its stdin's EOF"
    seen = json.loads(result["result"]["content"][0]["text"])  # type: ignore[index]
    assert seen["traceparent"] == traceparent
    assert seen["baggage"] == "tenant=t2"

    spans = await trace_backend.wait_for_spans(
        trace_id, server_child_of(parent, "tools/call whoami_trace")
    )
    assert {s.service for s in spans} == {"traced-stdio"}


async def test_the_metrics_pipeline_sees_a_metric_exported_over_otlp_http(
    trace_backend: TraceBackend,
) -> None:
    name = f"probe.requests.{secrets.token_hex(4)}"
    exporter = OTLPMetricExporter(endpoint=f"{trace_backend.otlp_http_endpoint}/v1/metrics")
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=60_000)
    provider = MeterProvider(
        resource=Resource.create({"service.name": "sdk-probe"}), metric_readers=[reader]
    )
    provider.get_meter("probe").create_counter(name).add(3)
    provider.force_flush()
    provider.shutdown()
    await trace_backend.wait_for_metric(name)


async def test_a_killed_backend_restarts_on_the_same_ports_empty(
    trace_backend: TraceBackend,
) -> None:
    endpoint = trace_backend.otlp_http_endpoint
    trace_backend.kill()
    assert not trace_backend.alive()
    await asyncio.to_thread(trace_backend.restart)
    assert trace_backend.otlp_http_endpoint == endpoint
    assert trace_backend.traces_for(secrets.token_hex(16)) == []
