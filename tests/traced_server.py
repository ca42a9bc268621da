"""An OpenTelemetry-instrumented MCP server for the tracing tests (official Python SDK).

Every JSON-RPC request it handles gets a SERVER span, exported over OTLP/HTTP with a
SimpleSpanProcessor (one export per span, at once: nothing for a test to wait out). The
span's parent is the W3C trace context the request carried: the ``traceparent``,
``tracestate`` and ``baggage`` HTTP headers in the HTTP modes (streamable HTTP; legacy
HTTP+SSE, on its message POSTs), the same keys of ``params._meta`` in stdio mode (stdio
has no headers). Spans are named after the method
(``tools/call whoami_trace`` for a tool call) and carry ``mcp.method.name``,
``jsonrpc.request.id`` and, for tool calls, ``gen_ai.tool.name``.

The tool ``whoami_trace`` answers with JSON ``{"traceparent", "tracestate", "baggage",
"service"}``: what this server received (null where absent), so tests can assert on the
propagation directly; ``echo`` returns its text.

    python -m tests.traced_server --transport streamable-http --port N \\
        --otlp-endpoint http://127.0.0.1:P --service-name traced-backend
    python -m tests.traced_server --transport sse --port N ...   (GET /sse, POST /messages/)
    python -m tests.traced_server --transport stdio --otlp-endpoint ... --service-name ...

``--otlp-endpoint`` defaults to ``$OTEL_EXPORTER_OTLP_ENDPOINT``; ``TracedBackend``
starts the HTTP one on a free port for tests.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from pathlib import Path
from typing import Any

from mcp.server.mcpserver import Context, MCPServer

from tests.procs import Proc, free_port, http_status, wait_until

_CONTEXT_KEYS = ("traceparent", "tracestate", "baggage")


class TracedBackend(Proc):
    """The traced server on a free port (streamable HTTP, or the legacy HTTP+SSE
    transport with ``transport="sse"``), exporting to ``otlp_endpoint``."""

    def __init__(
        self,
        tmp: Path,
        otlp_endpoint: str,
        service_name: str = "traced-backend",
        transport: str = "streamable-http",
    ) -> None:
        self.service_name = service_name
        self.port = free_port()
        path = "/sse" if transport == "sse" else "/mcp"
        self.url = f"http://127.0.0.1:{self.port}{path}"
        super().__init__(
            stdio_command(otlp_endpoint, service_name, transport, self.port),
            tmp / f"traced-{service_name}-{self.port}.log",
            {},
        )

    def wait_ready(self, timeout: float = 30.0) -> TracedBackend:
        def answers() -> bool:
            if not self.alive():
                raise AssertionError(f"traced server exited:\n{self.output()}")
            return http_status(f"http://127.0.0.1:{self.port}/") is not None

        wait_until(answers, timeout, f"traced server {self.service_name} to answer")
        return self


def stdio_command(
    otlp_endpoint: str,
    service_name: str = "traced-stdio",
    transport: str = "stdio",
    port: int | None = None,
) -> list[str]:
    """The command line of a traced server (stdio by default: a proxy's ``cmd_args``)."""
    args = [sys.executable, "-m", "tests.traced_server", "--transport", transport]
    args += ["--otlp-endpoint", otlp_endpoint, "--service-name", service_name]
    if port is not None:
        args += ["--port", str(port)]
    return args


# ---- the server process -------------------------------------------------------------


class _Tracing:
    """The tracer provider and the per-request SERVER spans."""

    def __init__(self, endpoint: str, service_name: str) -> None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.propagate import get_global_textmap
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor

        self.provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
        exporter = OTLPSpanExporter(endpoint=endpoint.rstrip("/") + "/v1/traces", timeout=5)
        self.provider.add_span_processor(SimpleSpanProcessor(exporter))
        self.tracer = self.provider.get_tracer("tests.traced_server")
        self.propagator = get_global_textmap()  # W3C tracecontext + baggage
        self.open: dict[Any, Any] = {}

    def start(self, message: Mapping[str, Any], carrier: Mapping[str, str]) -> Any:
        """A SERVER span for a JSON-RPC request, child of the context in ``carrier``."""
        from opentelemetry.trace import SpanKind

        method = str(message.get("method"))
        params = message.get("params") or {}
        name = method
        attributes: dict[str, str] = {
            "mcp.method.name": method,
            "jsonrpc.request.id": str(message.get("id")),
        }
        if method == "tools/call" and isinstance(params, dict) and params.get("name"):
            name = f"{method} {params['name']}"
            attributes["gen_ai.tool.name"] = str(params["name"])
        parent = self.propagator.extract(dict(carrier))
        return self.tracer.start_span(
            name, context=parent, kind=SpanKind.SERVER, attributes=attributes
        )


def _is_request(message: Any) -> bool:
    return isinstance(message, dict) and "method" in message and "id" in message


def _meta_carrier(message: Mapping[str, Any]) -> dict[str, str]:
    params = message.get("params") or {}
    meta = params.get("_meta") if isinstance(params, dict) else None
    if not isinstance(meta, dict):
        return {}
    return {key: str(meta[key]) for key in _CONTEXT_KEYS if key in meta}


ASGIApp = Callable[[MutableMapping[str, Any], Any, Any], Awaitable[None]]


def _http_middleware(app: ASGIApp, tracing: _Tracing) -> ASGIApp:
    """Buffer each POST body, open a span per JSON-RPC request in it, end them when the
    response is done."""

    async def middleware(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await app(scope, receive, send)
            return
        chunks = []
        while True:
            event = await receive()
            chunks.append(event.get("body", b""))
            if not event.get("more_body"):
                break
        body = b"".join(chunks)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        carrier = {key: headers[key] for key in _CONTEXT_KEYS if key in headers}
        try:
            doc = json.loads(body)
        except ValueError:
            doc = None
        batch = doc if isinstance(doc, list) else [doc]
        spans = [tracing.start(m, carrier) for m in batch if _is_request(m)]
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return dict(await receive())

        try:
            await app(scope, replay, send)
        finally:
            for span in spans:
                span.end()

    return middleware


def _build(service_name: str) -> MCPServer:
    server = MCPServer("traced-server", log_level="WARNING")

    @server.tool()
    def whoami_trace(ctx: Context) -> str:
        """The W3C trace context this server received with the call, as JSON."""
        rc = ctx.request_context
        seen: dict[str, str | None] = dict.fromkeys(_CONTEXT_KEYS)
        request = rc.request
        headers = getattr(request, "headers", None)
        if headers is not None:
            seen.update({key: headers.get(key) for key in _CONTEXT_KEYS})
        meta = rc.meta
        if meta is not None:
            # A TypedDict in the SDK; the trace context keys are extra ones.
            dumped: dict[str, Any] = dict(meta)
            for key in _CONTEXT_KEYS:
                if dumped.get(key) is not None:
                    seen[key] = str(dumped[key])
        return json.dumps({**seen, "service": service_name})

    @server.tool()
    def echo(text: str) -> str:
        """Return the text unchanged."""
        return text

    return server


async def _run_stdio(server: Any, tracing: _Tracing) -> None:
    """The SDK's stdio transport with a relay on either side: a span opens as a request
    arrives and ends when the response with its id goes out."""
    import anyio
    from mcp.server.stdio import stdio_server

    def as_dict(item: Any) -> Any:
        message = getattr(item, "message", None)
        return message.model_dump(by_alias=True, mode="json") if message is not None else None

    async with stdio_server() as (read_stream, write_stream):
        to_server_send, to_server_recv = anyio.create_memory_object_stream[Any](16)
        from_server_send, from_server_recv = anyio.create_memory_object_stream[Any](16)

        async def inbound() -> None:
            async with to_server_send:
                async for item in read_stream:
                    doc = as_dict(item)
                    if _is_request(doc):
                        tracing.open[doc["id"]] = tracing.start(doc, _meta_carrier(doc))
                    try:
                        await to_server_send.send(item)
                    except anyio.BrokenResourceError:  # the server stopped first
                        return

        async def outbound() -> None:
            # Closing write_stream ends the SDK's stdout writer, and so the process.
            async with from_server_recv, write_stream:
                async for item in from_server_recv:
                    await write_stream.send(item)
                    doc = as_dict(item)
                    if isinstance(doc, dict) and "method" not in doc and "id" in doc:
                        span = tracing.open.pop(doc["id"], None)
                        if span is not None:
                            span.end()

        async with anyio.create_task_group() as tg:
            tg.start_soon(inbound)
            tg.start_soon(outbound)
            lowlevel = server._lowlevel_server  # the SDK's own run loop
            # Both relays end on their own: stdin's EOF ends the run, whose end closes
            # the way out (flushed first) and the way in.
            async with from_server_send, to_server_recv:
                await lowlevel.run(
                    to_server_recv, from_server_send, lowlevel.create_initialization_options()
                )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.traced_server")
    parser.add_argument("--transport", choices=["streamable-http", "sse", "stdio"], default="stdio")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--otlp-endpoint", default=os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"))
    parser.add_argument("--service-name", default="traced-backend")
    args = parser.parse_args(argv)
    if not args.otlp_endpoint:
        parser.error("--otlp-endpoint (or OTEL_EXPORTER_OTLP_ENDPOINT) is required")
    tracing = _Tracing(args.otlp_endpoint, args.service_name)
    server = _build(args.service_name)
    try:
        if args.transport == "stdio":
            import anyio

            anyio.run(_run_stdio, server, tracing)
        else:
            import uvicorn

            inner = server.sse_app() if args.transport == "sse" else server.streamable_http_app()
            app = _http_middleware(inner, tracing)
            uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")
    finally:
        tracing.provider.shutdown()


if __name__ == "__main__":
    main()
