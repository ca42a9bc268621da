"""The aiohttp application: MCP routes and the operational endpoints.

/health answers from process state only (liveness must not depend on a backend or Redis,
or a backend outage would restart every proxy); /readyz says whether this replica should
get new traffic, with the reasons when it should not.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Final

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from proxyrunner.proxy.protocol import INVALID_REQUEST, error_response
from proxyrunner.proxy.rebinding import RebindingGuard, guarded
from proxyrunner.proxy.sse import LegacySSEProxy
from proxyrunner.proxy.streamable import ProxyParts, StreamableHTTPProxy

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ServingState:
    """Whether this replica takes new traffic. Set by the lifecycle, read by /readyz."""

    def __init__(self) -> None:
        self.draining = False


PARTS_KEY: Final = web.AppKey("proxy_parts", ProxyParts)
STATE_KEY: Final = web.AppKey("serving_state", ServingState)


def _json(status: int, doc: dict[str, object]) -> web.Response:
    return web.Response(status=status, text=json.dumps(doc), content_type="application/json")


async def _health(request: web.Request) -> web.Response:
    return _json(200, {"status": "ok"})


async def _ready(request: web.Request) -> web.Response:
    parts = request.app[PARTS_KEY]
    reasons: list[str] = []
    if request.app[STATE_KEY].draining:
        reasons.append("draining: the process is shutting down")
    if not parts.directory.ready_backends():
        reasons.append(f"no backend ready ({parts.directory.describe()})")
    store_health = parts.store.health()
    if not store_health.usable:
        reasons.append(f"session store unusable: {store_health.reason}")
    if reasons:
        return _json(503, {"status": "not ready", "reasons": reasons})
    return _json(
        200,
        {
            "status": "ready",
            "backends": parts.directory.describe(),
            "session_store": store_health.reason,
        },
    )


async def _method_not_allowed(request: web.Request) -> web.Response:
    return error_response(
        405,
        INVALID_REQUEST,
        f"{request.method} is not part of MCP's streamable HTTP transport",
        headers={"Allow": "GET, POST, DELETE"},
    )


async def _metrics(request: web.Request) -> web.Response:
    body = request.app[PARTS_KEY].metrics.render()
    response = web.Response(body=body)
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


def _tracked(parts: ProxyParts, handler: Handler) -> Handler:
    """Count the request as in flight, so that drain knows when the work is done."""
    traffic = parts.streams

    async def tracked(request: web.Request) -> web.StreamResponse:
        traffic.inflight += 1
        try:
            return await handler(request)
        except asyncio.CancelledError:
            if traffic.closing:
                traffic.cancelled += 1
            raise
        finally:
            traffic.inflight -= 1

    return tracked


def build_app(parts: ProxyParts, state: ServingState) -> web.Application:
    app = web.Application(
        client_max_size=parts.config.listen.max_request_body,
        handler_args={"max_field_size": 16 * 1024},
    )
    app[PARTS_KEY] = parts
    app[STATE_KEY] = state
    parts.metrics.inflight.set_function(lambda: parts.streams.inflight)
    guard = RebindingGuard(parts.config.listen.host, parts.config.listen.allowed_hosts)
    if parts.config.backend.served_protocol == "sse":
        # A legacy SSE backend is served to clients as what it is (and a stdio one as
        # legacy SSE when proxy_mode asks for it).
        legacy = LegacySSEProxy(parts)
        app.router.add_get("/sse", guarded(guard, _tracked(parts, legacy.stream)))
        message = guarded(guard, _tracked(parts, legacy.message))
        app.router.add_post("/messages", message)
        app.router.add_post("/messages/", message)
    else:
        handle = guarded(guard, _tracked(parts, StreamableHTTPProxy(parts).handle))
        for method in ("POST", "GET", "DELETE"):
            app.router.add_route(method, "/mcp", handle)
        for method in ("PUT", "PATCH"):
            app.router.add_route(method, "/mcp", _method_not_allowed)
    app.router.add_get("/health", _health)
    app.router.add_get("/readyz", _ready)
    app.router.add_get("/metrics", _metrics)
    return app
