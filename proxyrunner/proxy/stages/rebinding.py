"""Stage: DNS-rebinding protection (the rule is ``mcp.rebinding``). In the list only when
the rule is active: listening on loopback, or with ``allowed_hosts`` set."""

from __future__ import annotations

from aiohttp import web

from proxyrunner.mcp.rebinding import RebindingRule
from proxyrunner.proxy.errors import ForeignOrigin, MisdirectedHost
from proxyrunner.proxy.pipeline import Exchange, Next


class RebindingGuard:
    name = "dns-rebinding guard"

    def __init__(self, rule: RebindingRule) -> None:
        self._rule = rule

    async def handle(self, exchange: Exchange, call_next: Next) -> web.StreamResponse:
        headers = exchange.request.headers
        refused = self._rule.refusal(headers.get("Host"), headers.get("Origin"))
        if refused is not None:
            status, reason = refused
            raise MisdirectedHost(reason) if status == 421 else ForeignOrigin(reason)
        return await call_next(exchange)
