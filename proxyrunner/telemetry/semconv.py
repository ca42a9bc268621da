"""OpenTelemetry's semantic conventions for MCP, as far as the proxy can fill them in.

Names follow the MCP conventions (``mcp.method.name``, ``mcp.protocol.version``,
``mcp.session.id``, ``gen_ai.tool.name``, ``gen_ai.prompt.name``, ``mcp.resource.uri``,
``rpc.response.status_code``, ``error.type``) and the generic network and server
attributes. Span names are ``{mcp.method.name} {target}``, the target being the tool or
prompt name when there is one.

Everything here is pure: attributes out of a parsed JSON-RPC message. What never goes
into an attribute: request ids, arguments, bodies, tokens; the session id only as its
short hash. Metric attributes are further bounded, because a hostile client chooses tool
names: past ``NAME_LIMIT`` distinct names a metric reports ``_OTHER``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

METHOD: Final = "mcp.method.name"
PROTOCOL_VERSION: Final = "mcp.protocol.version"
SESSION: Final = "mcp.session.id"
TOOL: Final = "gen_ai.tool.name"
PROMPT: Final = "gen_ai.prompt.name"
RESOURCE: Final = "mcp.resource.uri"
OPERATION: Final = "gen_ai.operation.name"
STATUS_CODE: Final = "rpc.response.status_code"
ERROR_TYPE: Final = "error.type"
HTTP_STATUS: Final = "http.response.status_code"
CLIENT_ID: Final = "mcp.client.id"
"""The OAuth client id of the principal (never its token)."""
BACKEND: Final = "mcp.backend.name"
"""Which backend (pod or local process) served the call."""
SERVER_ADDRESS: Final = "server.address"
SERVER_PORT: Final = "server.port"
CLIENT_ADDRESS: Final = "client.address"

NAME_LIMIT: Final = 256
_OTHER: Final = "_OTHER"
_URI_LIMIT: Final = 512
_NAME_LENGTH_LIMIT: Final = 128

# Which params field names the target of each method, and the attribute it goes into.
_TARGETS: Final = {
    "tools/call": ("name", TOOL),
    "prompts/get": ("name", PROMPT),
    "resources/read": ("uri", RESOURCE),
    "resources/subscribe": ("uri", RESOURCE),
    "resources/unsubscribe": ("uri", RESOURCE),
}
BASE_ATTRIBUTES: Final = {
    "network.transport": "tcp",
    "network.protocol.name": "http",
}


def target_of(message: Any) -> tuple[str, str] | None:
    """(attribute, value) naming what a request acts on, e.g. the tool of a tools/call."""
    if not isinstance(message, dict):
        return None
    method = message.get("method")
    if not isinstance(method, str):
        return None
    spec = _TARGETS.get(method)
    params = message.get("params")
    if spec is None or not isinstance(params, dict):
        return None
    field, attribute = spec
    value = params.get(field)
    if not isinstance(value, str) or not value:
        return None
    limit = _URI_LIMIT if attribute == RESOURCE else _NAME_LENGTH_LIMIT
    return attribute, value[:limit]


def span_name(method: str, target: tuple[str, str] | None) -> str:
    if target is not None and target[0] != RESOURCE:
        return f"{method} {target[1]}"
    return method


def request_attributes(
    method: str, target: tuple[str, str] | None, protocol_version: str | None
) -> dict[str, str | int]:
    """A request's attributes, given its ``target_of``."""
    attributes: dict[str, str | int] = {METHOD: method, **BASE_ATTRIBUTES}
    if protocol_version:
        attributes[PROTOCOL_VERSION] = protocol_version[:32]
    if target is not None:
        attributes[target[0]] = target[1]
    if method == "tools/call":
        attributes[OPERATION] = "execute_tool"
    return attributes


def error_of(message: Any) -> tuple[int, str] | None:
    """(code, error.type) of a JSON-RPC error answer, or of a tool result that says it
    failed (``isError``), else None."""
    if not isinstance(message, dict):
        return None
    error = message.get("error")
    if isinstance(error, Mapping):
        code = error.get("code")
        if isinstance(code, int) and not isinstance(code, bool):
            return code, str(code)
        return 0, "jsonrpc_error"
    result = message.get("result")
    if isinstance(result, Mapping) and result.get("isError") is True:
        return 0, "tool_error"
    return None


class BoundedNames:
    """The first ``limit`` distinct values pass; later new ones become ``_OTHER``. Keeps a
    metric's series count bounded whatever names clients send."""

    __slots__ = ("_limit", "_seen")

    def __init__(self, limit: int = NAME_LIMIT) -> None:
        self._seen: set[str] = set()
        self._limit = limit

    def __call__(self, name: str) -> str:
        seen = self._seen
        if name in seen:
            return name
        if len(seen) >= self._limit:
            return _OTHER
        seen.add(name)
        return name
