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

# Ids: JSON-RPC 2.0 allows a string, a number or null, and says numbers SHOULD NOT have
# fractional parts; MCP narrows it to a string or an integer. The proxy holds clients to
# MCP's rule (null stays allowed: it is how an error answers an unreadable request), and
# bounds both kinds, because ids are echoed into answers, logs and the stdio bridge's maps
# (an array or object there is unhashable: it used to be a 500).
MAX_ID_LENGTH: Final = 256
"""Characters a string id may have."""
_ID_INT_LIMIT: Final = 2**63
"""Integer ids must fit a signed 64-bit integer, what every SDK's id type holds."""
# Cheap pre-check on a raw body, a superset of the odd ids: the "id" key (also spelled with
# \u escapes, which json.loads decodes) followed by anything other than a short string, a
# short integer or null. A hit is only a reason to parse: "id" inside params counts too.
_SUSPECT_ID: Final = re.compile(
    rb'"(?:i|\\u0069)(?:d|\\u0064)"\s*:\s*'
    rb'(?:(?!null|"|-?\d)|-?\d+[.eE]|-?\d{19}|"(?:[^"\\]|\\.){%d})' % MAX_ID_LENGTH
)

# A request's method is near its start; look no further than this.
_PEEK_LIMIT: Final = 1024
_METHOD_RE: Final = re.compile(rb'"method"\s*:\s*"([^"\\]{1,64})"')


# A JSON object's or array's first byte: UTF-8 unless the second byte is 0 (UTF-16-LE or
# UTF-32-LE); the big-endian forms and a byte order mark start with another byte.
_UTF8_STARTS: Final = (b"{", b"[")


def parse_json(data: bytes | str) -> Any:
    """Decode a JSON document from a peer; ValueError for anything that is not one.

    json.loads raises RecursionError, not ValueError, on deeply nested input (a few
    kilobytes of ``[`` suffice): left uncaught, one such body would be a 500 and a
    traceback, or end a stdio server's reader loop.
    """
    if type(data) is bytes and data[:1] in _UTF8_STARTS and data[1:2] != b"\x00":
        # What json.loads would decide after a Python-level sniff for UTF-16 and UTF-32
        # (whose second byte is 0 after an ASCII first): UTF-8, decoded as it would be.
        data = data.decode("utf-8", "surrogatepass")
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


def may_carry_odd_id(body: bytes) -> bool:
    """Whether a raw body might hold a message whose id ``odd_id`` refuses: when False,
    it certainly does not, and need not be parsed for that."""
    return _SUSPECT_ID.search(body) is not None


def odd_id(parsed: Any) -> str | None:
    """Why a decoded body (one message or a batch) carries an id MCP does not allow, or
    None when every id is a string of at most MAX_ID_LENGTH characters, an integer that
    fits 64 bits, or null. Only the messages' own ids count, not values inside params."""
    for message in parsed if isinstance(parsed, list) else (parsed,):
        if not isinstance(message, dict) or "id" not in message:
            continue
        value = message["id"]
        if value is None:
            continue
        if isinstance(value, str):
            if len(value) > MAX_ID_LENGTH:
                return f"id longer than {MAX_ID_LENGTH} characters"
            continue
        # bool is an int in Python: true and false are not ids.
        if type(value) is int:
            if -_ID_INT_LIMIT <= value < _ID_INT_LIMIT:
                continue
            return "integer id outside the 64-bit range"
        return f"id must be a string, an integer or null, not {_json_kind(value)}"
    return None


def _json_kind(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, float):
        return "a number with a fraction or exponent"
    if isinstance(value, list):
        return "an array"
    return "an object"


def peek_method(body: bytes) -> str:
    """The JSON-RPC method of a request body as a bounded label, without parsing it.

    A response (no method) is "response"; a batch reports its first method.
    """
    match = _METHOD_RE.search(body, 0, _PEEK_LIMIT)
    if match is None:
        return "response" if body[:_PEEK_LIMIT].lstrip()[:1] in (b"{", b"[") else "unknown"
    method = match.group(1).decode("ascii", "replace")
    return method if method in KNOWN_METHODS else "other"
