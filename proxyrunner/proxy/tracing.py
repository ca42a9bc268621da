"""One traced request: the proxy's SERVER span and the CLIENT spans of its backend calls.

The telemetry stage opens a ``RequestTrace`` when a request is sampled and puts it on the
exchange; the forwarder asks it for a ``leg`` per backend call, which opens the client
span and gives the headers that carry its context to the backend (replacing the
client's: the backend's parent is the proxy's call, not the client's). Legs end when
the request ends, its answer relayed, with the backend call's outcome.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from yarl import URL

from proxyrunner.proxy.headers import HeaderEdit, HeaderNames
from proxyrunner.telemetry import context as trace_context
from proxyrunner.telemetry import semconv, spans
from proxyrunner.telemetry.spans import Span

if TYPE_CHECKING:
    from proxyrunner.telemetry.runtime import Instruments

_TRACE_HEADERS = HeaderNames(trace_context.FIELDS)


class Leg:
    """One backend call of a traced (or only measured) request."""

    __slots__ = ("attributes", "span", "started")
    # attributes: the metric attributes of this call (the request's, and the backend).

    def __init__(self, span: Span | None, attributes: dict[str, str | int] | None) -> None:
        self.span = span
        self.attributes = attributes
        self.started = time.perf_counter()


class RequestTrace:
    __slots__ = (
        "_instruments",
        "_legs",
        "attributes",
        "meta_context",
        "metric_attributes",
        "name",
        "sent",
        "span",
    )

    def __init__(
        self,
        instruments: Instruments | None,
        name: str,
        attributes: dict[str, str | int],
        metric_attributes: dict[str, str | int] | None,
        span: Span | None,
    ) -> None:
        self._instruments = instruments
        self.name = name
        self.attributes = attributes
        """The request's span attributes (method, target, protocol version), which its
        client spans repeat."""
        self.metric_attributes = metric_attributes
        """The same, bounded for metrics (no URIs, tool names past the limit folded);
        None when metrics are off."""
        self.span = span
        """The SERVER span; None when the request is only measured."""
        self._legs: list[Leg] = []
        self.meta_context = False
        """The request's body carries a trace context in ``params._meta``: a backend call
        must get the proxy's there too, not only in headers (a backend may prefer it)."""
        self.sent: trace_context.Carrier | None = None
        """The context the latest backend call carries."""

    def leg(self, backend: str, url: URL, edit: HeaderEdit | None) -> HeaderEdit | None:
        """Start a backend call; the header edit that sends its trace context."""
        attributes = dict(self.attributes)
        attributes[semconv.BACKEND] = backend
        if url.host is not None:
            attributes[semconv.SERVER_ADDRESS] = url.host
        if url.port is not None:
            attributes[semconv.SERVER_PORT] = url.port
        span = (
            self.span.child(self.name, spans.CLIENT, attributes) if self.span is not None else None
        )
        metric_attributes = None
        if self.metric_attributes is not None:
            metric_attributes = dict(self.metric_attributes)
            metric_attributes[semconv.BACKEND] = backend
        self._legs.append(Leg(span, metric_attributes))
        if span is None:
            return edit
        carrier = span.carrier()
        self.sent = carrier
        return HeaderEdit.adding(edit, _TRACE_HEADERS, carrier)

    def end(self, status: int, error: tuple[int, str] | None, failure: str | None) -> str | None:
        """The request is over: its HTTP status, the JSON-RPC error of its answer, and the
        failure that ended it (a refusal, a backend failure), if any. Returns the
        request's ``error.type`` (None when it succeeded)."""
        now = time.perf_counter()
        error_type = failure or (error[1] if error is not None else None)
        if error_type is None and status >= 400:
            error_type = str(status)
        for leg in self._legs:
            _finish(leg.span, status, error, error_type)
            if self._instruments is not None and leg.attributes is not None:
                self._instruments.client_duration.record(
                    now - leg.started, _with_error(leg.attributes, error_type)
                )
        _finish(self.span, status, error, error_type)
        return error_type


def _finish(
    span: Span | None, status: int, error: tuple[int, str] | None, error_type: str | None
) -> None:
    if span is None:
        return
    attributes = span.attributes
    attributes[semconv.HTTP_STATUS] = status
    if error is not None:
        attributes[semconv.STATUS_CODE] = str(error[0])
    if error_type is not None:
        span.fail(error_type)
    span.end()


def _with_error(attributes: dict[str, Any], error_type: str | None) -> dict[str, Any]:
    if error_type is None:
        return attributes
    return {**attributes, semconv.ERROR_TYPE: error_type}
