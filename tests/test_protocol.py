"""What the proxy peeks at in MCP messages."""

from __future__ import annotations

import pytest

from proxyrunner.mcp.jsonrpc import peek_method
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
