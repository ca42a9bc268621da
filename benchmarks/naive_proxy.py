"""A naive aiohttp reverse proxy: the floor any Python MCP proxy should beat.

One pooled ClientSession, streamed bodies both ways, headers copied except the
hop-by-hop ones, no sessions, default asyncio loop, no access log.
Usage: python naive_proxy.py --port 8081 --upstream http://127.0.0.1:8080
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator, Iterable

from aiohttp import ClientSession, ClientTimeout, TCPConnector, web
from multidict import CIMultiDictProxy

# Hop-by-hop headers (RFC 9110 7.6.1), plus Host: aiohttp sets it for the upstream.
NOT_FORWARDED = frozenset(
    {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection"}
    | {"te", "trailer", "transfer-encoding", "upgrade", "host"}
)
SESSION = web.AppKey("session", ClientSession)
UPSTREAM = web.AppKey("upstream", str)


def forwardable(headers: CIMultiDictProxy[str]) -> Iterable[tuple[str, str]]:
    drop = set(NOT_FORWARDED)
    for value in headers.getall("Connection", []):
        drop.update(token.strip().lower() for token in value.split(","))
    return [(name, value) for name, value in headers.items() if name.lower() not in drop]


async def handle(request: web.Request) -> web.StreamResponse:
    body = request.content if request.body_exists else None
    url = request.app[UPSTREAM] + request.rel_url.path_qs
    headers = list(forwardable(request.headers))
    async with request.app[SESSION].request(
        request.method, url, headers=headers, data=body, allow_redirects=False
    ) as upstream:
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        for name, value in forwardable(upstream.headers):
            response.headers.add(name, value)
        await response.prepare(request)
        async for chunk in upstream.content.iter_any():
            await response.write(chunk)
        await response.write_eof()
        return response


async def client_session(app: web.Application) -> AsyncIterator[None]:
    connector = TCPConnector(limit=0, limit_per_host=0)
    timeout = ClientTimeout(total=None, sock_connect=5)
    async with ClientSession(connector=connector, timeout=timeout, auto_decompress=False) as s:
        app[SESSION] = s
        yield


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="origin, e.g. http://127.0.0.1:8080")
    args = parser.parse_args()
    app = web.Application()
    app[UPSTREAM] = args.upstream.rstrip("/")
    app.cleanup_ctx.append(client_session)
    app.router.add_route("*", "/{tail:.*}", handle)
    web.run_app(app, host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
