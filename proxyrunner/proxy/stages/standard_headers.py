"""Stage: the 2026-07-28 standard-header check (the rule is ``mcp.standard_headers``).

A request that claims 2026-07-28 or later (in the header or in any ``_meta``: either is
enough) and whose ``Mcp-Method``, ``Mcp-Name`` or ``MCP-Protocol-Version`` disagree with
its body gets 400/-32020 and never reaches a backend; a batch in that revision, which has
none, gets 400/-32600. Earlier revisions pass without a parse: the claim is judged from
the header string and a substring test on the raw body.
"""

from __future__ import annotations

import structlog

from proxyrunner.mcp import standard_headers
from proxyrunner.mcp.revisions import claimed_revision, may_claim_standard_headers
from proxyrunner.proxy.errors import HeaderMismatch, InvalidRequest
from proxyrunner.proxy.pipeline import Exchange


class StandardHeaderCheck:
    name = "standard-header check"

    def __init__(self, log: structlog.stdlib.BoundLogger) -> None:
        self._log = log

    def check(self, exchange: Exchange) -> None:
        body = exchange.body
        if isinstance(body, bytes) and may_claim_standard_headers(exchange.protocol_version, body):
            message = exchange.message()
            messages = message if isinstance(message, list) else (message,)
            if claimed_revision(exchange.protocol_version, messages) is None:
                return  # the envelope key appeared, naming no revision with the rule
            if isinstance(message, list):
                # JSON-RPC batching was removed from MCP in 2025-06-18 and 2026-07-28 keeps
                # it out: one request per POST is what its headers describe.
                raise InvalidRequest("batches are not accepted in protocol revision 2026-07-28")
            try:
                standard_headers.check(exchange.request.headers, message)
            except standard_headers.HeaderMismatch as exc:
                self._log.info(
                    "request refused: header mismatch", method=exchange.rpc_method, reason=str(exc)
                )
                request_id = message.get("id") if isinstance(message, dict) else None
                raise HeaderMismatch(str(exc), request_id=request_id) from None
