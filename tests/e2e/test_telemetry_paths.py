"""OpenTelemetry through the paths tests/e2e/test_telemetry.py leaves out, against real
Jaeger and OpenTelemetry-instrumented SDK peers: the legacy HTTP+SSE transport's message
POSTs, ``stdio_isolation: per-session`` (a process per session, each session its own
trace), a call authenticated with an OAuth token from a real IdP (``mcp.client.id``, and
the token in no span), and a request the proxy refuses (401) before any backend call."""

from __future__ import annotations

import asyncio
import base64
import json
import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from mcp import Client
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from tests.conftest import StartProxy
from tests.helpers import MCP_HEADERS, tool_text, tools_call, until_metric
from tests.identity_fixtures import CLIENT, SCOPE, StartIdp
from tests.identity_provider import Resource
from tests.procs import Proxy, free_port
from tests.trace_backend import Span, TraceBackend
from tests.trace_fixtures import StartTracedBackend
from tests.traced_server import stdio_command
from tests.traces import PROXY_SERVICE, WHOAMI, chain, new_context, telemetry

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[2]


def proxy_server_spans(spans: list[Span]) -> list[Span]:
    return [s for s in spans if s.service == PROXY_SERVICE and s.kind == "server"]


# --------------------------------------------------------------------- legacy HTTP+SSE


@pytest.fixture
def legacy_proxy(
    trace_backend: TraceBackend, start_traced_backend: StartTracedBackend, start_proxy: StartProxy
) -> Proxy:
    """A traced proxy serving the legacy transport in front of the traced SSE server."""
    backend = start_traced_backend("traced-sse", transport="sse")
    return start_proxy(
        {
            "name": "traced",
            "transport": "sse",
            "remote_url": backend.url,
            "telemetry_config": telemetry(trace_backend),
        }
    )


async def test_a_legacy_sse_message_post_continues_the_clients_trace_into_the_backend(
    trace_backend: TraceBackend, legacy_proxy: Proxy
) -> None:
    trace_id, parent, traceparent = new_context()
    # The SDK's SSE client sends its headers on the GET /sse and on every POST /messages.
    transport = sse_client(f"{legacy_proxy.base}/sse", headers={"traceparent": traceparent})
    async with Client(transport, mode="legacy") as client:
        seen = json.loads(tool_text(await client.call_tool("whoami_trace", {})))

    spans = await trace_backend.wait_for_spans(trace_id, WHOAMI)
    server, client_span, backend_span = chain(spans, parent, "whoami_trace")
    assert backend_span.parent_span_id == client_span.span_id
    assert seen["traceparent"].split("-")[2] == client_span.span_id
    assert server.attributes["mcp.method.name"] == "tools/call"
    assert server.attributes["gen_ai.tool.name"] == "whoami_trace"
    # The POST is answered 202: its result travels over the event stream.
    assert server.attributes["http.response.status_code"] == 202
    assert client_span.attributes["mcp.backend.name"] == "remote"
    assert client_span.attributes["server.address"] == "127.0.0.1"
    # The listen stream (GET /sse) is not an MCP operation: no span of its own.
    assert all(s.attributes.get("http.request.method") != "GET" for s in spans)


async def test_a_legacy_sse_message_with_its_context_in_meta_sends_the_proxys_context_on(
    trace_backend: TraceBackend, legacy_proxy: Proxy
) -> None:
    trace_id, parent, traceparent = new_context()
    async with Client(sse_client(f"{legacy_proxy.base}/sse"), mode="legacy") as client:
        result = await client.call_tool("whoami_trace", {}, meta={"traceparent": traceparent})
        seen = json.loads(tool_text(result))

    spans = await trace_backend.wait_for_spans(trace_id, WHOAMI)
    _, client_span, backend_span = chain(spans, parent, "whoami_trace")
    assert backend_span.parent_span_id == client_span.span_id
    # The backend reads _meta first: it must hold the proxy's client span, not the
    # client's own span (which would make the backend a sibling of the proxy's call).
    assert seen["traceparent"].split("-")[2] == client_span.span_id


async def test_a_legacy_sse_messages_server_span_names_its_session_and_revision(
    trace_backend: TraceBackend, legacy_proxy: Proxy
) -> None:
    trace_id, parent, traceparent = new_context()
    transport = sse_client(f"{legacy_proxy.base}/sse", headers={"traceparent": traceparent})
    async with Client(transport, mode="legacy") as client:
        await client.call_tool("whoami_trace", {})

    spans = await trace_backend.wait_for_spans(trace_id, WHOAMI)
    server, _, _ = chain(spans, parent, "whoami_trace")
    assert re.fullmatch(r"[0-9a-f]{12}", server.attributes.get("mcp.session.id", ""))
    assert server.attributes.get("mcp.protocol.version") == "2024-11-05"


# --------------------------------------------------------------------- per-session stdio


