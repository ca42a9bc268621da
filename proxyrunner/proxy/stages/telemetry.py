"""Stage: OpenTelemetry. A SERVER span per MCP request, its context passed on to the
backend, and the ``mcp.server.operation.duration`` histogram.

It runs right after the body is read (so that the method, the target and a ``_meta``
trace context can be read from it) and before every stage that may refuse, so a refusal
(400, 401, 403) is in the trace with its ``error.type``. The client's context comes from
its ``traceparent``/``tracestate``/``baggage`` headers, else from ``params._meta``; a
request without one starts a new trace here, sampled at ``samplingRate``; one with a
context follows its sampled flag.

An unsampled request costs a header lookup and, when metrics are on, one histogram
record: no span object, no parsing beyond what metrics need, no watcher on the answer.
GET listen streams are not MCP operations and are not traced.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, Any, Final

from aiohttp import web

from proxyrunner.principal import short_hash
from proxyrunner.proxy.errors import ProxyError
from proxyrunner.proxy.pipeline import Exchange, Next
from proxyrunner.proxy.tracing import RequestTrace
from proxyrunner.telemetry import context as trace_context
from proxyrunner.telemetry import semconv, spans

if TYPE_CHECKING:
    from proxyrunner.telemetry.runtime import Telemetry

# Methods whose target (tool, prompt) is worth parsing the body for, for metrics alone.
_TARGETED = frozenset(("tools/call", "prompts/get", "resources/read"))


# A successful tool result says ``"isError": false``: only ``true`` is worth a parse.
_ERROR: Final = re.compile(rb'"error"|"isError"\s*:\s*true')


class _Answer:
    """Watches a traced request's answer for a JSON-RPC error."""

    __slots__ = ("error",)
    # What semconv.error_of looks for: an answer with neither is not parsed.
    needle: re.Pattern[bytes] | None = _ERROR

    def __init__(self) -> None:
        self.error: tuple[int, str] | None = None

    def on_response(self, status: int, headers: Any) -> None:
        pass

    def on_message(self, message: Any) -> None:
        if self.error is None:
            self.error = semconv.error_of(message)

    def on_end(self, error: BaseException | None) -> None:
        pass


class TelemetryStage:
    name = "telemetry"

    def __init__(self, telemetry: Telemetry) -> None:
        self._sink = telemetry.sink
        self._instruments = telemetry.instruments
        self._sampling = telemetry.sampling
        self._names = semconv.BoundedNames()

    async def handle(self, exchange: Exchange, call_next: Next) -> web.StreamResponse:
        request = exchange.request
        if request.method == "GET":
            return await call_next(exchange)
        started = time.perf_counter()
        carrier = trace_context.from_headers(request.headers)
        body = exchange.body
        message: Any = None
        meta_possible = isinstance(body, bytes) and trace_context.may_carry_meta_context(body)
        if carrier is None and meta_possible:
            message = _parsed(exchange)
            carrier = trace_context.from_meta(message)
        sampled = self._sink is not None and self._sampling.decide(carrier)
        if not sampled and self._instruments is None:
            return await call_next(exchange)
        method = exchange.rpc_method
        if message is None and (sampled or method in _TARGETED):
            message = _parsed(exchange)
        target = semconv.target_of(message)
        attributes = semconv.request_attributes(method, target, exchange.protocol_version)
        name = semconv.span_name(method, target)
        trace = self._open(exchange, name, attributes, carrier if sampled else None, sampled)
        trace.meta_context = (
            sampled and meta_possible and trace_context.from_meta(message) is not None
        )
        answer: _Answer | None = None
        if trace.span is not None:
            answer = _Answer()
            exchange.watch(answer)
        token = spans.enter(trace.span) if trace.span is not None else None
        status, failure = 499, None
        try:
            response = await call_next(exchange)
            status = response.status
            return response
        except ProxyError as exc:
            status, failure = exc.status, type(exc).__name__
            raise
        except BaseException as exc:
            failure = type(exc).__name__
            raise
        finally:
            if token is not None:
                spans.leave(token)
            self._close(exchange, trace, status, answer, failure, started)

    def _open(
        self,
        exchange: Exchange,
        name: str,
        attributes: dict[str, str | int],
        carrier: trace_context.Carrier | None,
        sampled: bool,
    ) -> RequestTrace:
        metric_attributes = (
            _bounded(attributes, self._names) if self._instruments is not None else None
        )
        span = None
        if sampled and self._sink is not None:
            # The client's side of the request: on the server span only, not repeated on
            # the backend calls (which name the backend instead).
            served = dict(attributes)
            if exchange.session_id is not None:
                served[semconv.SESSION] = short_hash(exchange.session_id)
            remote = exchange.request.remote
            if remote:
                served[semconv.CLIENT_ADDRESS] = remote
            span = spans.root(self._sink, name, spans.SERVER, served, carrier)
        trace = RequestTrace(self._instruments, name, attributes, metric_attributes, span)
        exchange.trace = trace
        return trace

    def _close(
        self,
        exchange: Exchange,
        trace: RequestTrace,
        status: int,
        answer: _Answer | None,
        failure: str | None,
        started: float,
    ) -> None:
        span = trace.span
        if span is not None:
            principal = exchange.principal
            if principal is not None and principal.client_id:
                span.set(semconv.CLIENT_ID, principal.client_id)
        error = answer.error if answer is not None else None
        error_type = trace.end(status, error, failure)
        instruments = self._instruments
        if instruments is not None and trace.metric_attributes is not None:
            recorded = trace.metric_attributes
            if error_type is not None:
                recorded = {**recorded, semconv.ERROR_TYPE: error_type}
            instruments.server_duration.record(time.perf_counter() - started, recorded)


def _parsed(exchange: Exchange) -> Any:
    try:
        return exchange.message()
    except ProxyError:
        return None  # not JSON: a later stage answers it


def _bounded(attributes: dict[str, str | int], names: semconv.BoundedNames) -> dict[str, str | int]:
    kept = {key: value for key, value in attributes.items() if key != semconv.RESOURCE}
    for key in (semconv.TOOL, semconv.PROMPT):
        value = kept.get(key)
        if isinstance(value, str):
            kept[key] = names(value)
    return kept
