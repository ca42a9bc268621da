"""The aiohttp application: the request pipeline on the MCP routes, and the operational
endpoints.

/health answers from process state only (liveness must not depend on a backend or Redis,
or a backend outage would restart every proxy); /readyz says whether this replica should
get new traffic, with the reasons when it should not. Neither passes the pipeline: probes
address the pod by IP, and nothing there reaches a backend.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Final

from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CONTENT_TYPE_LATEST

from proxyrunner.http_answers import error_response
from proxyrunner.mcp import jsonrpc
from proxyrunner.mcp.rebinding import RebindingRule
from proxyrunner.proxy.legacy import LegacySSE
from proxyrunner.proxy.parts import ProxyParts
from proxyrunner.proxy.pipeline import Next, Stage, compose
from proxyrunner.proxy.relay import Relay
from proxyrunner.proxy.routing import Router
from proxyrunner.proxy.stages.body import BodyLimits
from proxyrunner.proxy.stages.ids import IdCheck
from proxyrunner.proxy.stages.rebinding import RebindingGuard
from proxyrunner.proxy.stages.standard_headers import StandardHeaderCheck
from proxyrunner.proxy.stages.telemetry import TelemetryStage
from proxyrunner.proxy.stream_caps import StreamCaps
from proxyrunner.proxy.streamable import StreamableHTTP

PARTS_KEY: Final = web.AppKey("proxy_parts", ProxyParts)


def default_stages(parts: ProxyParts) -> list[Stage]:
    """The ordered stages every MCP request passes before it is routed. A stage that is
    off is not in the list. New stages (authentication, authorization, audit, telemetry)
    go between the header check and routing."""
    config = parts.config
    rule = RebindingRule(config.listen.host, config.listen.allowed_hosts)
    return [
        *([RebindingGuard(rule)] if rule.active else []),  # 421 / 403
        BodyLimits(  # 413, 408, 400; the body read once
            config.listen.max_request_body,
            config.limits.body_timeout,
            parts.metrics.connections_closed.labels(reason="body_timeout").inc,
        ),
        # With telemetry_config: spans and operation durations, refusals below included.
        *([TelemetryStage(parts.telemetry)] if parts.telemetry is not None else []),
        IdCheck(),  # odd JSON-RPC ids: 400 / -32600
        StandardHeaderCheck(parts.log),  # 2026-07-28: 400 / -32020
        # With oidc_config / authz_config / audit_config: audit (records every outcome
        # below), authentication (401 / 403 insufficient_scope), authorization (403).
        *parts.guard.stages,
    ]


def _json(status: int, doc: dict[str, object]) -> web.Response:
    return web.Response(status=status, text=json.dumps(doc), content_type="application/json")


async def _health(request: web.Request) -> web.Response:
    return _json(200, {"status": "ok"})


async def _ready(request: web.Request) -> web.Response:
    parts = request.app[PARTS_KEY]
    reasons: list[str] = []
    if parts.traffic.draining:
        reasons.append("draining: the process is shutting down")
    if not parts.directory.ready_backends():
        reasons.append(f"no backend ready ({parts.directory.describe()})")
    store_health = parts.store.health()
    if not store_health.usable:
        reasons.append(f"session store unusable: {store_health.reason}")
    identity: list[str] = []
    for check in parts.guard.health:
        usable, reason = check()
        # An IdP that is down degrades (cached keys keep working); only a proxy that can
        # validate no token at all is unready.
        (identity if usable else reasons).append(reason)
    if reasons:
        return _json(503, {"status": "not ready", "reasons": reasons})
    doc: dict[str, object] = {
        "status": "ready",
        "backends": parts.directory.describe(),
        "session_store": store_health.reason,
    }
    if identity:
        doc["identity_provider"] = "; ".join(identity)
    return _json(200, doc)


async def _method_not_allowed(request: web.Request) -> web.Response:
    return error_response(
        405,
        jsonrpc.INVALID_REQUEST,
        f"{request.method} is not part of MCP's streamable HTTP transport",
        headers={"Allow": "GET, POST, DELETE"},
    )


async def _metrics(request: web.Request) -> web.Response:
    body = request.app[PARTS_KEY].metrics.render()
    response = web.Response(body=body)
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


def build_app(parts: ProxyParts, stages: Sequence[Stage] | None = None) -> web.Application:
    """The application; ``stages`` replaces the default list (tests, embedders)."""
    config = parts.config
    chosen = default_stages(parts) if stages is None else list(stages)
    app = web.Application(
        client_max_size=config.listen.max_request_body,
        handler_args={
            "max_field_size": 16 * 1024,
            "keepalive_timeout": config.limits.keepalive_timeout,
            # A refused body (413, 408) is drained this long at most, then the connection
            # closes: a slow client must not keep it by trickling the rest.
            "lingering_time": 2.0,
        },
    )
    app[PARTS_KEY] = parts
    traffic = parts.traffic
    parts.metrics.inflight.set_function(lambda: traffic.inflight)
    parts.metrics.streams_open.set_function(lambda: traffic.streams)
    router = Router(parts.directory, parts.store)
    relay = Relay(traffic, parts.log, config.limits.stream_keepalive)
    caps = StreamCaps(config.limits, parts.metrics)

    def pipeline(route: Next) -> Handler:
        return compose(chosen, route, traffic, parts.metrics, parts.log)

    if config.backend.served_protocol == "sse":
        # A legacy SSE backend is served to clients as what it is (and a stdio one as
        # legacy SSE when proxy_mode asks for it).
        legacy = compose(
            chosen, LegacySSE(parts, router, relay, caps).handle, traffic, parts.metrics, parts.log
        )
        app.router.add_get("/sse", legacy)
        app.router.add_post("/messages", legacy)
        app.router.add_post("/messages/", legacy)
    else:
        mcp = compose(
            chosen,
            StreamableHTTP(parts, router, relay, caps).handle,
            traffic,
            parts.metrics,
            parts.log,
        )
        for method in ("POST", "GET", "DELETE"):
            app.router.add_route(method, "/mcp", mcp)
        for method in ("PUT", "PATCH"):
            app.router.add_route(method, "/mcp", _method_not_allowed)
    resource = parts.guard.resource
    if resource is not None:
        routes = ["/sse", "/messages"] if config.backend.served_protocol == "sse" else ["/mcp"]
        for path in resource.paths(routes):
            app.router.add_get(path, resource.handle)
    app.router.add_get("/health", _health)
    app.router.add_get("/readyz", _ready)
    app.router.add_get("/metrics", _metrics)
    return app
