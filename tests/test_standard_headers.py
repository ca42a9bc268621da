"""The 2026-07-28 standard headers against the body: pure rules, no server."""

from __future__ import annotations

from typing import Any

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from proxyrunner.mcp.revisions import has_standard_headers, may_claim_standard_headers
from proxyrunner.mcp.standard_headers import HeaderMismatch, check, decode_value

META = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientCapabilities": {},
}


def call(tool: Any = "echo") -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": tool, "arguments": {}, "_meta": META},
    }


def headers(*pairs: tuple[str, str]) -> CIMultiDictProxy[str]:
    base = [("MCP-Protocol-Version", "2026-07-28")]
    return CIMultiDictProxy(CIMultiDict(base + list(pairs)))


def test_only_revisions_from_2026_07_28_on_carry_standard_headers() -> None:
    assert has_standard_headers("2026-07-28")
    assert has_standard_headers("2027-03-01")  # a later revision keeps the rule
    assert not has_standard_headers("2025-11-25")
    assert not has_standard_headers(None)
    assert not has_standard_headers("latest")


def test_a_body_envelope_declares_the_revision_when_the_header_is_missing() -> None:
    assert may_claim_standard_headers(
        None, b'{"params":{"_meta":{"io.modelcontextprotocol/protocolVersion":1}}}'
    )
    assert not may_claim_standard_headers(None, b'{"method":"tools/list"}')
    # An older revision in the header does not hide the body's claim.
    assert may_claim_standard_headers(
        "2025-06-18", b'{"io.modelcontextprotocol/protocolVersion":1}'
    )
    assert not may_claim_standard_headers("2025-06-18", b'{"method":"tools/list"}')


def test_headers_that_mirror_the_body_pass() -> None:
    check(headers(("Mcp-Method", "tools/call"), ("Mcp-Name", "echo")), call())
    list_tools = {"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {"_meta": META}}
    check(headers(("mcp-method", "tools/list")), list_tools)  # names are case-insensitive


def test_a_resource_read_mirrors_its_uri() -> None:
    read = {
        "jsonrpc": "2.0",
        "id": 3,
        "method": "resources/read",
        "params": {"uri": "file:///a b.txt", "_meta": META},
    }
    check(headers(("Mcp-Method", "resources/read"), ("Mcp-Name", "file:///a b.txt")), read)
    with pytest.raises(HeaderMismatch, match=r"params\.uri"):
        check(headers(("Mcp-Method", "resources/read"), ("Mcp-Name", "file:///b")), read)


@pytest.mark.parametrize(
    ("pairs", "named"),
    [
        ((("Mcp-Name", "echo"),), "Mcp-Method header is missing or does not match"),
        ((("Mcp-Method", "tools/list"), ("Mcp-Name", "echo")), "Mcp-Method"),
        ((("Mcp-Method", "tools/call"),), "Mcp-Name header is missing"),
        ((("Mcp-Method", "tools/call"), ("Mcp-Name", "rm")), "Mcp-Name header does not match"),
        (
            (("Mcp-Method", "tools/call"), ("Mcp-Method", "tools/call"), ("Mcp-Name", "echo")),
            "Mcp-Method header appears more than once",
        ),
    ],
)
def test_missing_mismatched_or_repeated_headers_are_refused_by_name(
    pairs: tuple[tuple[str, str], ...], named: str
) -> None:
    with pytest.raises(HeaderMismatch, match=named):
        check(headers(*pairs), call())


def test_the_envelope_revision_must_match_the_version_header() -> None:
    pairs = (("Mcp-Method", "tools/call"), ("Mcp-Name", "echo"))
    later = CIMultiDictProxy(CIMultiDict([("MCP-Protocol-Version", "2027-01-01"), *pairs]))
    with pytest.raises(HeaderMismatch, match="MCP-Protocol-Version"):
        check(later, call())
    without = CIMultiDictProxy(CIMultiDict(pairs))
    with pytest.raises(HeaderMismatch, match="MCP-Protocol-Version header is missing"):
        check(without, call())


def test_base64_values_carry_what_a_header_cannot() -> None:
    assert decode_value("Mcp-Name", "=?base64?ZWNobw==?=") == "echo"
    assert decode_value("Mcp-Name", "=?base64?w6ljaG8=?=") == "\u00e9cho"
    check(headers(("Mcp-Method", "tools/call"), ("Mcp-Name", "=?base64?w6ljaG8=?=")), call("écho"))


@pytest.mark.parametrize(
    ("raw", "named"),
    [
        ("=?base64?not base64!?=", "not valid base64"),
        ("=?base64?/w==?=", "not valid base64"),  # decodes to 0xff: not UTF-8
        ("\u00e9cho", "outside visible ASCII"),
    ],
)
def test_undecodable_or_unencoded_values_are_refused(raw: str, named: str) -> None:
    with pytest.raises(HeaderMismatch, match=named):
        decode_value("Mcp-Name", raw)


def test_bodies_with_nothing_to_mirror_are_left_to_the_backend() -> None:
    response = {"jsonrpc": "2.0", "id": 1, "result": {}}
    check(headers(), response)
    check(headers(), [call(), call()])  # a batch: the backend refuses it in its own words
    # A tools/call without a name: the backend answers invalid params.
    nameless = {"jsonrpc": "2.0", "id": 1, "method": "tools/call"}
    check(headers(("Mcp-Method", "tools/call")), nameless)


def test_a_notification_mirrors_its_method_too() -> None:
    note = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 1}}
    check(headers(("Mcp-Method", "notifications/cancelled")), note)
    with pytest.raises(HeaderMismatch):
        check(headers(), note)
