"""The audit event: what one MCP request did, as a dict in ToolHive's shape. Pure: no I/O.

The line matches what ToolHive's ``AuditEvent.LogTo`` writes through Go's slog JSON
handler (``time``, ``level``, ``msg: "audit_event"``, ``audit_id``, ``type``,
``logged_at``, ``outcome``, ``component``, ``source``, ``subjects``, ``target``,
``metadata.extra``, ``data``), so tooling written for ToolHive's audit log reads ours.
What issue 9 adds goes where ToolHive leaves room for it:

- ``subjects``: ``user_id`` (the token's subject, as upstream), ``user`` (the subject
  too: upstream fills it from name claims, which we never log; ``anonymous`` without a
  principal, as upstream), ``issuer``, ``client_id``;
- ``source.extra.session_id``: the session as its short hash, never the usable id;
- ``metadata.extra``: ``duration_ms`` and ``transport`` (upstream's), ``http_status``,
  ``replica``, ``jsonrpc_error_code`` and ``reason`` (``unauthenticated``, ``forbidden``).

**Outcome**, ToolHive's vocabulary and its status mapping: 2xx ``success``; 401 and 403
``denied``; other 4xx ``failure``; 5xx ``error``. One thing upstream cannot see: an
answer whose JSON-RPC message is an error (status 200) is a ``failure``.

Never in an event: header values (not even User-Agent, which upstream logs), tokens,
claims beyond issuer/subject/client id, and bodies unless ``include_request_data`` /
``include_response_data`` ask, then cut to ``max_data_size`` bytes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from proxyrunner.principal import Principal

HOSTNAME_ENV: Final = "HOSTNAME"

# Go's slog renders the custom level LevelAudit (Info + 2) as "INFO+2".
_LEVEL: Final = "INFO+2"

# Upstream's mapMCPMethodToEventType; every other method is "mcp_request".
_EVENT_TYPES: Final = {
    "initialize": "mcp_initialize",
    "tools/call": "mcp_tool_call",
    "tools/list": "mcp_tools_list",
    "resources/read": "mcp_resource_read",
    "resources/list": "mcp_resources_list",
    "prompts/get": "mcp_prompt_get",
    "prompts/list": "mcp_prompts_list",
    "notifications/message": "mcp_notification",
    "ping": "mcp_ping",
    "logging/setLevel": "mcp_logging",
    "completion/complete": "mcp_completion",
    "notifications/roots/list_changed": "mcp_roots_list_changed",
}
# What a method names, and under which target type (upstream's TargetType*).
_NAMED: Final = {"tools/call": "tool", "prompts/get": "prompt", "resources/read": "resource"}
_NAME_LENGTH: Final = 256  # a name is the client's text: bounded like any label
_BATCH_METHODS: Final = 32  # a batch's methods in target.method: the first ones


@dataclass(frozen=True, slots=True)
class Call:
    """What the request asked for, read from its body."""

    event_type: str
    methods: tuple[str, ...] = ()
    """The JSON-RPC method of each message (several for a batch)."""
    target_type: str | None = None
    """``tool``, ``prompt`` or ``resource`` for a call that names one."""
    target_name: str | None = None
    """The tool's or prompt's name, or the resource's URI."""


def describe(http_method: str, message: Any) -> Call:
    """The call a request makes. ``message`` is the parsed body, or None when there is
    none in memory (a GET, a DELETE, a streamed body): then only the HTTP method says
    what it is. A batch is one call: its type is its elements' when they share one."""
    if message is None:
        if http_method == "GET":
            return Call("sse_connection")
        return Call("http_request" if http_method != "POST" else "mcp_request")
    elements = message if isinstance(message, list) else [message]
    methods = tuple(
        element["method"][:_NAME_LENGTH]
        for element in elements
        if isinstance(element, Mapping) and isinstance(element.get("method"), str)
    )
    types = {_EVENT_TYPES.get(method, "mcp_request") for method in methods}
    methods = methods[:_BATCH_METHODS]
    event_type = types.pop() if len(types) == 1 else "mcp_request"
    if len(methods) != 1 or not isinstance(message, Mapping):
        return Call(event_type, methods)
    target_type = _NAMED.get(methods[0])
    params = message.get("params")
    if target_type is None or not isinstance(params, Mapping):
        return Call(event_type, methods)
    name = params.get("uri" if target_type == "resource" else "name")
    if not isinstance(name, str):
        return Call(event_type, methods, target_type)
    return Call(event_type, methods, target_type, name[:_NAME_LENGTH])


def outcome(status: int, jsonrpc_error: int | None) -> str:
    """ToolHive's outcome for an HTTP status; a JSON-RPC error in a 2xx answer fails."""
    if status in (401, 403):
        return "denied"
    if 200 <= status < 300 or status < 200:
        return "success" if jsonrpc_error is None else "failure"
    return "failure" if status < 500 else "error"


