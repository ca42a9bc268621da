"""JSON-RPC errors as aiohttp responses, for both HTTP faces (the proxy's and the stdio
bridge's): one spelling of "an HTTP status an MCP client understands, with a JSON-RPC
error body"."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from aiohttp import web

from proxyrunner.mcp import jsonrpc


def json_response(
    status: int, body: bytes, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(status=status, body=body, content_type="application/json", headers=headers)


def error_response(
    status: int,
    code: int,
    message: str,
    *,
    headers: Mapping[str, str] | None = None,
    request_id: Any = None,
    data: Any = None,
) -> web.Response:
    """The status and a JSON-RPC error body naming the problem."""
    return json_response(status, jsonrpc.error_body(code, message, request_id, data), headers)


SESSION_NOT_FOUND_MESSAGE: Final = "Session not found; initialize a new session"


def session_not_found() -> web.Response:
    return error_response(404, jsonrpc.SESSION_NOT_FOUND, SESSION_NOT_FOUND_MESSAGE)
