"""The 2026-07-28 standard request headers, checked against the body they mirror.

From revision 2026-07-28 a client copies the JSON-RPC method into ``Mcp-Method``, the
addressed tool, prompt or resource into ``Mcp-Name``, and the revision into
``MCP-Protocol-Version`` on every POST, so that load balancers, gateways and proxies
can act on a request without parsing its body. That only holds if a request whose
headers disagree with its body goes no further: otherwise an intermediary routes, rate
limits or authorizes on one value while the server executes another. The server the
client addresses must reject it (HTTP 400, JSON-RPC -32020 HeaderMismatch).

proxyrunner is that server as far as the client can tell, and the server behind it may
not check (SDKs took the rule up one by one; a server may have been built before). So
the proxy checks before forwarding: nothing reaches a backend on the strength of headers
that nobody verified. (A stdio server never sees headers; the bridge keeps it in the
initialize-handshake era, where these headers mean nothing.)

``Mcp-Param-*`` headers mirror tool arguments that the tool's input schema marks with
``x-mcp-header``; checking them needs the server's tool list, which the proxy does not
keep. They pass through, for the backend to check against its own schemas.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from typing import Any, Final

from multidict import MultiMapping

from proxyrunner.mcp.revisions import (
    METHOD_HEADER,
    NAME_HEADER,
    PROTOCOL_VERSION_HEADER,
    VERSION_META_KEY,
    envelope,
)

# The body field each name-bearing method mirrors into Mcp-Name.
NAME_FIELDS: Final[Mapping[str, str]] = {
    "tools/call": "name",
    "prompts/get": "name",
    "resources/read": "uri",
}

_BASE64_VALUE: Final = re.compile(r"=\?base64\?(?P<payload>.*)\?=", re.DOTALL)
_PLAIN_VALUE: Final = re.compile(r"[\x20-\x7e]*")


class HeaderMismatch(ValueError):
    """A standard header is missing, malformed, or says something the body does not."""


def decode_value(header: str, raw: str) -> str:
    """A header value as the client meant it: ``=?base64?...?=`` carries UTF-8 that a
    header cannot (non-ASCII, control characters, edge whitespace)."""
    wrapped = _BASE64_VALUE.fullmatch(raw)
    if wrapped is None:
        if _PLAIN_VALUE.fullmatch(raw) is None:
            raise HeaderMismatch(
                f"{header} header carries characters outside visible ASCII; "
                "such values must be sent as =?base64?...?="
            )
        return raw
    try:
        return base64.b64decode(wrapped["payload"], validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise HeaderMismatch(f"{header} header is not valid base64-encoded UTF-8") from exc


def _single(headers: MultiMapping[str], name: str) -> str | None:
    values = headers.getall(name, ())
    if len(values) > 1:
        raise HeaderMismatch(f"{name} header appears more than once")
    return values[0] if values else None


def check(headers: MultiMapping[str], message: Any) -> None:
    """Raise HeaderMismatch when the standard headers do not mirror ``message``.

    ``message`` is the decoded body. Anything other than one JSON-RPC request or
    notification (a batch, a response) carries nothing to mirror: the backend judges it.
    """
    if not isinstance(message, dict):
        return
    method = message.get("method")
    if not isinstance(method, str):
        return
    version = _single(headers, PROTOCOL_VERSION_HEADER)
    params = message.get("params")
    meta = envelope(message)
    if meta is not None and VERSION_META_KEY in meta and meta[VERSION_META_KEY] != version:
        raise HeaderMismatch(
            f"{PROTOCOL_VERSION_HEADER} header is missing or does not match the body's "
            f"protocol version (params._meta {VERSION_META_KEY!r})"
        )
    if _single(headers, METHOD_HEADER) != method:
        raise HeaderMismatch(f"{METHOD_HEADER} header is missing or does not match the method")
    field = NAME_FIELDS.get(method)
    named = params.get(field) if field is not None and isinstance(params, dict) else None
    raw_name = _single(headers, NAME_HEADER)
    if named is None:
        # Nothing to mirror (or a malformed request the backend will refuse); an extra
        # Mcp-Name is harmless, since nothing acts on a name the body does not carry.
        return
    if raw_name is None:
        raise HeaderMismatch(f"{NAME_HEADER} header is missing (required for {method})")
    if decode_value(NAME_HEADER, raw_name) != named:
        raise HeaderMismatch(f"{NAME_HEADER} header does not match params.{field}")
