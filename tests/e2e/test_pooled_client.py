"""The pooled backend client, end to end: proxyrunner as a real process in front of
hand-written backends (aiohttp applications, or raw asyncio servers where a backend has
to misbehave). A POST with its body in memory goes through the pooled client; the tests
check that clients see what they saw through aiohttp's ClientSession."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from aiohttp import web

from tests.conftest import StartProxy
from tests.helpers import INIT, MCP_HEADERS, http_backend, tools_call
from tests.procs import Proxy
from tests.raw_backend import RawBackend, ok_response, read_message

BACKEND_SESSION = b"Mcp-Session-Id: backend-session\r\n"


async def start(start_proxy: StartProxy, port: int, **config: Any) -> Proxy:
    return await asyncio.to_thread(
        start_proxy, {"name": "demo", "remote_url": f"http://127.0.0.1:{port}/mcp", **config}
    )


async def test_backend_closing_keep_alive_connections_between_requests_is_invisible(
    start_proxy: StartProxy,
) -> None:
    posts = 0

    # Answers one request per connection and closes it, without Connection: close: what a
    # backend with a short keep-alive timeout looks like to a pooled client.
    async def one_answer_per_connection(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        nonlocal posts
        head, body = await read_message(reader)
        if head.startswith(b"POST"):
            posts += 1
            request_id = 0 if b'"initialize"' in body else posts
            result = b'{"jsonrpc":"2.0","id":%d,"result":{}}' % request_id
            writer.write(ok_response(result, extra=BACKEND_SESSION))
        else:
            writer.write(ok_response(b"up"))  # the readiness probe
        await writer.drain()

    async with RawBackend(one_answer_per_connection) as backend:
        proxy = await start(start_proxy, backend.port)
        async with aiohttp.ClientSession() as http:
            async with http.post(proxy.url, json=INIT, headers=MCP_HEADERS) as response:
                assert response.status == 200
                session_id = response.headers["Mcp-Session-Id"]
            assert session_id != "backend-session"
            for request_id in range(2, 7):
                async with http.post(
                    proxy.url,
                    json=tools_call(request_id),
                    headers={**MCP_HEADERS, "Mcp-Session-Id": session_id},
                ) as response:
                    assert response.status == 200
                    assert (await response.json())["id"] == request_id
                    assert response.headers["Mcp-Session-Id"] == session_id
    assert posts == 6


async def test_chunked_json_answer_is_relayed_whole(start_proxy: StartProxy) -> None:
    result = b'{"jsonrpc":"2.0","id":1,"result":{"content":[]}}'

    async def chunked(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        for start_at in range(0, len(result), 7):
            await response.write(result[start_at : start_at + 7])
        await response.write_eof()
        return response

    async with http_backend(chunked) as port:
        proxy = await start(start_proxy, port)
        async with aiohttp.ClientSession() as http:
            for request_id in (1, 2):
                async with http.post(
                    proxy.url, json=tools_call(request_id), headers=MCP_HEADERS
                ) as response:
                    assert response.status == 200
                    assert response.content_type == "application/json"
                    assert await response.read() == result


async def test_event_stream_answer_to_a_post_is_relayed_event_by_event(
    start_proxy: StartProxy,
) -> None:
    release_result = asyncio.Event()

    async def progress_then_result(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b'event: message\ndata: {"method":"notifications/progress"}\n\n')
        await release_result.wait()
        await response.write(b'event: message\ndata: {"jsonrpc":"2.0","id":1,"result":{}}\n\n')
        await response.write_eof()
        return response

    async with http_backend(progress_then_result) as port:
        proxy = await start(start_proxy, port)
        async with (
            aiohttp.ClientSession() as http,
            http.post(proxy.url, json=tools_call(1), headers=MCP_HEADERS) as response,
        ):
            assert response.status == 200
            assert response.content_type == "text/event-stream"
            # The progress event reaches the client while the backend holds the result.
            first = await response.content.readuntil(b"\n\n")
            assert b"notifications/progress" in first
            release_result.set()
            rest = await response.content.read()
            assert rest == b'event: message\ndata: {"jsonrpc":"2.0","id":1,"result":{}}\n\n'


async def test_backend_timeout_gives_504_and_the_next_request_is_served(
    start_proxy: StartProxy,
) -> None:
    stuck = asyncio.Event()
    calls = 0

    async def first_call_hangs(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            await stuck.wait()  # released at the end of the test
        return web.json_response({"jsonrpc": "2.0", "id": calls, "result": {}})

    async with http_backend(first_call_hangs) as port:
        try:
            proxy = await start(start_proxy, port, backend_timeout="1s")
            async with aiohttp.ClientSession() as http:
                async with http.post(
                    proxy.url, json=tools_call(1), headers=MCP_HEADERS
                ) as response:
                    assert response.status == 504
                    assert (await response.json())["error"]["code"] == -32003
                async with http.post(
                    proxy.url, json=tools_call(2), headers=MCP_HEADERS
                ) as response:
                    assert response.status == 200
                    assert (await response.json())["id"] == 2
        finally:
            stuck.set()


async def test_backend_that_drops_the_request_gives_502_and_it_is_not_resent(
    start_proxy: StartProxy,
) -> None:
    posts = 0

    async def drop_posts(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal posts
        head, _ = await read_message(reader)
        if head.startswith(b"POST"):
            posts += 1
            return  # close without an answer
        writer.write(ok_response(b"up"))
        await writer.drain()

    async with RawBackend(drop_posts) as backend:
        proxy = await start(start_proxy, backend.port)
        async with (
            aiohttp.ClientSession() as http,
            http.post(proxy.url, json=tools_call(1), headers=MCP_HEADERS) as response,
        ):
            assert response.status == 502
            assert (await response.json())["error"]["code"] == -32002
    assert posts == 1


async def test_large_answers_arrive_intact(start_proxy: StartProxy) -> None:
    # One under the proxy's buffering limit (relayed in one write), one over (streamed).
    bodies = {
        "small": b'{"data":"' + b"s" * 700_000 + b'"}',
        "large": b'{"data":"' + bytes(range(97, 123)) * 200_000 + b'"}',
    }

    async def sized(request: web.Request) -> web.Response:
        doc = await request.json()
        return web.Response(
            body=bodies[doc["params"]["arguments"]["size"]], content_type="application/json"
        )

    async with http_backend(sized) as port:
        proxy = await start(start_proxy, port)
        async with aiohttp.ClientSession() as http:
            for size, body in bodies.items():
                async with http.post(
                    proxy.url, json=tools_call(1, size=size), headers=MCP_HEADERS
                ) as response:
                    assert response.status == 200
                    assert await response.read() == body


async def test_backend_sees_the_same_headers_from_either_client_path(
    start_proxy: StartProxy,
) -> None:
    # A query string in the backend's URL sends a POST through aiohttp's ClientSession;
    # without one it takes the pooled client. The backend must not be able to tell the
    # two apart.
    seen: list[list[tuple[str, str]]] = []

    async def record(request: web.Request) -> web.Response:
        body = await request.read()
        if b'"initialize"' in body:
            response = web.json_response({"jsonrpc": "2.0", "id": 0, "result": {}})
            response.headers["Mcp-Session-Id"] = "backend-session"
            return response
        # Two proxies, two ports: X-Forwarded-Host differs by its port alone.
        seen.append(
            sorted(
                (
                    name.lower(),
                    value.rsplit(":", 1)[0] if name.lower() == "x-forwarded-host" else value,
                )
                for name, value in request.headers.items()
            )
        )
        return web.json_response({"jsonrpc": "2.0", "id": 1, "result": {}})

    hop_by_hop = {
        "Connection": "keep-alive, X-Hop",
        "X-Hop": "must not cross",
        "Keep-Alive": "timeout=5",
        "X-Custom": "crosses",
        "X-Forwarded-For": "10.1.2.3",
        "Cookie": "a=b",
        "Authorization": "Bearer token",
    }
    # The bare client sends no Accept, Accept-Encoding, Content-Type or User-Agent: what
    # the proxy adds for the backend then has to be the same on both paths.
    bare = aiohttp.ClientSession(
        skip_auto_headers=("Accept", "Accept-Encoding", "Content-Type", "User-Agent")
    )
    async with http_backend(record) as port, aiohttp.ClientSession() as http, bare:
        pooled_proxy = await start(start_proxy, port)
        queried = await asyncio.to_thread(
            start_proxy,
            {"name": "demo", "remote_url": f"http://127.0.0.1:{port}/mcp?via=client-session"},
        )
        sessions = {}
        for proxy in (pooled_proxy, queried):
            async with http.post(proxy.url, json=INIT, headers=MCP_HEADERS) as response:
                sessions[proxy.url] = response.headers["Mcp-Session-Id"]
        session_id = "<per proxy>"
        cases: list[tuple[aiohttp.ClientSession, dict[str, str]]] = [
            (http, MCP_HEADERS),
            (http, {**MCP_HEADERS, "Mcp-Session-Id": session_id}),
            (bare, {}),
            (bare, {"Mcp-Session-Id": session_id}),
            (http, hop_by_hop),
            (http, {**hop_by_hop, "Mcp-Session-Id": session_id}),
        ]
        for client, headers in cases:
            seen.clear()
            for url, own in sessions.items():
                sent = (
                    {**headers, "Mcp-Session-Id": own} if "Mcp-Session-Id" in headers else headers
                )
                async with client.post(
                    url, data=b'{"jsonrpc":"2.0","id":1,"method":"ping"}', headers=sent
                ) as response:
                    assert response.status == 200
            pooled, client_session = seen
            assert pooled == client_session, headers
            names = {name for name, _ in pooled}
            assert {"host", "content-length", "accept"} <= names
            # Only a client that accepts compressed answers lets the backend send one.
            assert ("accept-encoding" in names) == (client is http), headers
            assert {"x-hop", "keep-alive", "connection"}.isdisjoint(names)
            if "Mcp-Session-Id" in headers:
                assert ("mcp-session-id", "backend-session") in pooled
            else:
                assert "mcp-session-id" not in names
            if "X-Forwarded-For" in headers:
                # Not a trusted proxy (trust_proxy_headers is off): the client's is replaced.
                assert ("x-forwarded-for", "127.0.0.1") in pooled
                assert ("x-custom", "crosses") in pooled
