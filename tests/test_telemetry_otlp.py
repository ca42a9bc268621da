"""The proxy's own OTLP encoding, read back with the official generated classes
(``opentelemetry-proto``): what a collector decodes is what the proxy recorded."""

from __future__ import annotations

import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan
from opentelemetry.proto.trace.v1.trace_pb2 import Status

from proxyrunner.telemetry import histograms, otlp, spans
from proxyrunner.telemetry.spans import Span

CLIENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
CLIENT_SPAN = "b7ad6b7169203331"


def _value(value: AnyValue) -> object:
    return getattr(value, value.WhichOneof("value"))


def _attributes(pairs: list[KeyValue]) -> dict[str, object]:
    return {pair.key: _value(pair.value) for pair in pairs}


def _decode_spans(batch: list[Span]) -> tuple[ExportTraceServiceRequest, list[ProtoSpan]]:
    encoded = otlp.trace_request(
        otlp.resource({"service.name": "bench", "service.instance.id": "pod-0"}),
        otlp.scope("proxyrunner", "1.2.3"),
        [otlp.span_field(item) for item in batch],
    )
    request = ExportTraceServiceRequest.FromString(encoded)
    (resource_spans,) = request.resource_spans
    (scope_spans,) = resource_spans.scope_spans
    return request, list(scope_spans.spans)


def _traced_call() -> tuple[Span, Span]:
    ended: list[Span] = []
    server = spans.root(
        ended.append,
        "tools/call echo",
        spans.SERVER,
        {"mcp.method.name": "tools/call", "gen_ai.tool.name": "echo", "server.port": 8080},
        {
            "traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01",
            "tracestate": "vendor=1",
            "baggage": "tenant=a",
        },
    )
    client = server.child("tools/call echo", spans.CLIENT, {"mcp.backend.name": "local-0"})
    client.event("mcp.session.reinitialize", {"mcp.backend.name": "local-0"})
    client.fail("BackendUnavailable")
    client.end()
    server.end()
    server.end()  # a second end sends nothing more
    assert ended == [client, server]
    return server, client


def test_spans_decode_with_the_official_schema_to_what_was_recorded() -> None:
    server, client = _traced_call()
    request, (sent_client, sent_server) = _decode_spans([client, server])

    resource = request.resource_spans[0].resource
    assert _attributes(list(resource.attributes)) == {
        "service.name": "bench",
        "service.instance.id": "pod-0",
    }
    scope = request.resource_spans[0].scope_spans[0].scope
    assert (scope.name, scope.version) == ("proxyrunner", "1.2.3")

    assert sent_server.trace_id.hex() == CLIENT_TRACE
    assert sent_server.parent_span_id.hex() == CLIENT_SPAN
    assert sent_server.span_id == server.span_id
    assert len(server.span_id) == 8
    assert sent_server.trace_state == "vendor=1"
    assert sent_server.name == "tools/call echo"
    assert sent_server.kind == ProtoSpan.SPAN_KIND_SERVER
    assert sent_server.start_time_unix_nano == server.start
    assert sent_server.end_time_unix_nano == server.end_time >= server.start
    assert _attributes(list(sent_server.attributes)) == {
        "mcp.method.name": "tools/call",
        "gen_ai.tool.name": "echo",
        "server.port": 8080,
    }
    assert sent_server.status.code == Status.STATUS_CODE_UNSET
    # sampled, with a parent known to be remote
    assert sent_server.flags == 0x301

    assert sent_client.kind == ProtoSpan.SPAN_KIND_CLIENT
    assert sent_client.trace_id.hex() == CLIENT_TRACE
    assert sent_client.parent_span_id == server.span_id
    assert sent_client.flags == 0x101
    assert sent_client.status.code == Status.STATUS_CODE_ERROR
    assert _attributes(list(sent_client.attributes))["error.type"] == "BackendUnavailable"
    (event,) = sent_client.events
    assert event.name == "mcp.session.reinitialize"
    assert event.time_unix_nano >= client.start
    assert _attributes(list(event.attributes)) == {"mcp.backend.name": "local-0"}


