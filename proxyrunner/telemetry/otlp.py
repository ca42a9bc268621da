"""OTLP's protobuf messages, written directly in the protobuf wire format: an
``ExportTraceServiceRequest`` of ended spans and an ``ExportMetricsServiceRequest`` of
cumulative histograms, as ``opentelemetry/proto`` (v1) defines them.

Why not the SDK's encoder: it builds a message object per span, attribute and value
and cost about 45 us per span here, more than the proxy spends on a whole request.
Written directly, a span is a join of byte strings, most of them cached: a proxy sends
the same few attribute pairs (method, tool, protocol version, backend) over and over,
so each ``KeyValue`` is encoded once. The unit tests decode this output with the
official generated classes (``opentelemetry-proto``) to prove it is the same message.

Only the fields the proxy fills are written; protobuf readers take absent fields as
their defaults.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from proxyrunner.telemetry.spans import Span

AttributeValue = str | int | float | bool
Attributes = Mapping[str, AttributeValue]

SERVER: Final = 2
"""``Span.SpanKind`` values."""
CLIENT: Final = 3
_STATUS_ERROR: Final = b"\x7a\x02\x18\x02"  # field 15 (status) = {code (3): ERROR (2)}
_CUMULATIVE: Final = b"\x10\x02"  # Histogram.aggregation_temporality = CUMULATIVE
# Span.flags (field 16, fixed32): sampled, and whether the parent is remote is known.
_FLAGS_LOCAL_PARENT: Final = b"\x85\x01" + struct.pack("<I", 0x101)
_FLAGS_REMOTE_PARENT: Final = b"\x85\x01" + struct.pack("<I", 0x301)
_PACK_U64: Final = struct.Struct("<Q").pack
_PACK_F64: Final = struct.Struct("<d").pack
# start_time_unix_nano (field 7) and end_time_unix_nano (8), tags and fixed64s at once.
_PACK_TIMES: Final = struct.Struct("<BQBQ").pack
# Attribute pairs seen: a bounded cache (cleared when full), keyed by type as well so
# that True and 1 stay distinct.
_KV_CACHE_LIMIT: Final = 4096
_kv_cache: dict[tuple[str, type, AttributeValue], bytes] = {}
# A span's attributes and names, framed as Span fields, keyed by the (key, value) item
# itself: the hottest path is one C-level lookup per attribute. Values equal to a bool
# (the ints 0 and 1) are not kept, so that True never meets the bytes of 1.
_span_field_cache: dict[tuple[str, AttributeValue], bytes] = {}


def _varint_slow(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_SMALL: Final = tuple(_varint_slow(n) for n in range(2048))


def varint(value: int) -> bytes:
    if 0 <= value < 2048:
        return _SMALL[value]
    if value < 0:  # int64 two's complement: always ten bytes
        value += 1 << 64
    return _varint_slow(value)


def _field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field: its tag byte(s), the length, the payload."""
    return tag + varint(len(payload)) + payload


def _string(tag: bytes, value: str) -> bytes:
    return _field(tag, value.encode("utf-8", "replace"))


def _any_value(value: AttributeValue) -> bytes:
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, int):
        return b"\x18" + varint(value)
    if isinstance(value, float):
        return b"\x21" + _PACK_F64(value)
    return _string(b"\x0a", str(value))


def key_value(key: str, value: AttributeValue) -> bytes:
    """One ``KeyValue`` message (unframed)."""
    cache_key = (key, type(value), value)
    encoded = _kv_cache.get(cache_key)
    if encoded is None:
        encoded = _string(b"\x0a", key) + _field(b"\x12", _any_value(value))
        if len(_kv_cache) >= _KV_CACHE_LIMIT:
            _kv_cache.clear()
        _kv_cache[cache_key] = encoded
    return encoded


def _attributes(tag: bytes, attributes: Attributes) -> list[bytes]:
    return [_field(tag, key_value(key, value)) for key, value in attributes.items()]


def _span_attributes(attributes: Attributes) -> list[bytes | None]:
    items = attributes.items()
    parts = list(map(_span_field_cache.get, items))
    if None in parts:
        parts = [
            part if part is not None else _span_field(b"\x4a", item)
            for part, item in zip(parts, items, strict=True)
        ]
    return parts


def _span_field(tag: bytes, item: tuple[str, AttributeValue]) -> bytes:
    key, value = item
    # The span's name is keyed ("", name); an attribute by its own item.
    encoded = _string(tag, str(value)) if tag == b"\x2a" else _field(tag, key_value(key, value))
    if type(value) is str or (type(value) is int and value not in (0, 1)):
        if len(_span_field_cache) >= _KV_CACHE_LIMIT:
            _span_field_cache.clear()
        _span_field_cache[item] = encoded
    return encoded


