"""The one header policy between client and backend.

Hop-by-hop headers belong to one connection and never cross the proxy (RFC 9110 7.6.1),
nor do the framing headers the outgoing message recomputes. The session header is
rewritten in both directions so that a client only ever sees the proxy's id and a backend
only its own, and the proxy sets the ``X-Forwarded-*`` headers: from the connection alone
(the client's are replaced, ``Forwarded`` dropped), unless ``trust_proxy_headers`` says the
client is a proxy to believe (then its ``X-Forwarded-For`` is appended to, its proto and
host kept, and ``Forwarded`` passes).

``ForwardedHeaders`` decides that once per request; the forwarding path renders the
decision for whichever client sends the request: serialized bytes for the pooled client,
a multidict for ``aiohttp.ClientSession``. Both renderings drop the same names and add
the same values (a test compares what a backend receives either way).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, Final, TypeVar

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from proxyrunner.mcp.revisions import SESSION_HEADER

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
# Recomputed for the outgoing message, or set by the proxy.
_REQUEST_DROP: Final = (
    *_HOP_BY_HOP,
    "Host",
    "Content-Length",
    SESSION_HEADER,
    "X-Forwarded-For",
    "X-Forwarded-Proto",
    "X-Forwarded-Host",
)
# A client that is not a trusted proxy cannot say where a request came from.
_REQUEST_DROP_UNTRUSTED: Final = (*_REQUEST_DROP, "Forwarded")
_RESPONSE_DROP: Final = (*_HOP_BY_HOP, "Content-Length", SESSION_HEADER, "Server", "Date")
_REQUEST_DROP_RAW: Final = frozenset(name.lower().encode() for name in _REQUEST_DROP)
_REQUEST_DROP_RAW_UNTRUSTED: Final = _REQUEST_DROP_RAW | {b"forwarded"}
_RESPONSE_DROP_LOWER: Final = frozenset(name.lower() for name in _RESPONSE_DROP)
# What ClientSession adds when the request lacks them (Accept), so that a backend sees the
# same request whichever client sent it. Never Accept-Encoding: the proxy relays bodies as
# encoded, so a client that did not ask for gzip must not get it.
_AUTO_HEADERS: Final = tuple(
    (str(name), str(name).lower().encode(), f"{name}: {value}\r\n".encode())
    for name, value in aiohttp.ClientRequest.DEFAULT_HEADERS.items()
    if str(name).lower() != "accept-encoding"
)
_DEFAULT_CONTENT_TYPE: Final = b"Content-Type: application/octet-stream\r\n"


class HeaderEdit:
    """What a stage changes in the headers a backend gets: names to drop (the client's
    ``Authorization`` when the proxy is the resource server: no token passthrough) and
    headers to set (outbound credentials)."""

    __slots__ = ("drop", "drop_raw", "set")

    def __init__(
        self, drop: Iterable[str] = (), set_headers: Iterable[tuple[str, str]] = ()
    ) -> None:
        self.set = _checked(tuple(set_headers))
        # A header the proxy sets is never also taken from the client.
        self.drop = frozenset(name.lower() for name in (*drop, *(n for n, _ in self.set)))
        self.drop_raw = frozenset(name.encode() for name in self.drop)

    def with_drop(self, *names: str) -> HeaderEdit:
        return HeaderEdit((*self.drop, *names), self.set)

    @classmethod
    def adding(
        cls, edit: HeaderEdit | None, names: HeaderNames, headers: Mapping[str, str]
    ) -> HeaderEdit:
        """``edit`` (if any) and ``headers`` set, replacing the client's ``names`` (the
        headers' own names among them). Once per traced backend call: the drop sets are
        joined, not rebuilt."""
        if _LINE_BREAK.search("".join(headers.values())):  # names are the caller's own
            raise ValueError("a header value contains a line break")
        added = cls.__new__(cls)
        items = tuple(headers.items())
        if edit is None:
            added.set, added.drop, added.drop_raw = items, names.lower, names.raw
        else:  # edit.set was checked when it was made
            added.set = (*edit.set, *items)
            added.drop, added.drop_raw = (
                _union(names.lower, edit.drop),
                _union(names.raw, edit.drop_raw),
            )
        return added


class HeaderNames:
    """A constant set of header names, as ``HeaderEdit`` drops them."""

    __slots__ = ("lower", "raw")

    def __init__(self, names: Iterable[str]) -> None:
        self.lower = frozenset(name.lower() for name in names)
        self.raw = frozenset(name.encode() for name in self.lower)


_LINE_BREAK: Final = re.compile(r"[\r\n\0]")
# Unions of drop sets, which are nearly always the same few constants (the untrusted
# client's set and the trace headers' names): a lookup per traced request instead of a
# new set. Bounded, in case an edit is built per request.
_Name = TypeVar("_Name", str, bytes)
_UNIONS: dict[tuple[frozenset[Any], frozenset[Any]], frozenset[Any]] = {}
_UNIONS_LIMIT: Final = 64


def _union(first: frozenset[_Name], second: frozenset[_Name]) -> frozenset[_Name]:
    key = (first, second)
    union = _UNIONS.get(key)
    if union is None:
        union = first | second
        if len(_UNIONS) >= _UNIONS_LIMIT:
            _UNIONS.clear()
        _UNIONS[key] = union
    return union


def _checked(headers: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    search = _LINE_BREAK.search
    for name, value in headers:
        if search(name) or search(value):
            raise ValueError(f"header {name!r} contains a line break")
    return headers


class ForwardedHeaders:
    """A client request's headers as its backend must see them."""

    __slots__ = (
        "_connection_tokens",
        "_drop",
        "_drop_raw",
        "_edit",
        "_forwarded",
        "_request",
        "_session_id",
    )

    def __init__(
        self,
        request: web.Request,
        backend_session_id: str | None,
        edit: HeaderEdit | None = None,
        *,
        trusted: bool = False,
    ) -> None:
        incoming = request.headers
        self._request = request
        self._edit = edit
        connection = incoming.get("Connection")
        # The Connection header may name further hop-by-hop headers.
        self._connection_tokens = (
            tuple(token.strip() for token in connection.split(",")) if connection else ()
        )
        if backend_session_id is not None and (
            "\r" in backend_session_id or "\n" in backend_session_id
        ):
            raise ValueError("backend session id contains a line break")
        self._session_id = backend_session_id
        peer = request.remote or ""
        self._drop: tuple[str, ...]
        self._drop_raw: frozenset[bytes]
        if trusted:
            prior = incoming.get("X-Forwarded-For")
            self._forwarded = (
                f"{prior}, {peer}" if prior else peer,
                incoming.get("X-Forwarded-Proto", request.scheme),
                incoming.get("X-Forwarded-Host", request.host),
            )
            self._drop, self._drop_raw = _REQUEST_DROP, _REQUEST_DROP_RAW
        else:
            self._forwarded = (peer, request.scheme, request.host)
            self._drop, self._drop_raw = _REQUEST_DROP_UNTRUSTED, _REQUEST_DROP_RAW_UNTRUSTED

    def multidict(self) -> CIMultiDict[str]:
        """For ClientSession, which adds its own framing and defaults."""
        out = _without(self._request.headers, self._drop)
        for token in self._connection_tokens:
            out.popall(token, None)
        if self._session_id is not None:
            out[SESSION_HEADER] = self._session_id
        edit = self._edit
        if edit is not None:
            for name in edit.drop:
                out.popall(name, None)
            for name, value in edit.set:
                out[name] = value
        xff, proto, host = self._forwarded
        out["X-Forwarded-For"] = xff
        out["X-Forwarded-Proto"] = proto
        out["X-Forwarded-Host"] = host
        return out

    def head(self, start: bytes, body_length: int | None) -> bytes:
        """For the pooled client: ``start`` (request line and Host), these headers, what
        ClientSession would add for an in-memory body (none for ``body_length`` None: a
        GET), and the blank line.

        Built from the raw header bytes the client sent, so nothing is decoded, copied into
        a multidict and encoded again; those bytes were validated by the server's parser.
        """
        drop = self._drop_raw
        edit = self._edit
        if edit is not None:
            drop = _union(drop, edit.drop_raw)
        if self._connection_tokens:  # per request: not worth caching
            drop = drop | {token.lower().encode() for token in self._connection_tokens}
        parts = [start]
        append = parts.append
        for raw_name, raw_value in self._request.raw_headers:
            if raw_name.lower() not in drop:
                append(raw_name + b": " + raw_value + b"\r\n")
        if self._session_id is not None:
            append(f"{SESSION_HEADER}: {self._session_id}\r\n".encode())
        if edit is not None:
            for name, value in edit.set:
                append(f"{name}: {value}\r\n".encode("utf-8", "surrogateescape"))
        xff, proto, host = self._forwarded
        append(
            f"X-Forwarded-For: {xff}\r\nX-Forwarded-Proto: {proto}\r\n"
            f"X-Forwarded-Host: {host}\r\n".encode("utf-8", "surrogateescape")
        )
        incoming = self._request.headers
        for name, lowered, line in _AUTO_HEADERS:
            if name not in incoming or lowered in drop:
                append(line)
        if body_length is not None:
            append(b"Content-Length: %d\r\n" % body_length)
            if "Content-Type" not in incoming or b"content-type" in drop:
                append(_DEFAULT_CONTENT_TYPE)
        append(b"\r\n")
        return b"".join(parts)


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


def client_response_headers(
    backend_headers: CIMultiDictProxy[str] | Mapping[str, str], client_session_id: str | None
) -> CIMultiDict[str]:
    """Backend response headers as the client should see them."""
    # Filter while copying: an MCP answer has a handful of headers, fewer than the names
    # to drop, so this is cheaper than copying all and removing each name (per request).
    out: CIMultiDict[str] = CIMultiDict()
    add = out.add
    for name, value in backend_headers.items():
        if name.lower() not in _RESPONSE_DROP_LOWER:
            add(name, value)
    if client_session_id is not None:
        out[SESSION_HEADER] = client_session_id
    return out