def test_the_context_a_span_sends_names_it_and_passes_the_clients_state_on() -> None:
    _server, client = _traced_call()
    assert client.carrier() == {
        "traceparent": f"00-{CLIENT_TRACE}-{client.span_id.hex()}-01",
        "tracestate": "vendor=1",
        "baggage": "tenant=a",
    }


def test_a_request_without_a_context_starts_a_new_trace_with_no_parent() -> None:
    first = spans.root(lambda span: None, "ping", spans.SERVER, {}, None)
    second = spans.root(lambda span: None, "ping", spans.SERVER, {}, None)
    assert first.parent_id is None
    assert len(first.trace_id) == 16
    assert first.trace_id != second.trace_id
    _, (sent,) = _decode_spans([first])
    assert sent.parent_span_id == b""
    assert sent.flags == 0x101


@pytest.mark.parametrize(
    "value",
    ["", "tööl", "x" * 5000, 0, 1, -1, 2**40, -(2**63), True, False, 0.5, -1e300],
)
def test_attribute_values_keep_their_type_and_value(value: str | int | float | bool) -> None:
    pair = KeyValue.FromString(otlp.key_value("k", value))
    assert pair.key == "k"
    decoded = _value(pair.value)
    assert decoded == value
    assert type(decoded) is type(value)


def _decode_metrics(histogram: histograms.Histogram) -> ExportMetricsServiceRequest:
    metric = histogram.encode(start=1_000, now=2_000)
    assert metric is not None
    encoded = otlp.metrics_request(otlp.resource({"service.name": "bench"}), b"", [metric])
    return ExportMetricsServiceRequest.FromString(encoded)


def test_histograms_decode_as_cumulative_explicit_buckets_per_attribute_set() -> None:
    histogram = histograms.Histogram("mcp.server.operation.duration", "s", "Duration", (0.1, 1))
    call = {"mcp.method.name": "tools/call", "gen_ai.tool.name": "echo"}
    for value in (0.05, 0.1, 0.5, 3.0):  # 0.1 sits on a bound: it belongs below it
        histogram.record(value, call)
    histogram.record(0.2, {"mcp.method.name": "ping"})

    (metric,) = _decode_metrics(histogram).resource_metrics[0].scope_metrics[0].metrics
    assert (metric.name, metric.unit, metric.description) == (
        "mcp.server.operation.duration",
        "s",
        "Duration",
    )
    assert metric.histogram.aggregation_temporality == 2  # CUMULATIVE
    points = {
        point.attributes[-1].value.string_value: point for point in metric.histogram.data_points
    }
    echo = points["echo"]
    assert _attributes(list(echo.attributes)) == call
    assert list(echo.explicit_bounds) == [0.1, 1]
    assert list(echo.bucket_counts) == [2, 1, 1]
    assert echo.count == 4
    assert echo.sum == pytest.approx(3.65)
    assert (echo.min, echo.max) == (0.05, 3.0)
    assert (echo.start_time_unix_nano, echo.time_unix_nano) == (1_000, 2_000)
    assert list(points["ping"].bucket_counts) == [0, 1, 0]


def test_past_the_series_limit_new_attribute_sets_share_one_overflow_series() -> None:
    histogram = histograms.Histogram("d", "s", "", (1,))
    for n in range(histograms.SERIES_LIMIT + 50):
        histogram.record(0.5, {"gen_ai.tool.name": f"tool-{n}"})
    points = _decode_metrics(histogram).resource_metrics[0].scope_metrics[0].metrics[0]
    data = list(points.histogram.data_points)
    assert len(data) == histograms.SERIES_LIMIT + 1
    overflow = [
        p for p in data if _attributes(list(p.attributes)) == {"otel.metric.overflow": True}
    ]
    assert len(overflow) == 1
    assert overflow[0].count == 50


def test_an_empty_histogram_is_not_exported() -> None:
    assert histograms.Histogram("d", "s", "", (1,)).encode(0, 1) is None
