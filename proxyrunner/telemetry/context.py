"""W3C trace context in and out: HTTP headers, and the ``params._meta`` of a JSON-RPC
message (the 2026-07-28 revision's place for it, and the only one a stdio server has).

The fields are ``traceparent``, ``tracestate`` and ``baggage``, the same names in both
places. This module holds the cheap checks the hot path needs: whether a request
carries a context at all, and whether that context is sampled (the proxy follows its
parent's decision, as OpenTelemetry's parent-based sampler does); ``spans`` reads the
ids and writes the proxy's own ``traceparent``.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping
from typing import Any, Final

from proxyrunner.telemetry import spans

FIELDS: Final = ("traceparent", "tracestate", "baggage")
_META_MARKER: Final = b'"traceparent"'
_HEX: Final = frozenset("0123456789abcdef")
# A header longer than this is not a traceparent (55 characters in version 00) and is not
# looked at. W3C bounds tracestate to 32 entries (512 characters is what a receiver must
# at least keep) and baggage to 8192 bytes: past those they are not passed on.
_TRACEPARENT_MAX: Final = 256
_TRACESTATE_MAX: Final = 512
_BAGGAGE_MAX: Final = 8192
_LIMITS: Final = {"tracestate": _TRACESTATE_MAX, "baggage": _BAGGAGE_MAX}
# What may pass on into a backend's headers: printable ASCII and spaces (both fields'
# grammars are narrower still); a value with a control character, a line break above
# all, is not passed on.
_FORWARDABLE: Final = re.compile(r"[\x20-\x7e]*")

Carrier = dict[str, str]


def sampled_flag(traceparent: str) -> bool | None:
    """The sampled bit of a well-formed ``traceparent``, None when it is not one (the
    request then starts a new trace, as W3C says a receiver must)."""
    if len(traceparent) > _TRACEPARENT_MAX:
        return None
    parts = traceparent.strip().split("-")
    if len(parts) < 4:
        return None
    version, trace_id, parent_id, flags = parts[0], parts[1], parts[2], parts[3]
    if (
        len(version) != 2
        or version == "ff"
        or len(trace_id) != 32
        or len(parent_id) != 16
        or len(flags) != 2
        or not _HEX.issuperset(version + trace_id + parent_id + flags)
        or trace_id == "0" * 32
        or parent_id == "0" * 16
        or (version == "00" and len(parts) != 4)
    ):
        return None
    return bool(int(flags, 16) & 1)


def from_headers(headers: Mapping[str, str]) -> Carrier | None:
    traceparent = headers.get("traceparent")
    if traceparent is None:
        return None
    carrier = {"traceparent": traceparent}
    for name, limit in _LIMITS.items():
        value = headers.get(name)
        if value is not None and len(value) <= limit and _FORWARDABLE.fullmatch(value):
            carrier[name] = value
    return carrier


def may_carry_meta_context(body: bytes) -> bool:
    """Whether a body could hold a ``_meta`` trace context: a substring test, so that the
    body is parsed for it only when it might."""
    return _META_MARKER in body


def from_meta(message: Any) -> Carrier | None:
    """The trace context in a request's ``params._meta``, if any."""
    meta = _meta_of(message)
    if meta is None or not isinstance(meta.get("traceparent"), str):
        return None
    carrier = {"traceparent": meta["traceparent"]}
    for name, limit in _LIMITS.items():
        value = meta.get(name)
        if isinstance(value, str) and len(value) <= limit and _FORWARDABLE.fullmatch(value):
            carrier[name] = value
    return carrier


def into_meta(message: Any, carrier: Mapping[str, str]) -> None:
    """Put ``carrier`` into a request's ``params._meta``, replacing any trace context
    there (the proxy's span is the server's parent now). A request without params gets
    them; one whose params are not an object is left alone."""
    if not isinstance(message, dict) or "method" not in message:
        return
    params = message.get("params")
    if params is None:
        params = message["params"] = {}
    if not isinstance(params, dict):
        return
    meta = params.get("_meta")
    if meta is None:
        meta = params["_meta"] = {}
    if not isinstance(meta, dict):
        return
    for name in FIELDS:
        meta.pop(name, None)
    meta.update(carrier)


class Sampling:
    """Whether a request is traced: its parent's decision when it has a valid one, else a
    ``rate`` chance (a new trace starts here)."""

    __slots__ = ("_random", "rate")

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._random = random.Random()

    def decide(self, carrier: Carrier | None) -> bool:
        if carrier is not None:
            flag = sampled_flag(carrier["traceparent"])
            if flag is not None:
                return flag
        rate = self.rate
        return rate >= 1.0 or (rate > 0.0 and self._random.random() < rate)


def _meta_of(message: Any) -> dict[str, Any] | None:
    if not isinstance(message, dict):
        return None
    params = message.get("params")
    if not isinstance(params, dict):
        return None
    meta = params.get("_meta")
    return meta if isinstance(meta, dict) else None


def note(name: str, attributes: Mapping[str, str | int] | None = None) -> None:
    """An event on the span of the request being served, if it is traced (a no-op
    otherwise): for rare moments worth seeing in a trace, such as a re-initialize."""
    span = spans.current()
    if span is not None:
        span.event(name, attributes)


def annotate(name: str, value: str) -> None:
    """Set an attribute on the span of the request being served, if it is traced."""
    span = spans.current()
    if span is not None:
        span.set(name, value)


def current_carrier() -> Carrier:
    """The context of the span being served, for a request the proxy makes on its own
    behalf inside it (a replayed initialize); empty when nothing is traced."""
    span = spans.current()
    return span.carrier() if span is not None else {}
