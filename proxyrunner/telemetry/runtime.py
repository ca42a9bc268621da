"""The process's OpenTelemetry: spans and the MCP duration histograms, exported over
OTLP/HTTP (protobuf), built from ``telemetry_config``; and its flush when the process
stops.

Nothing here is global, and the OpenTelemetry SDK is not used: whoever records (the
pipeline's telemetry stage, the forwarder, the stdio bridge, the session store) is
handed this object, and spans (``spans``), histograms (``histograms``) and their
encoding (``otlp``) are the proxy's own, at a small fraction of the SDK's cost per
request. Off (no ``telemetry_config``, or neither signal on) there is no object at all,
so the hot path pays one ``is None`` test.

Exports run on threads of their own: spans on the bounded batch processor's worker,
metrics on the periodic exporter's. A collector that is slow or down costs dropped
spans, counted through ``on_drop``, never a blocked request.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Final

from proxyrunner.config.telemetry import TelemetryConfig
from proxyrunner.telemetry import otlp, spans
from proxyrunner.telemetry.batching import BoundedBatchProcessor, DropCounter
from proxyrunner.telemetry.context import Carrier, Sampling, sampled_flag
from proxyrunner.telemetry.export import OtlpHttp
from proxyrunner.telemetry.histograms import Histogram, PeriodicExport
from proxyrunner.telemetry.spans import Sink, Span

SCOPE: Final = "proxyrunner"
Finish = Callable[[str | None], None]
# Seconds an export request may take, retries included, before the batch is dropped: a
# dead collector holds the worker thread at most this long per batch.
_EXPORT_TIMEOUT: Final = 5.0
# The MCP conventions' advice for operation durations, in seconds.
_DURATION_BUCKETS: Final = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30, 60, 120, 300)


@dataclass(frozen=True, slots=True)
class Instruments:
    server_duration: Histogram
    """``mcp.server.operation.duration``: one MCP request as the proxy served it."""
    client_duration: Histogram
    """``mcp.client.operation.duration``: the proxy's call to its backend."""


class Telemetry:
    def __init__(
        self,
        config: TelemetryConfig,
        *,
        replica: str = "",
        version: str = "",
        on_drop: DropCounter = lambda count: None,
        on_export_failure: Callable[[], None] = lambda: None,
    ) -> None:
        self.config = config
        self.sampling = Sampling(config.sampling_rate)
        encoded_resource = otlp.resource(_resource_attributes(config, replica, version))
        encoded_scope = otlp.scope(SCOPE, version)
        user_agent = f"proxyrunner/{version or 'dev'}"
        self._processor: BoundedBatchProcessor | None = None
        self._metrics: PeriodicExport | None = None
        self._posters: list[OtlpHttp] = []
        self.sink: Sink | None = None
        """Where an ended span goes; None when tracing is off."""
        self.instruments: Instruments | None = None
        """None when metrics are off."""
        if config.tracing_enabled:
            traces = OtlpHttp(
                config.traces_url, config.signal_headers("traces"), _EXPORT_TIMEOUT, user_agent
            )
            self._posters.append(traces)

            def export(batch: Sequence[bytes]) -> bool:
                return traces.post(otlp.trace_request(encoded_resource, encoded_scope, batch))

            self._processor = BoundedBatchProcessor(
                otlp.span_field,
                export,
                max_queue_size=config.max_queue_size,
                on_drop=on_drop,
                on_export_failure=on_export_failure,
            )
            self.sink = self._processor.on_end
        if config.metrics_enabled:
            metrics = OtlpHttp(
                config.metrics_url, config.signal_headers("metrics"), _EXPORT_TIMEOUT, user_agent
            )
            self._posters.append(metrics)
            self.instruments = Instruments(
                server_duration=Histogram(
                    "mcp.server.operation.duration",
                    "s",
                    "Duration of MCP requests as the proxy served them",
                    _DURATION_BUCKETS,
                ),
                client_duration=Histogram(
                    "mcp.client.operation.duration",
                    "s",
                    "Duration of the proxy's MCP requests to its backend",
                    _DURATION_BUCKETS,
                ),
            )
            self._metrics = PeriodicExport(
                (self.instruments.server_duration, self.instruments.client_duration),
                partial(otlp.metrics_request, encoded_resource, encoded_scope),
                metrics.post,
                config.metric_export_interval,
                on_export_failure,
            )

    @contextlib.contextmanager
    def child_span(
        self, name: str, attributes: Mapping[str, str | int] | None = None
    ) -> Iterator[Span | None]:
        """A CLIENT span under the current one (a Redis call inside a traced request), or
        nothing when tracing is off or the current request is not traced: background
        work does not start traces of its own. An exception marks it failed."""
        parent = spans.current()
        if parent is None:
            yield None
            return
        span = parent.child(name, spans.CLIENT, dict(attributes or {}))
        try:
            yield span
        except BaseException as exc:
            span.fail(type(exc).__name__)
            raise
        finally:
            span.end()

    def relay_span(
        self, name: str, carrier: Carrier | None, attributes: Mapping[str, str | int]
    ) -> tuple[Finish, Carrier | None]:
        """A CLIENT span for a call whose context travels inside the message, not in
        headers (the stdio bridge writing to its server): the child of ``carrier`` when
        that is sampled. Returns how to end it (with an ``error.type`` or None) and the
        context to send; an unsampled or absent context is passed on unchanged."""
        sink = self.sink
        if sink is None or carrier is None or sampled_flag(carrier["traceparent"]) is not True:
            return _no_span, carrier
        span = spans.root(sink, name, spans.CLIENT, dict(attributes), carrier)

        def finish(error_type: str | None) -> None:
            if error_type is not None:
                span.fail(error_type)
            span.end()

        return finish, span.carrier()

    @property
    def queued_spans(self) -> int:
        return self._processor.queued if self._processor is not None else 0

    async def close(self) -> None:
        """Flush what is queued, then stop the exporters; the caller bounds it with the
        drain deadline. The blocking SDK calls run on a thread: a collector that does not
        answer holds that thread, never the event loop, and the process exits anyway:
        it is a daemon thread of its own, not the loop's executor, which ``asyncio.run``
        would wait for at exit."""
        loop = asyncio.get_running_loop()
        done = loop.create_future()

        def run() -> None:
            try:
                self._flush_and_stop()
            finally:
                with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                    loop.call_soon_threadsafe(_settle, done)

        threading.Thread(target=run, name="proxyrunner-telemetry-flush", daemon=True).start()
        await done

    def _flush_and_stop(self) -> None:
        if self._processor is not None:
            self._processor.force_flush(int(_EXPORT_TIMEOUT * 1000))
            self._processor.shutdown()
        if self._metrics is not None:
            self._metrics.shutdown()
        for poster in self._posters:
            poster.close()


def _no_span(error_type: str | None) -> None:
    pass


def _settle(done: asyncio.Future[None]) -> None:
    if not done.done():
        done.set_result(None)


def _resource_attributes(config: TelemetryConfig, replica: str, version: str) -> dict[str, str]:
    attributes = {
        name: value for name in config.environment_variables if (value := os.environ.get(name))
    }
    attributes.update(config.custom_attributes)
    attributes["service.name"] = config.service_name
    attributes["service.version"] = config.service_version or version
    if replica:
        attributes["service.instance.id"] = replica
    return attributes
