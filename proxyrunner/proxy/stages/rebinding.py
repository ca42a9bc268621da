"""Stage: DNS-rebinding protection (the rule is ``mcp.rebinding``). In the list only when
the rule is active: listening on loopback, or with ``allowed_hosts`` set."""

from __future__ import annotations

from proxyrunner.mcp.rebinding import RebindingRule
from proxyrunner.proxy.errors import ForeignOrigin, MisdirectedHost
from proxyrunner.proxy.pipeline import Exchange


class RebindingGuard:
    name = "dns-rebinding guard"

    def __init__(self, rule: RebindingRule) -> None:
        self._rule = rule

    def check(self, exchange: Exchange) -> None:
        headers = exchange.request.headers
        refused = self._rule.refusal(headers.get("Host"), headers.get("Origin"))
        if refused is not None:
            status, reason = refused
            raise MisdirectedHost(reason) if status == 421 else ForeignOrigin(reason)
