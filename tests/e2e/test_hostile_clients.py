"""Hostile clients against real proxies: what a client may send must never reach past the
proxy as something else, crash it, or leak what other parties trust it with.

Every case here was first reproduced against a live proxy on loopback (issue 10)."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import DemoProxy, StartBackend, StartProxy
from tests.helpers import (
    DEMO_STDIO,
    INIT,
    MCP_HEADERS,
    META_2026,
    MODERN,
    answer_of,
    raw_initialize,
    readyz_text,
    serving,
    tools_call,
)
from tests.procs import Proxy, eventually, http_status
from tests.redis_server import RedisServer

pytestmark = pytest.mark.timeout(90)

# --------------------------------------------------------------------- odd JSON-RPC ids

ODD_IDS: list[Any] = [[1, 2], {}, {"a": 1}, 1.5, 1e3, True, False, "x" * 257, 2**63]


def _kinds(odd: Any) -> list[tuple[str, Any]]:
    """What a client can put an odd id in: a response, a request, a batch member."""
    return [
        ("response", {"jsonrpc": "2.0", "id": odd, "result": {}}),
        ("request", {"jsonrpc": "2.0", "id": odd, "method": "ping"}),
        ("batch member", [{"jsonrpc": "2.0", "id": 1, "method": "ping"}, tools_call(odd)]),
    ]


async def _refused_as_invalid(response: aiohttp.ClientResponse, what: str) -> None:
    assert response.status == 400, f"{what}: {response.status} {await response.text()}"
    answer = await response.json()
    assert answer["id"] is None, what
    assert answer["error"]["code"] == -32600, what


async def _check_odd_ids_refused(http: aiohttp.ClientSession, url: str, session: str) -> None:
    headers = {**MCP_HEADERS, "Mcp-Session-Id": session}
    for odd in ODD_IDS:
        for kind, body in _kinds(odd):
            async with http.post(url, json=body, headers=headers) as response:
                await _refused_as_invalid(response, f"{kind} with id {odd!r:.40}")


async def test_odd_ids_get_400_invalid_request_through_the_streamable_proxy(
    demo_proxy: DemoProxy,
) -> None:
    proxy = demo_proxy()
    async with aiohttp.ClientSession() as http:
        await _check_odd_ids_refused(http, proxy.url, await raw_initialize(http, proxy.url))


async def test_odd_ids_get_400_invalid_request_not_500_in_front_of_a_stdio_server(
    start_proxy: StartProxy,
) -> None:
    # The bridge keyed a map with the id: an array there was a 500 and a traceback.
    proxy = start_proxy(DEMO_STDIO)
    async with aiohttp.ClientSession() as http:
        await _check_odd_ids_refused(http, proxy.url, await raw_initialize(http, proxy.url))
    assert "Traceback" not in proxy.output()


async def test_odd_ids_get_400_invalid_request_on_legacy_message_posts(
    demo_proxy: DemoProxy,
) -> None:
    proxy = demo_proxy(transport="sse")
    async with aiohttp.ClientSession() as http, http.get(f"{proxy.base}/sse") as stream:
        endpoint = (await stream.content.readuntil(b"\n\n")).split(b"data: ", 1)[1].strip()
        url = f"{proxy.base}{endpoint.decode()}"
        for odd in ODD_IDS:
            for kind, body in _kinds(odd):
                async with http.post(url, json=body) as response:
                    await _refused_as_invalid(response, f"legacy {kind} with id {odd!r:.40}")


async def test_ids_mcp_allows_and_id_keys_inside_params_pass(demo_proxy: DemoProxy) -> None:
    proxy = demo_proxy()
    async with aiohttp.ClientSession() as http:
        session = await raw_initialize(http, proxy.url)
        headers = {**MCP_HEADERS, "Mcp-Session-Id": session}
        for good in ["y" * 256, -(2**63), 2**63 - 1, 7]:
            call = tools_call(good, text="fine")
            call["params"]["_meta"] = {"id": {"nested": [1.5]}}  # not the message's id
            async with http.post(proxy.url, json=call, headers=headers) as response:
                assert response.status == 200, await response.text()
                answer = await answer_of(response)
            assert answer["id"] == good
            assert answer["result"]["content"][0]["text"] == "fine"


# --------------------------------------------------------------- nothing secret in logs

TOKEN = "Bearer hostile-secret-token-4711"
# Requests aiohttp's parser refuses, each with the token where the parser quotes the bytes
# around the fault in its exception (the last one: the fault is in the token's own line).
MALFORMED = [
    f"POST /mcp HTTP/1.1\r\nHost: x\r\nAuthorization: {TOKEN}\r\nContent-Length: abc\r\n\r\n",
    f"GET /mcp HTTP/1.1\r\nHost: x\r\nAuthorization: {TOKEN}\r\nBad Header\r\n\r\n",
    f"GET /mcp HTTP/1.1\r\nHost: x\r\nAuthorization: {TOKEN}\x01x\r\n\r\n",
]


async def _send_raw(proxy: Proxy, raw: str) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        writer.write(raw.encode("latin-1"))
        await writer.drain()
        return await reader.read()  # the parser's 400, then the close
    finally:
        writer.close()
        await writer.wait_closed()


def _parser_rejections(proxy: Proxy) -> int:
    return sum(
        "request rejected by the HTTP parser" in str(event.get("event"))
        for event in proxy.log_events()
    )


async def test_a_request_the_parser_refuses_leaves_no_header_value_in_the_log(
    demo_proxy: DemoProxy,
) -> None:
    proxy = demo_proxy()
    for raw in MALFORMED:
        assert (await _send_raw(proxy, raw)).startswith(b"HTTP/1.0 400")
    await eventually(lambda: _parser_rejections(proxy) == len(MALFORMED), 10, "the log lines")
    assert "hostile-secret-token" not in proxy.output()
    line = next(e for e in proxy.log_events() if "HTTP parser" in str(e.get("event")))
    assert line["level"] == "info"
    assert "BadHttpMessage" in line["event"] or "InvalidHeader" in line["event"]
    assert "exception" not in line


async def test_backend_urls_are_logged_without_their_userinfo(
    start_backend: StartBackend, start_proxy: StartProxy
) -> None:
    alpha = start_backend("alpha")
    url = alpha.url.replace("://", "://operator:hunter2-password@")
    proxy = start_proxy({"name": "demo", "remote_url": url})
    async with aiohttp.ClientSession() as http:
        await raw_initialize(http, proxy.url)
    proxy.stop()
    assert "backend ready" in [e.get("event") for e in proxy.log_events()]
    assert "hunter2-password" not in proxy.output()
    assert "operator" not in proxy.output()


async def test_readyz_shows_states_not_addresses(
    start_backend: StartBackend, start_proxy: StartProxy, redis_server: RedisServer
) -> None:
    alpha = start_backend("alpha")
    config = {
        "name": "demo",
        "remote_url": alpha.url,
        "session_redis": {"address": redis_server.address, "db": 0, "key_prefix": "ready"},
    }
    proxy = start_proxy(config, env={"THV_SESSION_REDIS_PASSWORD": redis_server.password})
    ready = json.loads(await asyncio.to_thread(readyz_text, proxy.base))
    assert ready["status"] == "ready"
    assert ready["session_store"] == "redis reachable"
    assert "1 of 1" in ready["backends"]
    redis_server.kill()
    await eventually(lambda: "unreachable" in readyz_text(proxy.base), 15, "redis to be missed")
    unready = readyz_text(proxy.base)
    for address in (str(redis_server.port), str(alpha.port), "127.0.0.1"):
        assert address not in json.dumps(ready) + unready


SECRET_ENV = {
    "THV_SESSION_REDIS_PASSWORD": "redis-secret-1",
    "TOOLHIVE_SECRET_TOKEN": "toolhive-secret-2",
    "PROXY_ONLY_SETTING": "not-for-children-3",
}


def _env_printer(out: Path, transport: str) -> list[str]:
    """A real child that writes its environment to ``out``, then becomes the demo server."""
    script = (
        "import json, os, sys; "
        f"open({str(out)!r}, 'w').write(json.dumps(dict(os.environ))); "
        "os.execv(sys.executable, [sys.executable, '-m', 'proxyrunner.demo'])"
    )
    return [sys.executable, "-c", script]


@pytest.mark.parametrize("transport", ["stdio", "streamable-http"])
async def test_a_child_process_gets_a_minimal_environment_without_the_proxys_secrets(
    start_proxy: StartProxy, tmp_path: Path, transport: str
) -> None:
    out = tmp_path / f"child-env-{transport}.json"
    config = {
        "name": "demo",
        "transport": transport,
        "cmd_args": _env_printer(out, transport),
        "env_vars": {"SERVER_SETTING": "configured"},
    }
    start_proxy(config, env={**SECRET_ENV, "LC_ALL": "C.UTF-8", "TZ": "UTC"})
    # A stdio child is started behind a bridge that may be ready first.
    await eventually(lambda: out.exists() and out.stat().st_size > 0, 15, "the child's env")
    seen: dict[str, str] = json.loads(out.read_text())
    for name in SECRET_ENV:
        assert name not in seen
    assert not [name for name in seen if name.startswith(("THV_", "TOOLHIVE_"))]
    assert seen["SERVER_SETTING"] == "configured"
    assert seen["MCP_TRANSPORT"] == transport
    assert (seen["LC_ALL"], seen["TZ"]) == ("C.UTF-8", "UTC")
    assert "PATH" in seen
    allowed = {"PATH", "HOME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "SERVER_SETTING"}
    transport_vars = {"MCP_TRANSPORT", "MCP_HOST", "MCP_PORT", "PORT", "DEMO_BACKEND_ID"}
    marker = {"PROXYRUNNER_TEST_RUN"}  # the test run's own env_vars entry (tests/procs.py)
    extra = set(seen) - allowed - transport_vars - marker
    assert not {name for name in extra if not name.startswith("LC_")}


# ------------------------------------------------------------------- forwarding headers

CLAIMS = {
    "X-Forwarded-For": "203.0.113.66",
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Host": "bank.example",
    "Forwarded": "for=203.0.113.66;proto=https;host=bank.example",
}
FORWARDING = ("x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "forwarded")


async def _what_a_backend_sees(
    start_proxy: StartProxy, query: str = "", **config: Any
) -> list[tuple[str, str, dict[str, str]]]:
    """(method, query string, forwarding headers) of each request a recording backend gets
    when a client sends CLAIMS and a query of its own: a POST on the pooled client, a
    DELETE on ClientSession."""
    seen: list[tuple[str, str, dict[str, str]]] = []

    async def record(request: web.Request) -> web.Response:
        if request.path == "/":
            return web.Response(text="up")  # the readiness probe
        got = {k.lower(): v for k, v in request.headers.items() if k.lower() in FORWARDING}
        seen.append((request.method, request.query_string, got))
        if request.method == "DELETE":
            return web.Response(status=204)
        response = web.json_response({"jsonrpc": "2.0", "id": 0, "result": {}})
        response.headers["Mcp-Session-Id"] = "backend-session"
        return response

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    async with serving(app) as base:
        proxy = start_proxy(
            {"name": "demo", "remote_url": f"{base}/mcp{query}", **config},
            wait=False,  # the backend runs on this loop: wait without blocking it
        )
        await eventually(lambda: http_status(f"{proxy.base}/readyz") == 200, 30, "the proxy")
        url = f"{proxy.url}?tenant=client-chosen&debug=1"
        async with aiohttp.ClientSession() as http:
            async with http.post(url, json=INIT, headers={**MCP_HEADERS, **CLAIMS}) as r:
                assert r.status == 200, await r.text()
                session = r.headers["Mcp-Session-Id"]
            headers = {**CLAIMS, "Mcp-Session-Id": session}
            async with http.delete(url, headers=headers) as r:
                assert r.status == 204
    return seen


async def test_client_forwarding_headers_are_replaced_and_forwarded_is_dropped(
    start_proxy: StartProxy,
) -> None:
    seen = await _what_a_backend_sees(start_proxy)
    assert [method for method, _, _ in seen] == ["POST", "DELETE"]
    for method, _, headers in seen:
        assert headers["x-forwarded-for"] == "127.0.0.1", method
        assert headers["x-forwarded-proto"] == "http", method
        assert headers["x-forwarded-host"].startswith("127.0.0.1:"), method
        assert "forwarded" not in headers, method


async def test_a_trusted_proxys_forwarding_headers_are_kept_and_appended_to(
    start_proxy: StartProxy,
) -> None:
    seen = await _what_a_backend_sees(start_proxy, trust_proxy_headers=True)
    for method, _, headers in seen:
        assert headers["x-forwarded-for"] == "203.0.113.66, 127.0.0.1", method
        assert headers["x-forwarded-proto"] == "https", method
        assert headers["x-forwarded-host"] == "bank.example", method
        assert headers["forwarded"] == CLAIMS["Forwarded"], method


async def test_the_backend_urls_query_is_kept_and_a_clients_is_not_forwarded(
    start_proxy: StartProxy,
) -> None:
    seen = await _what_a_backend_sees(start_proxy, query="?tenant=configured")
    assert [(method, query) for method, query, _ in seen] == [
        ("POST", "tenant=configured"),
        ("DELETE", "tenant=configured"),
    ]
    without = await _what_a_backend_sees(start_proxy)
    assert [query for _, query, _ in without] == ["", ""]


# ------------------------------------------------------------ the 2026-07-28 header check


async def test_an_older_header_does_not_let_a_2026_body_skip_the_standard_header_check(
    demo_proxy: DemoProxy,
) -> None:
    proxy = demo_proxy()
    call = tools_call("mixed", text="routed on one value, run on another")
    call["params"]["_meta"] = META_2026
    headers = {
        **MCP_HEADERS,
        "MCP-Protocol-Version": "2025-06-18",
        "Mcp-Method": "tools/list",  # what an intermediary acting on headers believes
    }
    async with (
        aiohttp.ClientSession() as http,
        http.post(proxy.url, json=call, headers=headers) as r,
    ):
        assert r.status == 400, await r.text()
        answer = await r.json()
    assert answer["error"]["code"] == -32020
    assert answer["id"] == "mixed"


@pytest.mark.parametrize("by", ["header", "envelope"])
async def test_a_batch_in_revision_2026_07_28_is_refused(demo_proxy: DemoProxy, by: str) -> None:
    proxy = demo_proxy()
    batch = [
        {"jsonrpc": "2.0", "id": n, "method": "tools/list", "params": {"_meta": META_2026}}
        for n in (1, 2)
    ]
    headers = {**MCP_HEADERS, "Mcp-Method": "tools/list"}
    if by == "header":
        headers["MCP-Protocol-Version"] = MODERN
    async with (
        aiohttp.ClientSession() as http,
        http.post(proxy.url, json=batch, headers=headers) as r,
    ):
        assert r.status == 400, await r.text()
        answer = await r.json()
    assert answer["error"]["code"] == -32600
    assert "batch" in answer["error"]["message"]