def resource(attributes: Attributes) -> bytes:
    """A ``Resource`` message."""
    return b"".join(_attributes(b"\x0a", attributes))


def scope(name: str, version: str) -> bytes:
    """An ``InstrumentationScope`` message."""
    return _string(b"\x0a", name) + (_string(b"\x12", version) if version else b"")


def span(item: Span) -> bytes:
    """One ``Span`` message (unframed)."""
    name_item = ("", item.name)
    parts: list[bytes | None] = [
        b"\x0a\x10",
        item.trace_id,
        b"\x12\x08",
        item.span_id,
        _string(b"\x1a", item.trace_state) if item.trace_state else b"",
        b"\x22\x08" + item.parent_id if item.parent_id is not None else b"",
        _span_field_cache.get(name_item) or _span_field(b"\x2a", name_item),
        b"\x30\x02" if item.kind == SERVER else b"\x30\x03",
        _PACK_TIMES(0x39, item.start, 0x41, item.end_time),
    ]
    parts.extend(_span_attributes(item.attributes))
    if item.events:
        for at, name, attributes in item.events:
            event = [b"\x09", _PACK_U64(at), _string(b"\x12", name)]
            if attributes:
                event.extend(_attributes(b"\x1a", attributes))
            parts.append(_field(b"\x5a", b"".join(event)))
    if item.error:
        parts.append(_STATUS_ERROR)
    parts.append(_FLAGS_REMOTE_PARENT if item.remote_parent else _FLAGS_LOCAL_PARENT)
    return b"".join(parts)  # type: ignore[arg-type]  # no None is left by _span_attributes


def span_field(item: Span) -> bytes:
    """A span framed as a ``ScopeSpans.spans`` entry, ready for ``trace_request``."""
    return _field(b"\x12", span(item))


def trace_request(
    encoded_resource: bytes, encoded_scope: bytes, span_fields: Iterable[bytes]
) -> bytes:
    """An ``ExportTraceServiceRequest``: one resource, one scope, these spans (each as
    ``span_field`` wrote it)."""
    scope_spans = _field(b"\x0a", encoded_scope) + b"".join(span_fields)
    resource_spans = _field(b"\x0a", encoded_resource) + _field(b"\x12", scope_spans)
    return _field(b"\x0a", resource_spans)


class HistogramPoint:
    """One attribute set's cumulative state, as ``histogram_request`` writes it."""

    __slots__ = ("attributes", "buckets", "count", "maximum", "minimum", "total")

    def __init__(self, attributes: Attributes, buckets: int) -> None:
        self.attributes = attributes
        self.count = 0
        self.total = 0.0
        self.minimum = float("inf")
        self.maximum = float("-inf")
        self.buckets = [0] * buckets


def _histogram_point(
    point: HistogramPoint, bounds: bytes, start: int, now: int, attributes: bytes
) -> bytes:
    parts = [
        attributes,
        b"\x11" + _PACK_U64(start),
        b"\x19" + _PACK_U64(now),
        b"\x21" + _PACK_U64(point.count),
        b"\x29" + _PACK_F64(point.total),
        _field(b"\x32", b"".join(_PACK_U64(n) for n in point.buckets)),
        bounds,
    ]
    if point.count:
        parts.append(b"\x59" + _PACK_F64(point.minimum))
        parts.append(b"\x61" + _PACK_F64(point.maximum))
    return b"".join(parts)


def histogram_metric(
    name: str,
    description: str,
    unit: str,
    bounds: Sequence[float],
    points: Iterable[HistogramPoint],
    start: int,
    now: int,
) -> bytes:
    """A ``Metric`` holding a cumulative explicit-bucket ``Histogram``."""
    encoded_bounds = _field(b"\x3a", b"".join(_PACK_F64(bound) for bound in bounds))
    data = [
        _field(
            b"\x0a",
            _histogram_point(
                point, encoded_bounds, start, now, b"".join(_attributes(b"\x4a", point.attributes))
            ),
        )
        for point in points
    ]
    data.append(_CUMULATIVE)
    return b"".join(
        (
            _string(b"\x0a", name),
            _string(b"\x12", description),
            _string(b"\x1a", unit),
            _field(b"\x4a", b"".join(data)),
        )
    )


def metrics_request(encoded_resource: bytes, encoded_scope: bytes, metrics: list[bytes]) -> bytes:
    """An ``ExportMetricsServiceRequest``: one resource, one scope, these metrics."""
    scope_metrics = _field(b"\x0a", encoded_scope) + b"".join(
        _field(b"\x12", metric) for metric in metrics
    )
    resource_metrics = _field(b"\x0a", encoded_resource) + _field(b"\x12", scope_metrics)
    return _field(b"\x0a", resource_metrics)
