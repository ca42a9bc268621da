"""Protocol revisions, MCP's HTTP header names, and which revision a request claims.

Revisions are dates. The ones with an ``initialize`` handshake end with 2025-11-25; from
2026-07-28 there is no handshake and no session, the revision travels on every request
(``MCP-Protocol-Version`` and the ``params._meta`` envelope) with the standard headers
that mirror the body.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

from proxyrunner.mcp.jsonrpc import parse_json

SESSION_HEADER: Final = "Mcp-Session-Id"
PROTOCOL_VERSION_HEADER: Final = "MCP-Protocol-Version"
METHOD_HEADER: Final = "Mcp-Method"
NAME_HEADER: Final = "Mcp-Name"

STANDARD_HEADERS_SINCE: Final = "2026-07-28"
"""The first revision whose requests carry the standard headers (and have no session)."""
HANDSHAKE_REVISIONS: Final = ("2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05")
"""The revisions with an initialize handshake, newest first."""
LEGACY_SSE_REVISION: Final = "2024-11-05"
VERSION_META_KEY: Final = "io.modelcontextprotocol/protocolVersion"
_VERSION_META_KEY_BYTES: Final = VERSION_META_KEY.encode()

_REVISION: Final = re.compile(r"\d{4}-\d{2}-\d{2}")


def has_standard_headers(protocol_version: str | None) -> bool:
    """Whether a request of this revision must carry the standard headers (and so has no
    session). Any later revision, one the proxy has never heard of, is held to the same
    rule; a value that is not a revision is left to the backend."""
    # The string comparison first: it turns away every earlier revision, on the hot
    # path, without a regex.
    return (
        protocol_version is not None
        and protocol_version >= STANDARD_HEADERS_SINCE
        and _REVISION.fullmatch(protocol_version) is not None
    )


def envelope(message: Any) -> dict[str, Any] | None:
    """The ``params._meta`` object of a JSON-RPC message (2026-07-28 carries the revision
    there), if it has one."""
    params = message.get("params") if isinstance(message, dict) else None
    meta = params.get("_meta") if isinstance(params, dict) else None
    return meta if isinstance(meta, dict) else None


def may_claim_standard_headers(header: str | None, body: bytes) -> bool:
    """Cheap pre-check on the raw body: can this request claim a revision with standard
    headers, in its MCP-Protocol-Version header or its ``_meta`` (either counts: a header
    naming an older revision must not let a 2026-07-28 body skip the check)?"""
    return has_standard_headers(header) or _VERSION_META_KEY_BYTES in body


def claimed_revision(header: str | None, messages: Iterable[Any]) -> str | None:
    """The 2026-07-28-or-later revision a request claims, if any: its header's, else the
    first ``_meta`` envelope that names such a revision (whatever the header says: a
    request whose header names an older revision while its body names 2026-07-28 is held
    to the later rule, never let through on the header's word)."""
    if has_standard_headers(header):
        return header
    for message in messages:
        meta = envelope(message)
        claimed = meta.get(VERSION_META_KEY) if meta is not None else None
        if isinstance(claimed, str) and has_standard_headers(claimed):
            return claimed
    return None


@dataclass(frozen=True, slots=True)
class InitializeRequest:
    """A parsed ``initialize`` request: what the proxy keeps to replay it elsewhere."""

    request_id: Any
    protocol_version: str | None


def initialize_request(message: Any) -> InitializeRequest | None:
    """The initialize request a decoded body is, or None if it is something else."""
    if not isinstance(message, dict) or message.get("method") != "initialize":
        return None
    if "id" not in message:
        return None
    params = message.get("params")
    version = params.get("protocolVersion") if isinstance(params, dict) else None
    return InitializeRequest(message["id"], version if isinstance(version, str) else None)


def parse_initialize(body: bytes) -> InitializeRequest | None:
    """The initialize request in a raw body, or None if the body is something else.
    Raises ValueError when a body that may be one is not JSON at all."""
    if b'"initialize"' not in body:  # cheap reject before a full parse
        return None
    return initialize_request(parse_json(body))
