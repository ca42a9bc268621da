"""Header rewriting between client and backend.

Hop-by-hop headers belong to one connection and never cross the proxy (RFC 9110 7.6.1),
nor do the framing headers aiohttp recomputes. The session header is rewritten in both
directions so that a client only ever sees the proxy's id and a backend only its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy, istr

from proxyrunner.proxy.protocol import SESSION_HEADER

_HOP_BY_HOP: Final = frozenset(
    istr(h)
    for h in (
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
)
# Recomputed by aiohttp for the outgoing message, or set by us.
_REQUEST_DROP: Final = _HOP_BY_HOP | {
    istr("Host"),
    istr("Content-Length"),
    istr(SESSION_HEADER),
    istr("X-Forwarded-For"),
    istr("X-Forwarded-Proto"),
    istr("X-Forwarded-Host"),
}
_RESPONSE_DROP: Final = _HOP_BY_HOP | {
    istr("Content-Length"),
    istr(SESSION_HEADER),
    istr("Server"),
    istr("Date"),
}


def backend_request_headers(
    request: web.Request, backend_session_id: str | None
) -> CIMultiDict[str]:
    """Client headers as the backend should see them."""
    incoming = request.headers
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in incoming.items():
        if name not in _REQUEST_DROP:
            out.add(name, value)
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
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in backend_headers.items():
        if name not in _RESPONSE_DROP:
            out.add(name, value)
    if client_session_id is not None:
        out[SESSION_HEADER] = client_session_id
    return out