def truncated(data: bytes, limit: int) -> Any:
    """Request or response data as an event carries it: the JSON value when the whole of
    it fits in ``limit`` bytes, otherwise its first ``limit`` bytes as text."""
    if len(data) <= limit:
        try:
            return json.loads(data)
        except (ValueError, RecursionError):  # not JSON, or nested beyond the parser
            return data.decode("utf-8", "replace")
    # "ignore" drops a character cut in half, so the text never exceeds the limit.
    return data[:limit].decode("utf-8", "ignore")


@dataclass(frozen=True, slots=True)
class Record:
    """Everything the stage learned of one request."""

    call: Call
    endpoint: str
    """The URL path (never the query: it may carry anything)."""
    http_method: str
    client_address: str | None
    principal: Principal | None
    session_hash: str | None
    status: int
    jsonrpc_error: int | None
    duration: float
    """Seconds from the request reaching the stage to its answer's end."""
    reason: str | None = None
    request_data: Any = None
    response_data: Any = None


@dataclass(frozen=True, slots=True)
class Origin:
    """What every event of this process says about where it happened."""

    component: str
    replica: str
    transport: str
    """``http``, or ``sse`` for the legacy transport (upstream's values)."""


def build_event(
    record: Record, origin: Origin, *, audit_id: str, logged_at: float
) -> dict[str, Any]:
    """The event for ``record``, as the dict its JSON line encodes."""
    call = record.call
    when = _timestamp(logged_at)
    source_extra: dict[str, Any] = {}
    if record.session_hash is not None:
        source_extra["session_id"] = record.session_hash
    target: dict[str, str] = {
        "endpoint": record.endpoint,
        "method": ",".join(call.methods) if call.methods else record.http_method,
        "type": call.target_type or "endpoint",
    }
    if call.target_name is not None:
        target["name"] = call.target_name
        if call.target_type == "resource":
            target["uri"] = call.target_name
    extra: dict[str, Any] = {
        "duration_ms": int(record.duration * 1000),
        "transport": origin.transport,
        "http_status": record.status,
        "replica": origin.replica,
    }
    if record.jsonrpc_error is not None:
        extra["jsonrpc_error_code"] = record.jsonrpc_error
    if record.reason is not None:
        extra["reason"] = record.reason
    event: dict[str, Any] = {
        "time": when,
        "level": _LEVEL,
        "msg": "audit_event",
        "audit_id": audit_id,
        "type": call.event_type,
        "logged_at": when,
        "outcome": outcome(record.status, record.jsonrpc_error),
        "component": origin.component,
        "source": {"type": "network", "value": record.client_address or "", "extra": source_extra},
        "subjects": _subjects(record.principal),
        "target": target,
        "metadata": {"extra": extra},
    }
    data = {
        key: value
        for key, value in (("request", record.request_data), ("response", record.response_data))
        if value is not None
    }
    if data:
        event["data"] = data
    return event


def _subjects(principal: Principal | None) -> dict[str, str]:
    if principal is None:
        return {"user": "anonymous"}
    subjects = {
        "user": principal.subject,
        "user_id": principal.subject,
        "issuer": principal.issuer,
    }
    if principal.client_id is not None:
        subjects["client_id"] = principal.client_id
    return subjects


def _timestamp(unix: float) -> str:
    """RFC 3339 in UTC with microseconds, as Go's time.Time marshals (to its precision)."""
    text = datetime.fromtimestamp(unix, UTC).isoformat(timespec="microseconds")
    return text.replace("+00:00", "Z")


def replica_name(environ: Mapping[str, str], fallback: str) -> str:
    """This process's name in events: the pod name ($HOSTNAME, which Kubernetes sets to
    it), else ``fallback`` (the server's name) outside a pod. The caller passes the
    environment: only the CLI reads it."""
    return environ.get(HOSTNAME_ENV) or fallback


class Capture:
    """The answer's JSON-RPC messages, kept only up to ``limit`` bytes of their JSON: a
    long SSE stream costs the audit no more memory than one event's data."""

    __slots__ = ("_count", "_limit", "_parts", "_size")

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._parts: list[bytes] = []
        self._size = 0
        self._count = 0

    def add(self, message: Any) -> None:
        self._count += 1
        if self._size <= self._limit:
            try:
                part = json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()
            except (ValueError, RecursionError):
                # This runs inside the relay: an answer the audit cannot encode is left
                # out of the event, never a broken answer.
                part = b'"[not encodable]"'
            self._parts.append(part)
            self._size += len(part) + 1

    def value(self) -> Any:
        """The messages as event data (one message as itself, several as a list), cut
        to the limit; None when the answer had none."""
        if not self._parts:
            return None
        if self._count == 1:
            return truncated(self._parts[0], self._limit)
        return truncated(b"[" + b",".join(self._parts) + b"]", self._limit)
