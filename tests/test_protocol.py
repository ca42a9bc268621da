"""What the proxy peeks at in MCP messages."""

from __future__ import annotations

import pytest

from proxyrunner.mcp.jsonrpc import MAX_ID_LENGTH, may_carry_odd_id, odd_id, parse_json, peek_method
from proxyrunner.mcp.revisions import parse_initialize


@pytest.mark.parametrize(
    ("body", "label"),
    [
        (b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{}}', "tools/call"),
        (
            b'{"jsonrpc": "2.0", "method" : "notifications/initialized"}',
            "notifications/initialized",
        ),
        (b'[{"jsonrpc":"2.0","id":1,"method":"ping"}]', "ping"),
        (b'{"jsonrpc":"2.0","id":1,"method":"x-vendor/anything"}', "other"),
        (b'{"jsonrpc":"2.0","id":1,"result":{}}', "response"),
        (b"garbage", "unknown"),
    ],
)
def test_method_label_is_bounded_to_known_methods(body: bytes, label: str) -> None:
    assert peek_method(body) == label


def test_initialize_is_recognized_with_its_version() -> None:
    init = parse_initialize(
        b'{"jsonrpc":"2.0","id":"a","method":"initialize","params":{"protocolVersion":"2025-03-26"}}'
    )
    assert init is not None
    assert init.request_id == "a"
    assert init.protocol_version == "2025-03-26"


def test_a_tool_call_mentioning_initialize_is_not_an_initialize() -> None:
    body = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"text":"initialize"}}'
    assert parse_initialize(body) is None


def test_non_json_body_raises_value_error() -> None:
    with pytest.raises(ValueError, match="Expecting"):
        parse_initialize(b'{"method":"initialize",')


@pytest.mark.parametrize(
    "body",
    [
        b'{"jsonrpc":"2.0","id":[1,2],"result":{}}',
        b'{"jsonrpc":"2.0","id" : {},"method":"ping"}',
        b'{"jsonrpc":"2.0","id":1.5,"method":"ping"}',
        b'{"jsonrpc":"2.0","id":1e3,"method":"ping"}',
        b'{"jsonrpc":"2.0","id":-2E1,"method":"ping"}',
        b'{"jsonrpc":"2.0","id":true,"method":"ping"}',
        b'{"jsonrpc":"2.0","id":NaN,"method":"ping"}',
        b'{"jsonrpc":"2.0","id":-Infinity,"method":"ping"}',
        b'{"jsonrpc":"2.0","id":9223372036854775808,"method":"ping"}',
        b'{"jsonrpc":"2.0","\\u0069\\u0064":[1],"method":"ping"}',
        b'{"jsonrpc":"2.0","i\\u0064":{},"method":"ping"}',
        b'[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","id":[],"method":"ping"}]',
        b'{"jsonrpc":"2.0","id":"' + b"x" * (MAX_ID_LENGTH + 1) + b'","method":"ping"}',
        # Escapes make the raw string longer than the decoded one, never shorter.
        b'{"jsonrpc":"2.0","id":"' + b"\\u0041" * (MAX_ID_LENGTH + 1) + b'","method":"ping"}',
    ],
)
def test_odd_ids_are_caught_by_the_byte_scan_and_refused_by_the_parse(body: bytes) -> None:
    assert may_carry_odd_id(body)
    assert odd_id(parse_json(body)) is not None


@pytest.mark.parametrize(
    "body",
    [
        b'{"jsonrpc":"2.0","id":1,"method":"ping"}',
        b'{"jsonrpc":"2.0","id":"abc","method":"ping"}',
        b'{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"x"}}',
        b'{"jsonrpc":"2.0","method":"notifications/initialized"}',
        b'{"jsonrpc":"2.0","id":"' + b"x" * MAX_ID_LENGTH + b'","method":"ping"}',
    ],
)
def test_ids_mcp_allows_pass_mostly_without_a_parse(body: bytes) -> None:
    assert odd_id(parse_json(body)) is None
    if len(body) < MAX_ID_LENGTH:
        assert not may_carry_odd_id(body)
    assert odd_id(parse_json(b'{"id":-9223372036854775808}')) is None  # scanned, allowed


def test_an_id_key_inside_params_is_parsed_but_not_refused() -> None:
    body = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"id":{"a":[1.5]}}}'
    assert may_carry_odd_id(body)
    assert odd_id(parse_json(body)) is None


@pytest.mark.parametrize("encoding", ["utf-8", "utf-16", "utf-16-le", "utf-16-be", "utf-32-le"])
def test_a_json_body_parses_in_every_encoding_json_allows(encoding: str) -> None:
    body = '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"\u00e9cho"}}'
    assert parse_json(body.encode(encoding))["params"]["name"] == "\u00e9cho"


def test_a_body_that_is_not_utf_8_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="utf-8"):
        parse_json(b'{"name":"\xff"}')
