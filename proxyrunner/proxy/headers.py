"""Header rewriting between client and backend.

Hop-by-hop headers belong to one connection and never cross the proxy (RFC 9110 7.6.1),
nor do the framing headers aiohttp recomputes. The session header is rewritten in both
directions so that a client only ever sees the proxy's id and a backend only its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

import aiohttp
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
# The same names as raw lowercase bytes, for backend_request_head.
_REQUEST_DROP_RAW: Final = frozenset(name.lower().encode() for name in _REQUEST_DROP)
# What ClientSession adds when the request lacks them (Accept), so that a backend sees the
# same request whichever client path sent it. Never Accept-Encoding: the proxy relays
# bodies as encoded, so a client that did not ask for gzip must not get it.
_AUTO_HEADERS: Final = tuple(
    (str(name), str(name).lower().encode(), f"{name}: {value}\r\n".encode())
    for name, value in aiohttp.ClientRequest.DEFAULT_HEADERS.items()
    if str(name).lower() != "accept-encoding"
)
_DEFAULT_CONTENT_TYPE: Final = b"Content-Type: application/octet-stream\r\n"


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


def backend_request_head(
    request: web.Request, backend_session_id: str | None, start: bytes, body_length: int
) -> bytes:
    """The serialized head of the backend request for the pooled client: ``start`` (the
    request line and Host), then the same headers as ``backend_request_headers`` plus
    what ClientSession would add for an in-memory body, ending in the blank line.

    Built from the raw header bytes the client sent, so nothing is decoded, copied into
    a multidict and encoded again. Those bytes were validated by the server's parser;
    the one value that is not from this request, the backend session id, is checked.
    """
    incoming = request.headers
    drop = _REQUEST_DROP_RAW
    connection = incoming.get("Connection")
    if connection:
        # The Connection header may name further hop-by-hop headers.
        drop = drop | {token.strip().lower().encode() for token in connection.split(",")}
    parts = [start]
    append = parts.append
    for raw_name, raw_value in request.raw_headers:
        if raw_name.lower() not in drop:
            append(raw_name + b": " + raw_value + b"\r\n")
    if backend_session_id is not None:
        if "\r" in backend_session_id or "\n" in backend_session_id:
            raise ValueError("backend session id contains a line break")
        append(f"{SESSION_HEADER}: {backend_session_id}\r\n".encode())
    peer = request.remote or ""
    prior = incoming.get("X-Forwarded-For")
    proto = incoming.get("X-Forwarded-Proto", request.scheme)
    host = incoming.get("X-Forwarded-Host", request.host)
    append(
        f"X-Forwarded-For: {f'{prior}, {peer}' if prior else peer}\r\n"
        f"X-Forwarded-Proto: {proto}\r\nX-Forwarded-Host: {host}\r\n".encode(
            "utf-8", "surrogateescape"
        )
    )
    for name, lowered, line in _AUTO_HEADERS:
        if name not in incoming or lowered in drop:
            append(line)
    append(b"Content-Length: %d\r\n" % body_length)
    if "Content-Type" not in incoming or b"content-type" in drop:
        append(_DEFAULT_CONTENT_TYPE)
    append(b"\r\n")
    return b"".join(parts)
