"""JSON-RPC 2.0 messages as the proxy handles them: decode, encode, errors, labels.

The proxy parses a body only when a decision depends on it; everywhere else it peeks at
the method name with a bounded regex, for logs and metric labels.
"""

from __future__ import annotations

import json
import re
from typing import Any, Final

Message = dict[str, Any]

# JSON-RPC error codes. -32001 for an unknown session is what ToolHive and the SDKs use,
# and what makes a client re-initialize.
PARSE_ERROR: Final = -32700
INVALID_REQUEST: Final = -32600
INTERNAL_ERROR: Final = -32603
REQUEST_CANCELLED: Final = -32800  # as LSP: the client gave up on the request
SESSION_NOT_FOUND: Final = -32001
BACKEND_UNAVAILABLE: Final = -32002
BACKEND_TIMEOUT: Final = -32003
REQUEST_TOO_LARGE: Final = -32004
UNAUTHORIZED: Final = -32011  # no valid access token (HTTP 401 with a Bearer challenge)
INSUFFICIENT_SCOPE: Final = -32012  # a valid token without the scopes needed (HTTP 403)
HEADER_MISMATCH: Final = -32020  # 2026-07-28: standard headers disagree with the body
UNSUPPORTED_PROTOCOL_VERSION: Final = -32022
# ToolHive answers an authorization denial HTTP 403 with JSON-RPC code 403 (not a
# -32xxx code): clients written against ToolHive look for it.
POLICY_DENIED: Final = 403

# Method names become metric labels; anything else is "other" so a client cannot blow up
# the label set.
KNOWN_METHODS: Final = frozenset(
    {
        "initialize",
        "ping",
        "server/discover",
        "tools/list",
        "tools/call",
        "resources/list",
        "resources/read",
        "resources/templates/list",
        "resources/subscribe",
        "resources/unsubscribe",
        "prompts/list",
        "prompts/get",
        "completion/complete",
        "logging/setLevel",
        "tasks/get",
        "tasks/list",
        "tasks/result",
        "tasks/cancel",
        "notifications/initialized",
        "notifications/cancelled",
        "notifications/progress",
        "notifications/roots/list_changed",
        "subscriptions/listen",
    }
)
LISTEN_METHODS: Final = frozenset({"subscriptions/listen"})
"""Requests (2026-07-28) whose answer is a long-lived stream of notifications, like a GET
listen stream of the handshake revisions."""
INITIALIZED_NOTIFICATION: Final = b'{"jsonrpc":"2.0","method":"notifications/initialized"}'

# A request's method is near its start; look no further than this.
_PEEK_LIMIT: Final = 1024
_METHOD_RE: Final = re.compile(rb'"method"\s*:\s*"([^"\\]{1,64})"')


def parse_json(data: bytes | str) -> Any:
    """Decode a JSON document from a peer; ValueError for anything that is not one.

    json.loads raises RecursionError, not ValueError, on deeply nested input (a few
    kilobytes of ``[`` suffice): left uncaught, one such body would be a 500 and a
    traceback, or end a stdio server's reader loop.
    """
    try:
        return json.loads(data)
    except RecursionError as exc:
        raise ValueError("JSON nested too deeply") from exc


def dumps(message: object) -> bytes:
    """One message as compact UTF-8 JSON. It is always one line: json.dumps escapes the
    newlines inside strings, which is what stdio framing relies on."""
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()


def error(message_id: Any, code: int, text: str, data: Any = None) -> Message:
    """A JSON-RPC error response."""
    body: dict[str, Any] = {"code": code, "message": text}
    if data is not None:
        body["data"] = data
    return {"jsonrpc": "2.0", "id": message_id, "error": body}


def error_body(code: int, text: str, message_id: Any = None, data: Any = None) -> bytes:
    return dumps(error(message_id, code, text, data))


def is_request(message: Message) -> bool:
    """A request expects an answer: it has a method and an id."""
    return "method" in message and "id" in message


def is_response(message: Message) -> bool:
    """An answer (result or error) to a request: an id and no method."""
    return "method" not in message and "id" in message


def peek_method(body: bytes) -> str:
    """The JSON-RPC method of a request body as a bounded label, without parsing it.

    A response (no method) is "response"; a batch reports its first method.
    """
    match = _METHOD_RE.search(body, 0, _PEEK_LIMIT)
    if match is None:
        return "response" if body[:_PEEK_LIMIT].lstrip()[:1] in (b"{", b"[") else "unknown"
    method = match.group(1).decode("ascii", "replace")
    return method if method in KNOWN_METHODS else "other"
