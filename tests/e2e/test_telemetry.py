"""OpenTelemetry through the proxy, proven with a real trace backend (Jaeger v2 built from
the Go module proxy) and OpenTelemetry-instrumented SDK MCP servers: a client's trace
continues through the proxy's SERVER span and CLIENT span into the backend's span, over
HTTP headers and, for stdio servers, through ``params._meta``; a dead collector costs
dropped spans, never a failed request."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import aiohttp
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from tests.balancer import balancer
from tests.conftest import StartBackend, StartProxy
from tests.helpers import tool_text
from tests.procs import Proxy, eventually, free_port
from tests.redis_server import RedisServer
from tests.trace_backend import Span, TraceBackend
from tests.trace_fixtures import StartTracedBackend
from tests.traced_server import stdio_command
from tests.traces import PROXY_SERVICE, WHOAMI, chain, new_context, telemetry

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def traced_proxy(
    trace_backend: TraceBackend, start_traced_backend: StartTracedBackend, start_proxy: StartProxy
) -> Proxy:
    """A proxy with tracing and metrics on (0% sampling: only a client's sampled context
    is traced) in front of the instrumented HTTP backend."""
    backend = start_traced_backend("traced-http")
    return start_proxy(
        {"name": "traced", "remote_url": backend.url, "telemetry_config": telemetry(trace_backend)}
    )


async def test_a_client_trace_continues_through_the_proxy_into_the_backend(
    trace_backend: TraceBackend, traced_proxy: Proxy
) -> None:
    proxy = traced_proxy
    trace_id, parent, traceparent = new_context()
    http = create_mcp_http_client(headers={"traceparent": traceparent, "baggage": "tenant=t1"})
    # The session-era handshake (2025-11-25 and earlier): the span names the session.
    transport = streamable_http_client(proxy.url, http_client=http)
    async with http, Client(transport, mode="legacy") as client:
        seen = json.loads(tool_text(await client.call_tool("whoami_trace", {})))

    spans = await trace_backend.wait_for_spans(trace_id, WHOAMI)
    server, client_span, backend_span = chain(spans, parent, "whoami_trace")
    # The backend's parent is the proxy's call, not the client's span.
    assert backend_span.parent_span_id == client_span.span_id
    assert seen["traceparent"].split("-")[2] == client_span.span_id
    assert seen["baggage"] == "tenant=t1"
    attributes = server.attributes
    assert attributes["mcp.method.name"] == "tools/call"
    assert attributes["gen_ai.tool.name"] == "whoami_trace"
    assert re.fullmatch(r"[0-9a-f]{12}", attributes["mcp.session.id"])
    assert attributes["mcp.protocol.version"]
    assert client_span.attributes["mcp.backend.name"] == "remote"
    # The OTLP metrics of the same calls reach the collector's metrics pipeline.
    await trace_backend.wait_for_metric("mcp.server.operation.duration")
    await trace_backend.wait_for_metric("mcp.client.operation.duration")


async def test_a_tool_result_that_reports_an_error_marks_the_span_and_a_success_does_not(
    trace_backend: TraceBackend, traced_proxy: Proxy
) -> None:
    # The proxy parses an answer only when it may report a failure: a successful result
    # says "isError": false and must not count as one, a failed one says true.
    trace_id, _, traceparent = new_context()
    http = create_mcp_http_client(headers={"traceparent": traceparent})
    transport = streamable_http_client(traced_proxy.url, http_client=http)
    async with http, Client(transport, mode="legacy") as client:
        await client.call_tool("whoami_trace", {})
        failed = await client.call_tool("no_such_tool", {})
    assert failed.is_error

    def both_served(spans: list[Span]) -> bool:
        names = {s.name for s in spans if s.service == PROXY_SERVICE and s.kind == "server"}
        return {"tools/call whoami_trace", "tools/call no_such_tool"} <= names

    spans = await trace_backend.wait_for_spans(trace_id, both_served)
    served = {s.name: s for s in spans if s.service == PROXY_SERVICE and s.kind == "server"}
    assert served["tools/call no_such_tool"].attributes["error.type"] == "tool_error"
    assert "error.type" not in served["tools/call whoami_trace"].attributes


async def test_a_trace_context_in_params_meta_is_continued_when_no_header_carries_one(
    trace_backend: TraceBackend, traced_proxy: Proxy
) -> None:
    trace_id, parent, traceparent = new_context()
    # The SDK's default revision (2026-07-28), the context only in the request's _meta.
    async with Client(streamable_http_client(traced_proxy.url)) as client:
        result = await client.call_tool("whoami_trace", {}, meta={"traceparent": traceparent})
        seen = json.loads(tool_text(result))

    spans = await trace_backend.wait_for_spans(trace_id, WHOAMI)
    server, client_span, backend_span = chain(spans, parent, "whoami_trace")
    assert backend_span.parent_span_id == client_span.span_id
    assert seen["traceparent"].split("-")[2] == client_span.span_id
    assert server.attributes["mcp.protocol.version"] == "2026-07-28"


async def test_a_request_without_trace_context_is_not_traced_at_zero_sampling(
    trace_backend: TraceBackend, traced_proxy: Proxy
) -> None:
    proxy = traced_proxy
    async with Client(streamable_http_client(proxy.url)) as client:
        seen = json.loads(tool_text(await client.call_tool("whoami_trace", {})))
    # Nothing sampled: the proxy starts no trace and sends no context of its own.
    assert seen["traceparent"] is None


async def test_one_session_through_two_replicas_sharing_redis_is_one_trace(
    trace_backend: TraceBackend,
    start_traced_backend: StartTracedBackend,
    start_proxy: StartProxy,
    redis_server: RedisServer,
) -> None:
    backend = start_traced_backend("traced-http")
    ports = [free_port(), free_port()]
    async with balancer([f"http://127.0.0.1:{port}" for port in ports]) as lb:
        config = {
            "name": "traced",
            "remote_url": backend.url,
            "session_redis": {"address": redis_server.address, "key_prefix": "otel-lb"},
            "telemetry_config": telemetry(trace_backend),
        }
        env = {"THV_SESSION_REDIS_PASSWORD": redis_server.password}
        for port in ports:
            await asyncio.to_thread(start_proxy, {**config, "port": port}, env=env)
        await eventually(lambda: len(lb.ready) == 2, 10, "both replicas to be ready")
        trace_id, parent, traceparent = new_context()
        http = create_mcp_http_client(headers={"traceparent": traceparent})
        async with (
            http,
            Client(
                streamable_http_client(f"{lb.url}/mcp", http_client=http), mode="legacy"
            ) as client,
        ):
            for n in range(6):
                await client.call_tool("echo", {"text": str(n)})
        served = dict(lb.served)
    assert all(count >= 3 for count in served.values()), served

    def six_calls(spans: list[Span]) -> bool:
        # Each call: the proxy's server and client span, and the backend's.
        kinds = [(s.service, s.kind) for s in spans if s.name == "tools/call echo"]
        return all(
            kinds.count(side) >= 6
            for side in (
                ("proxyrunner-under-test", "server"),
                ("proxyrunner-under-test", "client"),
                ("traced-http", "server"),
            )
        )

    spans = await trace_backend.wait_for_spans(trace_id, six_calls)
    servers = [
        s
        for s in spans
        if s.service == "proxyrunner-under-test" and s.kind == "server" and s.name.endswith("echo")
    ]
    assert len(servers) == 6
    assert all(s.parent_span_id == parent for s in servers)
    # One session, served by both replicas: the same session hash on every span.
    assert len({s.attributes["mcp.session.id"] for s in servers}) == 1
    clients = {s.span_id for s in spans if s.kind == "client"}
    backends = [s for s in spans if s.service == "traced-http" and s.name.endswith("echo")]
    assert all(s.parent_span_id in clients for s in backends)
    # The replica that did not create the session read it from Redis inside a request.
    server_ids = {
        s.span_id for s in spans if s.service == "proxyrunner-under-test" and s.kind == "server"
    }
    redis = [s for s in spans if s.name.startswith("redis ")]
    assert redis, "no Redis span in the trace"
    assert all(s.parent_span_id in server_ids for s in redis)
    assert redis[0].attributes["db.system.name"] == "redis"


async def test_a_stdio_server_gets_the_bridge_span_as_parent_through_meta(
    trace_backend: TraceBackend, start_proxy: StartProxy
) -> None:
    proxy = start_proxy(
        {
            "name": "traced",
            "transport": "stdio",
            "cmd_args": stdio_command(trace_backend.otlp_http_endpoint, "traced-stdio"),
            # Children get a minimal environment: the module is found through this.
            "env_vars": {"PYTHONPATH": str(REPO)},
            "telemetry_config": telemetry(trace_backend),
        }
    )
    trace_id, parent, traceparent = new_context()
    http = create_mcp_http_client(headers={"traceparent": traceparent})
    async with http, Client(streamable_http_client(proxy.url, http_client=http)) as client:
        seen = json.loads(tool_text(await client.call_tool("whoami_trace", {})))

    spans = await trace_backend.wait_for_spans(trace_id, WHOAMI)
    server, client_span, backend_span = chain(spans, parent, "whoami_trace")
    bridge = next(s for s in spans if s.name == "stdio tools/call whoami_trace")
    assert bridge.parent_span_id == client_span.span_id
    assert backend_span.parent_span_id == bridge.span_id
    assert seen["traceparent"].split("-")[2] == bridge.span_id
    assert server.service == "proxyrunner-under-test"
    assert backend_span.service == "traced-stdio"


async def test_requests_keep_succeeding_while_the_collector_is_dead_and_drops_are_counted(
    trace_backend: TraceBackend,
    start_backend: StartBackend,
    start_proxy: StartProxy,
) -> None:
    # An uninstrumented backend: only the proxy depends on the collector here.
    backend = start_backend("alpha")
    proxy = start_proxy(
        {
            "name": "traced",
            "remote_url": backend.url,
            "telemetry_config": telemetry(trace_backend, maxQueueSize=16),
        }
    )
    trace_backend.kill()
    try:
        _, _, traceparent = new_context()
        http = create_mcp_http_client(headers={"traceparent": traceparent})
        async with http, Client(streamable_http_client(proxy.url, http_client=http)) as client:
            for n in range(60):
                result = await client.call_tool("echo", {"text": str(n)})
                assert tool_text(result) == str(n)
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{proxy.base}/metrics") as response,
        ):
            text = await response.text()
        dropped = re.search(r"^proxyrunner_telemetry_spans_dropped_total (\S+)$", text, re.M)
        assert dropped is not None
        # 60 calls, 2+ spans each, a queue of 16 and nothing accepting them.
        assert float(dropped.group(1)) > 0
    finally:
        trace_backend.restart()
