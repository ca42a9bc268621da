"""The streamable-HTTP data path, end to end: official SDK clients, real MCP servers, and
proxyrunner as a real process in between."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from mcp import Client

from tests.conftest import DemoProxy, StartProxy
from tests.helpers import (
    EVERYTHING,
    INIT,
    MCP_HEADERS,
    check_a_session_outlives_its_killed_child,
    http_backend,
    listen_stream,
    raw_initialize,
    raw_session,
    readyz_text,
    tool_text,
    tools_call,
    until_metric,
    whoami,
)
from tests.procs import Proc, eventually, free_port, http_status
from tests.raw_backend import RawBackend, ok_response, read_message


async def test_sdk_client_lists_and_calls_tools_through_the_proxy(demo_proxy: DemoProxy) -> None:
    proxy = demo_proxy()
    async with Client(proxy.url, mode="legacy") as client:
        tools = {tool.name for tool in (await client.list_tools()).tools}
        assert {"echo", "whoami"} <= tools
        result = await client.call_tool("echo", {"text": "through the proxy"})
        assert "through the proxy" in tool_text(result)
        assert (await whoami(client))["id"] == "alpha"


async def test_client_sees_only_the_proxy_session_id(demo_proxy: DemoProxy) -> None:
    proxy = demo_proxy()
    async with aiohttp.ClientSession() as http:
        direct_id = await raw_initialize(http, proxy.backends[0].url)
        proxied_id = await raw_initialize(http, proxy.url)
        assert proxied_id != direct_id
        assert len(proxied_id) >= 32
        assert all(0x21 <= ord(c) <= 0x7E for c in proxied_id)
        # The backend's id is not valid at the proxy: each side has its own namespace.
        async with http.post(
            proxy.url, json=tools_call(1), headers={**MCP_HEADERS, "Mcp-Session-Id": direct_id}
        ) as response:
            assert response.status == 404


@pytest.mark.timeout(120)
async def test_reference_everything_server_works_through_the_proxy(
    start_proxy: StartProxy, tmp_path: Path
) -> None:
    assert EVERYTHING.exists(), "run scripts/test (it installs tests/node) first"
    port = free_port()
    server = Proc(
        ["node", str(EVERYTHING), "streamableHttp"],
        tmp_path / "everything.log",
        {"PORT": str(port)},
    )
    try:
        await eventually(
            lambda: http_status(f"http://127.0.0.1:{port}/mcp") is not None,
            30,
            "server-everything to listen",
        )
        proxy = start_proxy({"name": "everything", "remote_url": f"http://127.0.0.1:{port}/mcp"})
        async with Client(proxy.url, mode="legacy") as client:
            tools = {tool.name for tool in (await client.list_tools()).tools}
            assert "echo" in tools
            result = await client.call_tool("echo", {"message": "hello everything"})
            assert "hello everything" in tool_text(result)
            resources = await client.list_resources()
            assert resources.resources
    finally:
        server.kill()


async def test_sessions_spread_over_two_backends_and_stay_on_their_own(
    demo_proxy: DemoProxy,
) -> None:
    proxy = demo_proxy("alpha", "beta")
    await eventually(lambda: "2 of 2" in readyz_text(proxy.base), 10, "both backends")
    placements: Counter[str] = Counter()
    for _ in range(4):
        async with Client(proxy.url, mode="legacy") as client:
            first = (await whoami(client))["id"]
            placements[first] += 1
            for _ in range(5):
                assert (await whoami(client))["id"] == first
    assert placements == Counter({"alpha": 2, "beta": 2})


async def test_every_supported_revision_initializes_through_the_proxy(
    demo_proxy: DemoProxy,
) -> None:
    proxy = demo_proxy()
    async with aiohttp.ClientSession() as http:
        for version in ("2025-03-26", "2025-06-18", "2025-11-25"):
            body = {**INIT, "params": {**INIT["params"], "protocolVersion": version}}  # type: ignore[dict-item]
            async with http.post(proxy.url, json=body, headers=MCP_HEADERS) as response:
                assert response.status == 200
                text = await response.text()
                assert f'"protocolVersion":"{version}"' in text.replace(" ", "")
                assert "Mcp-Session-Id" in response.headers


async def test_modern_stateless_revision_passes_through(demo_proxy: DemoProxy) -> None:
    proxy = demo_proxy()
    async with Client(proxy.url, mode="auto") as client:
        assert client.protocol_version == "2026-07-28"
        assert "through" in tool_text(await client.call_tool("echo", {"text": "through"}))


async def test_unknown_session_gets_404_with_jsonrpc_error_32001(demo_proxy: DemoProxy) -> None:
    proxy = demo_proxy()
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            proxy.url, json=tools_call(7), headers={**MCP_HEADERS, "Mcp-Session-Id": "nope"}
        ) as response,
    ):
        assert response.status == 404
        body = await response.json()
        assert body["error"]["code"] == -32001
        assert body["jsonrpc"] == "2.0"


async def test_deleted_session_cannot_be_used_again(demo_proxy: DemoProxy) -> None:
    proxy = demo_proxy()
    async with raw_session(proxy.url) as (http, session_id):
        headers = {**MCP_HEADERS, "Mcp-Session-Id": session_id}
        async with http.post(proxy.url, json=tools_call(1, text="x"), headers=headers) as response:
            assert response.status == 200
            await response.read()
        async with http.delete(proxy.url, headers=headers) as response:
            assert response.status in (200, 204)
        async with http.post(proxy.url, json=tools_call(2, text="x"), headers=headers) as response:
            assert response.status == 404
            assert (await response.json())["error"]["code"] == -32001


async def test_oversized_body_gets_413_with_jsonrpc_error(demo_proxy: DemoProxy) -> None:
    proxy = demo_proxy(max_request_body=4096)
    async with raw_session(proxy.url) as (http, session_id):
        big = tools_call(1, text="x" * 10_000)
        for headers in (MCP_HEADERS, {**MCP_HEADERS, "Mcp-Session-Id": session_id}):
            async with http.post(proxy.url, json=big, headers=headers) as response:
                assert response.status == 413
                assert (await response.json())["error"]["code"] == -32004

        async def chunked() -> Any:
            yield json.dumps(big).encode()

        async with http.post(
            proxy.url, data=chunked(), headers={**MCP_HEADERS, "Mcp-Session-Id": session_id}
        ) as response:
            assert response.status == 413
            assert (await response.json())["error"]["code"] == -32004


async def test_a_method_outside_the_transport_gets_405_with_a_jsonrpc_error(
    demo_proxy: DemoProxy,
) -> None:
    proxy = demo_proxy()
    async with aiohttp.ClientSession() as http, http.put(proxy.url, data=b"{}") as response:
        assert response.status == 405
        assert response.headers["Allow"] == "GET, POST, DELETE"
        assert (await response.json())["error"]["code"] == -32600


async def test_non_json_body_without_session_gets_400_parse_error(demo_proxy: DemoProxy) -> None:
    proxy = demo_proxy()
    async with aiohttp.ClientSession() as http:
        # Garbage, and an empty body (Content-Length: 0): both are a JSON parse error.
        for body in (b'{"initialize": nope', b""):
            async with http.post(proxy.url, data=body, headers=MCP_HEADERS) as response:
                assert response.status == 400, body
                assert (await response.json())["error"]["code"] == -32700


async def test_a_backend_refusing_connections_gives_502_with_32002_and_the_proxy_survives(
    start_proxy: StartProxy,
) -> None:
    async def answer_probes(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_message(reader)
            writer.write(ok_response(b"up"))
            await writer.drain()

    async with RawBackend(answer_probes) as backend:
        url = f"http://127.0.0.1:{backend.port}/mcp"
        proxy = await asyncio.to_thread(start_proxy, {"name": "demo", "remote_url": url})
        # The readiness probe keeps its keep-alive connection and still passes: the
        # request below is sent to a backend the proxy counts ready, and is refused.
        backend.stop_listening()
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", backend.port)
        async with (
            aiohttp.ClientSession() as http,
            http.post(proxy.url, json=tools_call(1), headers=MCP_HEADERS) as response,
        ):
            assert response.status == 502
            body = await response.json()
        assert body["error"]["code"] == -32002
        assert body["jsonrpc"] == "2.0"
        assert await asyncio.to_thread(http_status, f"{proxy.base}/health") == 200
        assert proxy.alive()


async def test_once_the_backend_is_gone_sessions_get_404_and_initialize_gets_503(
    demo_proxy: DemoProxy,
) -> None:
    proxy = demo_proxy()
    async with raw_session(proxy.url) as (http, session_id):
        proxy.backends[0].kill()
        await eventually(
            lambda: http_status(f"{proxy.base}/readyz") == 503, 10, "readiness to fail"
        )
        assert http_status(f"{proxy.base}/health") == 200
        # No backend to re-initialize the session on: the client is told to start over.
        headers = {**MCP_HEADERS, "Mcp-Session-Id": session_id}
        async with http.post(proxy.url, json=tools_call(1, text="x"), headers=headers) as response:
            assert response.status == 404
            assert (await response.json())["error"]["code"] == -32001
        async with http.post(proxy.url, json=INIT, headers=MCP_HEADERS) as response:
            assert response.status == 503
            assert response.headers["Retry-After"] == "1"
            assert (await response.json())["error"]["code"] == -32002
    assert proxy.alive()


@pytest.mark.parametrize("kind", ["GET /mcp", "subscriptions/listen"])
async def test_a_listen_stream_whose_client_went_away_is_let_go(
    kind: str, demo_proxy: DemoProxy
) -> None:
    # The stream held: the stop waits no longer. The keep-alive comment notices the
    # client is gone, so an interval well inside the wait below.
    proxy = demo_proxy(drain_timeout="3s", stream_keepalive="1s")
    async with aiohttp.ClientSession() as http, listen_stream(http, proxy, kind) as stream:
        await until_metric(proxy, "proxyrunner_inflight_requests", at_least=1)
        stream.close()
    await until_metric(proxy, "proxyrunner_inflight_requests", at_most=0, timeout=3)


@pytest.mark.timeout(90)
async def test_crashed_child_is_restarted_and_serves_again(start_proxy: StartProxy) -> None:
    proxy = start_proxy({"name": "demo", "cmd_args": [sys.executable, "-m", "proxyrunner.demo"]})
    async with Client(proxy.url, mode="legacy") as client:
        first = await whoami(client)
        os.kill(first["pid"], signal.SIGKILL)
    await eventually(
        lambda: http_status(f"{proxy.base}/readyz") == 503, 10, "the crash to be noticed"
    )
    await eventually(lambda: http_status(f"{proxy.base}/readyz") == 200, 30, "the child to be back")
    async with Client(proxy.url, mode="legacy") as client:
        again = await whoami(client)
    assert again["id"] == first["id"]
    assert again["pid"] != first["pid"]


async def test_session_survives_a_backend_restart_by_transparent_reinitialize(
    start_proxy: StartProxy,
) -> None:
    proxy = start_proxy({"name": "demo", "cmd_args": [sys.executable, "-m", "proxyrunner.demo"]})
    await check_a_session_outlives_its_killed_child(proxy)


async def test_metrics_count_requests_by_method_and_sessions(demo_proxy: DemoProxy) -> None:
    proxy = demo_proxy()
    async with Client(proxy.url, mode="legacy") as client:
        await client.call_tool("echo", {"text": "counted"})
    async with aiohttp.ClientSession() as http, http.get(f"{proxy.base}/metrics") as response:
        text = await response.text()
    assert 'proxyrunner_requests_total{method="tools/call",status="200"} 1.0' in text
    assert 'proxyrunner_requests_total{method="initialize",status="200"} 1.0' in text
    assert "proxyrunner_backends_ready 1.0" in text
    assert "proxyrunner_sessions_created_total 1.0" in text
    assert "proxyrunner_request_duration_seconds_bucket" in text
    assert http_status(f"{proxy.base}/health") == 200


def test_port_taken_is_a_startup_failure_exit_3(
    demo_proxy: DemoProxy, start_proxy: StartProxy
) -> None:
    first = demo_proxy()
    second = start_proxy({**first.config, "port": first.port}, wait=False, label="second")
    assert f"cannot listen on 127.0.0.1:{first.port}" in second.exits_with(3)


def test_backend_that_never_answers_is_a_startup_failure_exit_3(start_proxy: StartProxy) -> None:
    closed = free_port()
    proxy = start_proxy(
        {
            "name": "demo",
            "remote_url": f"http://127.0.0.1:{closed}/mcp",
            "backend_start_timeout": "1s",
        },
        wait=False,
    )
    assert "no backend answered within 1s" in proxy.exits_with(3)


def test_child_command_that_exits_at_once_is_a_startup_failure_naming_it(
    start_proxy: StartProxy,
) -> None:
    proxy = start_proxy(
        {
            "name": "demo",
            "cmd_args": [sys.executable, "-c", "import sys; print('boom'); sys.exit(4)"],
        },
        wait=False,
    )
    output = proxy.exits_with(3)
    assert "exited before it served" in output
    assert "boom" in output


async def test_backend_that_sends_no_headers_in_time_gets_504(start_proxy: StartProxy) -> None:
    stuck = asyncio.Event()

    async def never(request: web.Request) -> web.Response:
        await stuck.wait()  # released at the end of the test
        return web.Response()

    async with http_backend(never) as port:
        try:
            proxy = await asyncio.to_thread(
                start_proxy,
                {
                    "name": "demo",
                    "remote_url": f"http://127.0.0.1:{port}/mcp",
                    "backend_timeout": "1s",
                },
            )
            async with (
                aiohttp.ClientSession() as http,
                http.post(proxy.url, json=tools_call(1), headers=MCP_HEADERS) as response,
            ):
                assert response.status == 504
                assert (await response.json())["error"]["code"] == -32003
        finally:
            stuck.set()


async def test_backend_cookies_reach_their_client_and_are_never_replayed_for_another(
    start_proxy: StartProxy,
) -> None:
    seen_cookies: list[str | None] = []

    async def mcp(request: web.Request) -> web.Response:
        seen_cookies.append(request.headers.get("Cookie"))
        response = web.json_response({"jsonrpc": "2.0", "id": 1, "result": {}})
        response.headers["Set-Cookie"] = "affinity=backend-secret; Path=/"
        return response

    async with http_backend(mcp) as port:
        proxy = await asyncio.to_thread(
            # A host name, not an IP: aiohttp keeps cookies only for named hosts.
            start_proxy,
            {"name": "demo", "remote_url": f"http://localhost:{port}/mcp"},
        )
        async with (
            aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as first,
            first.post(proxy.url, json=tools_call(1), headers=MCP_HEADERS) as response,
        ):
            assert "affinity=backend-secret" in response.headers.get("Set-Cookie", "")
        async with (
            aiohttp.ClientSession() as second,
            second.post(proxy.url, json=tools_call(2), headers=MCP_HEADERS) as response,
        ):
            assert response.status == 200
        assert seen_cookies == [None, None]


@pytest.mark.timeout(90)
async def test_embedded_default_serves_two_demo_backends_and_drains(tmp_path: Path) -> None:
    port = free_port()
    proc = Proc(
        [sys.executable, "-m", "proxyrunner", "run", "--embedded", "--port", str(port),
         "--drain-delay", "0s", "--log-format", "json"],
        tmp_path / "embedded.log",
        {},
    )  # fmt: skip
    try:
        await eventually(
            lambda: "2 of 2" in readyz_text(f"http://127.0.0.1:{port}"), 60, "both backends"
        )
        seen = set()
        for _ in range(2):
            async with Client(f"http://127.0.0.1:{port}/mcp", mode="legacy") as client:
                seen.add((await whoami(client))["id"])
        assert seen == {"local-0", "local-1"}
    finally:
        assert await asyncio.to_thread(proc.stop, 20) == 0


async def test_a_dns_rebinding_page_cannot_reach_a_proxy_on_loopback(demo_proxy: DemoProxy) -> None:
    proxy = demo_proxy(allowed_hosts=["mcp.local"])
    attempts = [
        ({"Host": "evil.example.com"}, 421),
        ({"Origin": "http://evil.example.com"}, 403),
        ({"Origin": "http://localhost:3000"}, 200),  # a local web app
        ({"Host": "mcp.local:8080"}, 200),  # named in allowed_hosts
    ]
    async with aiohttp.ClientSession() as http:
        for extra, expected in attempts:
            async with http.post(
                proxy.url, json=INIT, headers={**MCP_HEADERS, **extra}
            ) as response:
                assert response.status == expected, extra
                if expected != 200:
                    assert (await response.json())["error"]["code"] == -32600
        async with http.get(f"{proxy.base}/health", headers={"Host": "10.1.2.3"}) as response:
            assert response.status == 200  # probes address the pod by IP: not guarded
