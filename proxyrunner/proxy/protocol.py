"""What the proxy must know of MCP, and no more: revisions, headers, JSON-RPC peeks, errors.

The proxy is a router, not an MCP implementation. It parses a body only when routing
depends on it (an ``initialize`` without a session id); everywhere else it peeks at the
method name with a bounded regex, for logs and metrics.
"""

from __future__ import annotations

import json
import re
from typing import Any, Final

from aiohttp import web

SESSION_HEADER: Final = "Mcp-Session-Id"
PROTOCOL_VERSION_HEADER: Final = "MCP-Protocol-Version"

# JSON-RPC error codes. -32001 for an unknown session is what ToolHive and the SDKs use,
# and what makes a client re-initialize.
PARSE_ERROR: Final = -32700
INVALID_REQUEST: Final = -32600
INTERNAL_ERROR: Final = -32603
SESSION_NOT_FOUND: Final = -32001
BACKEND_UNAVAILABLE: Final = -32002
BACKEND_TIMEOUT: Final = -32003
REQUEST_TOO_LARGE: Final = -32004
HEADER_MISMATCH: Final = -32020  # 2026-07-28: standard headers disagree with the body

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
    }
)

# A request's method is near its start; look no further than this.
_PEEK_LIMIT: Final = 1024
_METHOD_RE: Final = re.compile(rb'"method"\s*:\s*"([^"\\]{1,64})"')


def peek_method(body: bytes) -> str:
    """The JSON-RPC method of a request body as a bounded label, without parsing it.

    A response (no method) is "response"; a batch reports its first method.
    """
    match = _METHOD_RE.search(body, 0, _PEEK_LIMIT)
    if match is None:
        return "response" if body[:_PEEK_LIMIT].lstrip()[:1] in (b"{", b"[") else "unknown"
    method = match.group(1).decode("ascii", "replace")
    return method if method in KNOWN_METHODS else "other"


class InitializeRequest:
    """A parsed ``initialize`` request: what the proxy keeps to replay it elsewhere."""

    __slots__ = ("protocol_version", "request_id")

    def __init__(self, request_id: Any, protocol_version: str | None) -> None:
        self.request_id = request_id
        self.protocol_version = protocol_version


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


def parse_initialize(body: bytes) -> InitializeRequest | None:
    """The initialize request in ``body``, or None if the body is something else.

    Raises ValueError when the body is not JSON at all (the caller answers -32700).
    """
    if b'"initialize"' not in body:  # cheap reject before a full parse
        return None
    doc = parse_json(body)
    if not isinstance(doc, dict) or doc.get("method") != "initialize" or "id" not in doc:
        return None
    params = doc.get("params")
    version = params.get("protocolVersion") if isinstance(params, dict) else None
    return InitializeRequest(doc["id"], version if isinstance(version, str) else None)


def jsonrpc_error_body(code: int, message: str, request_id: Any = None) -> bytes:
    return json.dumps(
        {"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}},
        separators=(",", ":"),
    ).encode()


def error_response(
    status: int,
    code: int,
    message: str,
    headers: dict[str, str] | None = None,
    request_id: Any = None,
) -> web.Response:
    """An HTTP error that MCP clients understand: the status and a JSON-RPC error body."""
    return web.Response(
        status=status,
        body=jsonrpc_error_body(code, message, request_id),
        content_type="application/json",
        headers=headers,
    )


def session_not_found() -> web.Response:
    return error_response(404, SESSION_NOT_FOUND, "Session not found; initialize a new session")
