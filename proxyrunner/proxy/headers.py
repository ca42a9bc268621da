"""Header rewriting between client and backend.

Hop-by-hop headers belong to one connection and never cross the proxy (RFC 9110 7.6.1),
nor do the framing headers aiohttp recomputes. The session header is rewritten in both
directions so that a client only ever sees the proxy's id and a backend only its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from proxyrunner.proxy.protocol import SESSION_HEADER

_HOP_BY_HOP: Final = (
    "Connection",
    "Keep-Alive",
    "Proxy-Authenticate",
    "Proxy-Authorization",
    "Proxy-Connection",
    "TE",
    "Trailer",
    "Transfer-Encoding",
    "Upgrade",
)
# Recomputed by aiohttp for the outgoing message, or set by us.
_REQUEST_DROP: Final = (
    *_HOP_BY_HOP,
    "Host",
    "Content-Length",
    SESSION_HEADER,
    "X-Forwarded-For",
    "X-Forwarded-Proto",
    "X-Forwarded-Host",
)
_RESPONSE_DROP: Final = (*_HOP_BY_HOP, "Content-Length", SESSION_HEADER, "Server", "Date")


def _without(
    headers: CIMultiDictProxy[str] | Mapping[str, str], drop: tuple[str, ...]
) -> CIMultiDict[str]:
    # Copy in C, then remove the few names that must not cross: cheaper than filtering
    # every header in Python, and case-insensitive (HTTP/1.1 clients often send
    # lowercase names).
    out: CIMultiDict[str] = CIMultiDict(headers)
    for name in drop:
        if name in out:
            out.popall(name)
    return out


def backend_request_headers(
    request: web.Request, backend_session_id: str | None
) -> CIMultiDict[str]:
    """Client headers as the backend should see them."""
    incoming = request.headers
    out = _without(incoming, _REQUEST_DROP)
    # The Connection header may name further hop-by-hop headers.
    connection = incoming.get("Connection")
    if connection:
        for token in connection.split(","):
            out.popall(token.strip(), None)
    if backend_session_id is not None:
        out[SESSION_HEADER] = backend_session_id
    peer = request.remote or ""
    prior = incoming.get("X-Forwarded-For")
    out["X-Forwarded-For"] = f"{prior}, {peer}" if prior else peer
    out["X-Forwarded-Proto"] = incoming.get("X-Forwarded-Proto", request.scheme)
    out["X-Forwarded-Host"] = incoming.get("X-Forwarded-Host", request.host)
    return out


def client_response_headers(
    backend_headers: CIMultiDictProxy[str] | Mapping[str, str], client_session_id: str | None
) -> CIMultiDict[str]:
    """Backend response headers as the client should see them."""
    out = _without(backend_headers, _RESPONSE_DROP)
    if client_session_id is not None:
        out[SESSION_HEADER] = client_session_id
    return out
