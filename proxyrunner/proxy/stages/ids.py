"""Stage: JSON-RPC ids the proxy will not pass on (the rule is ``jsonrpc.odd_id``).

A body whose message (or batch member) has an array, object, boolean, fractional or
oversized id gets 400 with -32600 and id null, on every MCP route: requests and client
responses alike, streamable HTTP and legacy message POSTs. Backends answer such ids
inconsistently (the stdio bridge used to crash on an unhashable one), and the proxy's
own answers echo ids. Bodies are parsed only when a byte scan finds an ``"id"``
that may be odd; a large in-session body that streams through is left to the backend.
"""

from __future__ import annotations

from proxyrunner.mcp.jsonrpc import may_carry_odd_id, odd_id
from proxyrunner.proxy.errors import InvalidRequest
from proxyrunner.proxy.pipeline import Exchange


class IdCheck:
    name = "id check"

    def check(self, exchange: Exchange) -> None:
        body = exchange.body
        if isinstance(body, bytes) and may_carry_odd_id(body):
            reason = odd_id(exchange.message())
            if reason is not None:
                # id null: echoing the offending id is what must not happen.
                raise InvalidRequest(f"Invalid Request: {reason}")
