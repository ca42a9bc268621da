"""DNS-rebinding protection: which Host and Origin values reach the MCP routes."""

from __future__ import annotations

import pytest

from proxyrunner.hosts import is_loopback
from proxyrunner.mcp.rebinding import RebindingRule

LOOPBACK = ["127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost", "a.localhost"]
ELSEWHERE = ["0.0.0.0", "10.0.0.1", "example.com", "localhost.example.com", ""]


def status(guard: RebindingRule, host: str | None, origin: str | None = None) -> int | None:
    refused = guard.refusal(host, origin)
    return None if refused is None else refused[0]


@pytest.mark.parametrize("host", LOOPBACK)
def test_loopback_names_and_addresses_are_recognized(host: str) -> None:
    assert is_loopback(host)


@pytest.mark.parametrize("host", ELSEWHERE)
def test_other_names_are_not_loopback(host: str) -> None:
    assert not is_loopback(host)


def test_on_loopback_only_loopback_hosts_and_origins_pass() -> None:
    guard = RebindingRule("127.0.0.1")
    assert guard.active
    for host in ("127.0.0.1:8080", "localhost:8080", "[::1]:8080", "LOCALHOST", None):
        assert status(guard, host) is None
    assert status(guard, "127.0.0.1:8080", "http://localhost:3000") is None
    assert guard.refusal("evil.example.com", None) == (
        421,
        "the Host header names a host this proxy does not serve",
    )
    assert status(guard, "evil.example.com:8080", "http://evil.example.com") == 421
    # A rebinding page's requests carry its own origin even when Host is loopback.
    assert status(guard, "127.0.0.1:8080", "http://evil.example.com") == 403
    assert status(guard, "127.0.0.1:8080", "null") == 403
    assert status(guard, "not a host!") == 421


def test_verdicts_are_remembered_without_changing_them() -> None:
    guard = RebindingRule("127.0.0.1")
    for _ in range(3):
        assert status(guard, "127.0.0.1:8080") is None
        assert status(guard, "evil.example.com") == 421


def test_on_other_addresses_the_check_is_off_unless_hosts_are_named() -> None:
    assert not RebindingRule("0.0.0.0").active
    named = RebindingRule("0.0.0.0", ["mcp.internal"])
    assert named.active
    assert status(named, "mcp.internal:8080", "https://MCP.internal") is None
    assert status(named, "localhost:8080") == 421
    assert status(named, "other.internal") == 421


def test_allowed_hosts_extend_loopback_and_a_star_turns_the_check_off() -> None:
    extended = RebindingRule("127.0.0.1", ["mcp.local"])
    assert status(extended, "mcp.local") is None
    assert status(extended, "localhost") is None
    assert not RebindingRule("127.0.0.1", ["*"]).active


def test_the_bridge_guard_ignores_origin() -> None:
    bridge = RebindingRule("127.0.0.1", check_origin=False)
    assert status(bridge, "127.0.0.1:4000", "https://app.example.com") is None
    assert status(bridge, "evil.example.com:4000") == 421
