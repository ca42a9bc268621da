"""The one header policy: hop-by-hop and framing headers never cross, whatever their case,
and both renderings (the pooled client's bytes, ClientSession's multidict) agree."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from proxyrunner.proxy.headers import ForwardedHeaders, client_response_headers

CLIENT_HEADERS = {
    "host": "proxy.example",
    "content-length": "12",
    "connection": "keep-alive, x-hop",
    "x-hop": "1",
    "mcp-session-id": "proxy-owned",
    "traceparent": "00-abc-def-01",
    "Accept": "application/json, text/event-stream",
    "x-forwarded-for": "10.0.0.9",
}


def forwarded() -> ForwardedHeaders:
    request = make_mocked_request("POST", "/mcp", headers=CIMultiDict(CLIENT_HEADERS))
    return ForwardedHeaders(request, "backend-owned")


def parse_head(head: bytes) -> CIMultiDict[str]:
    lines = head.decode().split("\r\n")
    assert lines[-2:] == ["", ""], "the head ends in a blank line"
    out: CIMultiDict[str] = CIMultiDict()
    for line in lines[1:-2]:
        name, _, value = line.partition(": ")
        out.add(name, value)
    return out


def test_request_headers_drop_hop_by_hop_and_framing_in_any_case() -> None:
    out = forwarded().multidict()
    assert "Host" not in out
    assert "Content-Length" not in out
    assert "Connection" not in out
    assert "X-Hop" not in out
    assert out.getall("Mcp-Session-Id") == ["backend-owned"]
    assert out["traceparent"] == "00-abc-def-01"
    assert out["X-Forwarded-Host"] == "proxy.example"
    assert out["X-Forwarded-For"] == ""  # the mocked request has no peer: the client's is gone
    assert out["Accept"] == "application/json, text/event-stream"


def test_both_renderings_send_the_same_headers() -> None:
    headers = forwarded()
    as_multidict = headers.multidict()
    as_bytes = parse_head(headers.head(b"POST /mcp HTTP/1.1\r\nHost: backend:80\r\n", 12))
    # The pooled client sets what ClientSession sets for an in-memory body: Host, the
    # length and a default Content-Type.
    assert as_bytes.popall("Host") == ["backend:80"]
    assert as_bytes.popall("Content-Length") == ["12"]
    assert as_bytes.popall("Content-Type") == ["application/octet-stream"]
    assert sorted((k.lower(), v) for k, v in as_bytes.items()) == sorted(
        (k.lower(), v) for k, v in as_multidict.items()
    )


def test_a_pooled_get_carries_the_same_headers_and_no_body_framing() -> None:
    request = make_mocked_request("GET", "/mcp", headers=CIMultiDict(CLIENT_HEADERS))
    headers = ForwardedHeaders(request, "backend-owned")
    as_bytes = parse_head(headers.head(b"GET /mcp HTTP/1.1\r\nHost: backend:80\r\n", None))
    # What ClientSession sends for a GET without a body: no length, no default type.
    assert as_bytes.popall("Host") == ["backend:80"]
    assert "Content-Length" not in as_bytes
    assert "Content-Type" not in as_bytes
    assert sorted((k.lower(), v) for k, v in as_bytes.items()) == sorted(
        (k.lower(), v) for k, v in headers.multidict().items()
    )


def test_a_backend_session_id_with_a_line_break_is_refused() -> None:
    request = make_mocked_request("POST", "/mcp", headers=CIMultiDict(CLIENT_HEADERS))
    with pytest.raises(ValueError, match="line break"):
        ForwardedHeaders(request, "evil\r\nX-Injected: 1")


def test_response_headers_carry_only_the_proxy_session_id() -> None:
    backend = CIMultiDict(
        {"mcp-session-id": "backend-owned", "content-type": "application/json", "date": "x"}
    )
    out = client_response_headers(backend, "proxy-owned")
    assert out.getall("Mcp-Session-Id") == ["proxy-owned"]
    assert out["Content-Type"] == "application/json"
    assert "Date" not in out


def test_a_trusted_proxys_forwarding_headers_are_appended_to_in_both_renderings() -> None:
    headers = {**CLIENT_HEADERS, "Forwarded": "for=10.0.0.9"}
    request = make_mocked_request("POST", "/mcp", headers=CIMultiDict(headers))
    trusted = ForwardedHeaders(request, None, trusted=True)
    as_bytes = parse_head(trusted.head(b"POST /mcp HTTP/1.1\r\nHost: backend:80\r\n", 0))
    for out in (trusted.multidict(), as_bytes):
        assert out["X-Forwarded-For"].startswith("10.0.0.9, ")
        assert out["Forwarded"] == "for=10.0.0.9"
    untrusted = ForwardedHeaders(request, None)
    as_bytes = parse_head(untrusted.head(b"POST /mcp HTTP/1.1\r\nHost: backend:80\r\n", 0))
    for out in (untrusted.multidict(), as_bytes):
        assert "Forwarded" not in out
        assert "10.0.0.9" not in out["X-Forwarded-For"]