async def test_per_session_stdio_servers_each_trace_under_the_bridge_in_their_own_trace(
    trace_backend: TraceBackend, start_proxy: StartProxy
) -> None:
    proxy = start_proxy(
        {
            "name": "traced",
            "transport": "stdio",
            "stdio_isolation": "per-session",
            "cmd_args": stdio_command(trace_backend.otlp_http_endpoint, "traced-stdio"),
            "env_vars": {"PYTHONPATH": str(REPO)},
            "telemetry_config": telemetry(trace_backend),
        }
    )
    contexts = [new_context(), new_context()]
    both_open = asyncio.Barrier(2)
    both_counted = asyncio.Barrier(2)

    async def session(traceparent: str) -> dict[str, Any]:
        http = create_mcp_http_client(headers={"traceparent": traceparent})
        transport = streamable_http_client(proxy.url, http_client=http)
        async with http, Client(transport, mode="legacy") as client:
            await both_open.wait()  # two live sessions: two stdio processes
            seen: dict[str, Any] = json.loads(tool_text(await client.call_tool("whoami_trace", {})))
            await until_metric(proxy, "proxyrunner_stdio_children", at_least=2, at_most=2)
            # Leaving ends this session's process (DELETE): a session whose call is
            # still running would then count one.
            await both_counted.wait()
            return seen

    seen = await asyncio.gather(*(session(traceparent) for _, _, traceparent in contexts))

    hashes = []
    for (trace_id, parent, _), answer in zip(contexts, seen, strict=True):
        spans = await trace_backend.wait_for_spans(trace_id, WHOAMI)
        server, client_span, backend_span = chain(spans, parent, "whoami_trace")
        bridge = next(s for s in spans if s.name == "stdio tools/call whoami_trace")
        assert bridge.service == PROXY_SERVICE
        assert bridge.kind == "client"
        assert bridge.parent_span_id == client_span.span_id
        assert backend_span.parent_span_id == bridge.span_id
        assert backend_span.service == "traced-stdio"
        assert answer["traceparent"].split("-")[2] == bridge.span_id
        # Each session's spans are in its trace alone.
        assert {s.trace_id for s in spans} == {trace_id}
        hashes.append(server.attributes["mcp.session.id"])
    assert hashes[0] != hashes[1]


# --------------------------------------------------------------------- OAuth


class OAuthTraced:
    def __init__(self, proxy: Proxy, token: str) -> None:
        self.proxy = proxy
        self.token = token


@pytest.fixture
async def oauth_traced(
    trace_backend: TraceBackend,
    start_idp: StartIdp,
    start_traced_backend: StartTracedBackend,
    start_proxy: StartProxy,
) -> OAuthTraced:
    """A traced proxy with ``oidc_config`` against a real IdP, and a token for it."""
    port = free_port()
    resource = f"http://127.0.0.1:{port}/mcp"
    idp = await start_idp(resources={resource: Resource()})
    backend = start_traced_backend("traced-http")
    proxy = start_proxy(
        {
            "name": "traced",
            "remote_url": backend.url,
            "port": port,
            "oidc_config": {"issuer": idp.issuer, "resource_url": resource},
            "telemetry_config": telemetry(trace_backend),
        }
    )
    return OAuthTraced(proxy, await idp.token(CLIENT, resource=resource, scope=SCOPE))


def claims_of(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * 4))
    return decoded


def every_value(span: Span) -> list[str]:
    values = [span.name, *(str(v) for v in span.attributes.values())]
    for event in span.events:
        values += [event["name"], *(str(v) for v in event["attributes"].values())]
    return values


@pytest.mark.node
async def test_an_oauth_calls_server_span_names_the_tokens_client_and_no_span_holds_the_token(
    trace_backend: TraceBackend, oauth_traced: OAuthTraced
) -> None:
    token = oauth_traced.token
    client_id = claims_of(token)["client_id"]
    assert client_id == CLIENT
    trace_id, parent, traceparent = new_context()
    http = create_mcp_http_client(
        headers={"traceparent": traceparent, "Authorization": f"Bearer {token}"}
    )
    transport = streamable_http_client(oauth_traced.proxy.url, http_client=http)
    async with http, Client(transport, mode="legacy") as client:
        seen = json.loads(tool_text(await client.call_tool("whoami_trace", {})))

    spans = await trace_backend.wait_for_spans(trace_id, WHOAMI)
    server, client_span, backend_span = chain(spans, parent, "whoami_trace")
    assert backend_span.parent_span_id == client_span.span_id
    assert seen["traceparent"].split("-")[2] == client_span.span_id
    # Every request of the authenticated session names the client, on its server span.
    servers = proxy_server_spans(spans)
    assert {s.name for s in servers} >= {"initialize", "tools/call whoami_trace"}
    assert all(s.attributes["mcp.client.id"] == client_id for s in servers)
    assert server.attributes["mcp.client.id"] == client_id
    # The client's leg names the backend, not the client.
    assert "mcp.client.id" not in client_span.attributes
    signature = token.rsplit(".", 1)[1]
    for span in spans:
        for value in every_value(span):
            assert token not in value, (span.name, span.service)
            assert signature not in value, (span.name, span.service)


@pytest.mark.node
async def test_a_request_refused_401_is_a_traced_server_span_with_no_backend_call(
    trace_backend: TraceBackend, oauth_traced: OAuthTraced
) -> None:
    trace_id, parent, traceparent = new_context()
    headers = {**MCP_HEADERS, "traceparent": traceparent}
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            oauth_traced.proxy.url, json=tools_call(1, "whoami_trace"), headers=headers
        ) as response,
    ):
        assert response.status == 401

    def refused(spans: list[Span]) -> bool:
        return any(s.name == "tools/call whoami_trace" for s in proxy_server_spans(spans))

    # A client span would end before the server span it belongs to, and be queued (and
    # exported) before it: once the server span is stored, nothing else is to come.
    spans = await trace_backend.wait_for_spans(trace_id, refused)
    (server,) = proxy_server_spans(spans)
    assert server.parent_span_id == parent
    assert server.attributes["http.response.status_code"] == 401
    assert server.attributes["error.type"]
    assert "mcp.client.id" not in server.attributes
    assert [s for s in spans if s.kind == "client"] == []
    assert all(s.service == PROXY_SERVICE for s in spans)
