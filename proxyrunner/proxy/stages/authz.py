"""Stage: Cedar authorization of each JSON-RPC request (the rules are ``proxyrunner.authz``).

Runs after the identity stage, which set ``exchange.principal``. A decided method that the
policy refuses (``tools/call``, ``prompts/get``, ``resources/read``...) or a method the
policy does not know is answered 403 / JSON-RPC 403 here and never reaches a backend; the
refusal is counted in ``auth_refusals{reason="policy_denied"}`` and, being a ProxyError,
seen by the audit stage. A batch is refused when any of its requests is.

For ``tools/list``, ``prompts/list`` and ``resources/list`` the request passes and a
rewrite filters the matching answer (by JSON-RPC id; JSON body or SSE event alike), so a
client never learns of a tool it may not call. The backend is then asked for an
uncompressed answer: a compressed one could not be filtered.

Only POST bodies are judged: GET (a listen stream) and DELETE carry no request, as in
ToolHive. A body too large to be held in memory cannot be judged and is refused.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import structlog

from proxyrunner.authz.cedar import CedarAuthorizer
from proxyrunner.authz.methods import FILTERED
from proxyrunner.metrics import Metrics
from proxyrunner.principal import Principal
from proxyrunner.proxy.errors import PolicyDenied
from proxyrunner.proxy.headers import HeaderEdit
from proxyrunner.proxy.pipeline import Exchange


class Authorization:
    name = "authorization"

    def __init__(
        self, authorizer: CedarAuthorizer, metrics: Metrics, log: structlog.stdlib.BoundLogger
    ) -> None:
        self._authorizer = authorizer
        self._refusals = metrics.auth_refusals.labels("policy_denied")
        self._log = log

    def check(self, exchange: Exchange) -> None:
        if exchange.request.method != "POST":
            return
        body = exchange.body
        if body is None or body == b"":
            return
        if not isinstance(body, bytes):
            self._refuse(exchange, "request body too large to be authorized", None)
        message = exchange.message()
        listed: dict[str, str] = {}
        for element in message if isinstance(message, list) else (message,):
            if not isinstance(element, dict):
                continue  # not a request: the backend answers it as invalid
            method = element.get("method")
            if not isinstance(method, str):
                continue  # a response to the server's own request: nothing to decide
            params = element.get("params")
            decision = self._authorizer.authorize(
                exchange.principal, method, params if isinstance(params, Mapping) else None
            )
            if not decision.allowed:
                if decision.errors:
                    self._log.info(
                        "policy evaluation failed", method=method, errors=decision.errors
                    )
                self._refuse(exchange, decision.reason, element.get("id"))
            if method in FILTERED and "id" in element:
                listed[_key(element["id"])] = method
        if listed:
            exchange.rewrite(_ListFilter(self._authorizer, exchange.principal, listed))
            exchange.header_edit = (exchange.header_edit or HeaderEdit()).with_drop(
                "Accept-Encoding"
            )

    def _refuse(self, exchange: Exchange, reason: str, request_id: Any) -> None:
        self._refusals.inc()
        self._log.info("request refused by policy", method=exchange.rpc_method, reason=reason)
        raise PolicyDenied(reason, request_id=request_id)


class _ListFilter:
    """Filters the ``result`` of the answers to this exchange's list requests; leaves
    every other message (notifications, errors, other ids) as it is."""

    __slots__ = ("_authorizer", "_listed", "_principal")

    def __init__(
        self, authorizer: CedarAuthorizer, principal: Principal | None, listed: dict[str, str]
    ) -> None:
        self._authorizer = authorizer
        self._principal = principal
        self._listed = listed

    def __call__(self, message: Any) -> Any:
        if isinstance(message, list):
            rewritten = [self._one(element) for element in message]
            changed = any(new is not old for new, old in zip(rewritten, message, strict=True))
            return rewritten if changed else message
        return self._one(message)

    def _one(self, message: Any) -> Any:
        if not isinstance(message, dict) or "method" in message or "id" not in message:
            return message
        method = self._listed.get(_key(message["id"]))
        result = message.get("result")
        if method is None or not isinstance(result, Mapping):
            return message
        filtered = self._authorizer.filter_list(self._principal, method, result)
        return message if filtered is result else {**message, "result": filtered}


def _key(request_id: Any) -> str:
    """A JSON-RPC id as a key that keeps 1 and "1" apart (JSON text)."""
    return json.dumps(request_id)
