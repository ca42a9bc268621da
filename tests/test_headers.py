"""Header rewriting: hop-by-hop and framing headers never cross, whatever their case."""

from __future__ import annotations

from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from proxyrunner.proxy.headers import backend_request_headers, client_response_headers


def test_request_headers_drop_hop_by_hop_and_framing_in_any_case() -> None:
    request = make_mocked_request(
        "POST",
        "/mcp",
        headers=CIMultiDict(
            {
                "host": "proxy.example",
                "content-length": "12",
                "connection": "keep-alive, x-hop",
                "x-hop": "1",
                "mcp-session-id": "proxy-owned",
                "traceparent": "00-abc-def-01",
                "Accept": "application/json, text/event-stream",
            }
        ),
    )
    out = backend_request_headers(request, "backend-owned")
    assert "Host" not in out
    assert "Content-Length" not in out
    assert "Connection" not in out
    assert "X-Hop" not in out
    assert out.getall("Mcp-Session-Id") == ["backend-owned"]
    assert out["traceparent"] == "00-abc-def-01"
    assert out["X-Forwarded-Host"] == "proxy.example"
    assert out["Accept"] == "application/json, text/event-stream"


def test_response_headers_carry_only_the_proxy_session_id() -> None:
    backend = CIMultiDict(
        {"mcp-session-id": "backend-owned", "content-type": "application/json", "date": "x"}
    )
    out = client_response_headers(backend, "proxy-owned")
    assert out.getall("Mcp-Session-Id") == ["proxy-owned"]
    assert out["Content-Type"] == "application/json"
    assert "Date" not in out
