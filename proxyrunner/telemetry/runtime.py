"""The process's OpenTelemetry: a tracer and the MCP duration histograms, exported over
OTLP/HTTP, built from ``telemetry_config``; and its flush when the process stops.

Nothing here is global: the SDK's global providers stay unset, and whoever records
(the pipeline's telemetry stage, the forwarder, the stdio bridge, the session store) is
handed this object. Off (no ``telemetry_config``, or neither signal on) there is no
object at all, so the hot path pays one ``is None`` test.

Exports run on the SDK's threads: spans on the bounded batch processor's worker, metrics
on the periodic reader's. A collector that is slow or down costs dropped spans, counted
through ``on_drop``, never a blocked request.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Final

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.metrics import Histogram
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer

from proxyrunner.config.telemetry import TelemetryConfig
from proxyrunner.telemetry.batching import BoundedBatchProcessor, DropCounter
from proxyrunner.telemetry.context import Carrier, Sampling, extract, inject, sampled_flag

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
        resource = Resource.create(_resource_attributes(config, replica, version))
        self._tracer_provider: TracerProvider | None = None
        self._processor: BoundedBatchProcessor | None = None
        self._meter_provider: MeterProvider | None = None
        self.tracer: Tracer | None = None
        """None when tracing is off."""
        self.instruments: Instruments | None = None
        """None when metrics are off."""
        if config.tracing_enabled:
            # The sampling decision is made before a span exists (Sampling), so that an
            # unsampled request never allocates one; what reaches the SDK is kept.
            provider = TracerProvider(resource=resource, sampler=ALWAYS_ON)
            self._processor = BoundedBatchProcessor(
                OTLPSpanExporter(
                    endpoint=config.traces_url,
                    headers=dict(config.headers),
                    timeout=_EXPORT_TIMEOUT,
                ),
                max_queue_size=config.max_queue_size,
                on_drop=on_drop,
                on_export_failure=on_export_failure,
            )
            provider.add_span_processor(self._processor)
            self._tracer_provider = provider
            self.tracer = provider.get_tracer(SCOPE, version)
        if config.metrics_enabled:
            reader = PeriodicExportingMetricReader(
                OTLPMetricExporter(
                    endpoint=config.metrics_url,
                    headers=dict(config.headers),
                    timeout=_EXPORT_TIMEOUT,
                ),
                export_interval_millis=config.metric_export_interval * 1000,
                export_timeout_millis=_EXPORT_TIMEOUT * 1000,
            )
            meters = MeterProvider(resource=resource, metric_readers=[reader])
            meter = meters.get_meter(SCOPE, version)
            self._meter_provider = meters
            self.instruments = Instruments(
                server_duration=meter.create_histogram(
                    "mcp.server.operation.duration",
                    unit="s",
                    description="Duration of MCP requests as the proxy served them",
                    explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
                ),
                client_duration=meter.create_histogram(
                    "mcp.client.operation.duration",
                    unit="s",
                    description="Duration of the proxy's MCP requests to its backend",
                    explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
                ),
            )

    @contextlib.contextmanager
    def child_span(
        self, name: str, attributes: Mapping[str, str | int] | None = None
    ) -> Iterator[Span | None]:
        """A CLIENT span under the current one (a Redis call inside a traced request), or
        nothing when tracing is off or the current request is not traced: background
        work does not start traces of its own."""
        tracer = self.tracer
        if tracer is None or not trace.get_current_span().is_recording():
            yield None
            return
        with tracer.start_as_current_span(
            name, kind=SpanKind.CLIENT, attributes=attributes
        ) as span:
            yield span

    def relay_span(
        self, name: str, carrier: Carrier | None, attributes: Mapping[str, str | int]
    ) -> tuple[Finish, Carrier | None]:
        """A CLIENT span for a call whose context travels inside the message, not in
        headers (the stdio bridge writing to its server): the child of ``carrier`` when
        that is sampled. Returns how to end it (with an ``error.type`` or None) and the
        context to send; an unsampled or absent context is passed on unchanged."""
        tracer = self.tracer
        if tracer is None or carrier is None or sampled_flag(carrier["traceparent"]) is not True:
            return _no_span, carrier
        parent = extract(carrier)
        span = tracer.start_span(name, context=parent, kind=SpanKind.CLIENT, attributes=attributes)

        def finish(error_type: str | None) -> None:
            if error_type is not None:
                span.set_attribute("error.type", error_type)
                span.set_status(Status(StatusCode.ERROR))
            span.end()

        return finish, inject(trace.set_span_in_context(span, parent))

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
        if self._tracer_provider is not None:
            self._tracer_provider.shutdown()
        if self._meter_provider is not None:
            # Collects and exports once more: the last interval's operations are sent.
            self._meter_provider.shutdown(timeout_millis=int(_EXPORT_TIMEOUT * 1000))


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
