"""The audit trail: ToolHive's ``audit_config`` read as written, and the audit stage in
the real pipeline in front of a real SDK-built MCP server, writing JSON lines to a file.

Stages after the audit stand in for identity (sets ``exchange.principal``, or refuses
with 401) and authorization (refuses one tool with 403), as the real ones will: by
raising a ProxyError from inside ``call_next``."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog
from aiohttp import web

from proxyrunner.audit.events import Origin, describe, outcome, replica_name
from proxyrunner.audit.sink import AuditLog
from proxyrunner.config.audit import AUDIT_CONFIG, AuditConfig
from proxyrunner.errors import ConfigError, StartupError
from proxyrunner.mcp import jsonrpc
from proxyrunner.principal import Principal, short_hash
from proxyrunner.proxy.errors import ProxyError
from proxyrunner.proxy.pipeline import Exchange, Next
from proxyrunner.proxy.stages.audit import Audit
from tests.conftest import StartBackend
from tests.helpers import MCP_HEADERS, raw_initialize, serve, tools_call

TOKEN = "eyJhbGciOiJub25lIn0.c2VjcmV0LXRva2Vu.sig"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SECRET_TEXT = "body-text-that-must-stay-out-of-the-audit-log"
ALICE = Principal(issuer="https://idp.example", subject="alice", client_id="cli-1")

# ------------------------------------------------------------------ audit_config


def read(value: object) -> AuditConfig:
    config: AuditConfig = AUDIT_CONFIG.read(value, "audit_config")
    return config


def problems(value: object) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        read(value)
    return caught.value.problems


def test_toolhive_audit_config_is_read_as_written_and_dumped_with_its_names() -> None:
    written = {
        "component": "github-mcp",
        "eventTypes": ["mcp_tool_call", "mcp_initialize"],
        "excludeEventTypes": ["mcp_ping"],
        "includeRequestData": True,
        "maxDataSize": 2048,
        "logFile": "/var/log/toolhive/audit.log",
    }
    config = read({**written, "includeResponseData": False})
    assert config == AuditConfig(
        component="github-mcp",
        event_types=("mcp_tool_call", "mcp_initialize"),
        exclude_event_types=("mcp_ping",),
        include_request_data=True,
        max_data_size=2048,
        log_file="/var/log/toolhive/audit.log",
    )
    assert AUDIT_CONFIG.write(config) == written


def test_snake_case_names_are_read_too() -> None:
    config = read({"event_types": ["mcp_tool_call"], "max_data_size": 10, "log_file": "a.log"})
    assert (config.event_types, config.max_data_size, config.log_file) == (
        ("mcp_tool_call",),
        10,
        "a.log",
    )


def test_keys_match_as_gos_decoder_matches_them_and_unknown_keys_are_ignored() -> None:
    config = read(
        {
            "MaxDataSize": 10,
            "LOGFILE": "a.log",
            "Include_Request_Data": True,
            "detectApplicationErrors": False,
            "x": 1,
        }
    )
    assert (config.max_data_size, config.log_file, config.include_request_data) == (
        10,
        "a.log",
        True,
    )


def test_defaults_follow_toolhive() -> None:
    assert read({}) == AuditConfig()
    assert AuditConfig().max_data_size == 1024
    assert read({"maxDataSize": 0}).max_data_size == 1024  # omitempty: 0 is "not set"
    assert read({"enabled": False}).enabled is False  # ToolHive's older layout
    assert AUDIT_CONFIG.write(AuditConfig()) == {"maxDataSize": 1024}


def test_problems_name_the_path() -> None:
    assert problems({"maxDataSize": -1}) == ["audit_config.maxDataSize: must be >= 0, got -1"]
    assert problems({"eventTypes": ["mcp_tool_call", "tool_call"]})[0].startswith(
        "audit_config.eventTypes[1]: unknown event type 'tool_call'; known: mcp_initialize"
    )
    assert problems({"excludeEventTypes": "mcp_ping"}) == [
        "audit_config.excludeEventTypes: must be a list of strings, got 'mcp_ping'"
    ]
    assert problems({"includeRequestData": "yes", "maxDataSize": "1k"}) == [
        "audit_config.includeRequestData: must be true or false, got 'yes'",
        "audit_config.maxDataSize: must be an integer, got '1k'",
    ]
    assert problems(["logFile"])[0].startswith("audit_config: must be an object")


def test_exclusion_wins_over_inclusion() -> None:
    config = AuditConfig(
        event_types=("mcp_tool_call", "mcp_ping"), exclude_event_types=("mcp_ping",)
    )
    assert config.records("mcp_tool_call")
    assert not config.records("mcp_ping")
    assert not config.records("mcp_tools_list")
    assert AuditConfig().records("mcp_tools_list")


# ------------------------------------------------------------------ events


def test_a_request_is_described_by_toolhives_event_types() -> None:
    call = describe("POST", {"method": "resources/read", "params": {"uri": "file:///a"}})
    assert (call.event_type, call.target_type, call.target_name) == (
        "mcp_resource_read",
        "resource",
        "file:///a",
    )
    batch = describe("POST", [{"method": "ping"}, {"method": "tools/list"}])
    assert (batch.event_type, batch.methods) == ("mcp_request", ("ping", "tools/list"))
    assert describe("POST", [{"method": "ping"}, {"method": "ping"}]).event_type == "mcp_ping"
    assert describe("GET", None).event_type == "sse_connection"
    assert describe("DELETE", None).event_type == "http_request"
    assert describe("POST", {"method": "notifications/initialized"}).event_type == "mcp_request"


def test_outcomes_use_toolhives_vocabulary() -> None:
    assert [outcome(s, None) for s in (200, 202, 401, 403, 404, 499, 502)] == [
        "success",
        "success",
        "denied",
        "denied",
        "failure",
        "failure",
        "error",
    ]
    assert outcome(200, jsonrpc.INTERNAL_ERROR) == "failure"


def test_the_replica_is_the_pod_name_else_the_server_name() -> None:
    assert replica_name({"HOSTNAME": "github-0"}, "github") == "github-0"
    assert replica_name({}, "github") == "github"


# ------------------------------------------------------------------ the sink


def test_an_unopenable_log_file_stops_the_start_naming_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir" / "audit.log"
    with pytest.raises(StartupError, match=r"audit_config\.log_file: cannot open .*no-such-dir"):
        AuditLog.open(AuditConfig(log_file=str(missing)))
    with pytest.raises(StartupError, match=r"audit_config\.log_file"):
        AuditLog.open(AuditConfig(log_file=str(tmp_path)))  # a directory


def test_a_failing_write_warns_once_and_never_raises() -> None:
    class Full:
        def write(self, text: str) -> int:
            raise OSError(28, "No space left on device")

        def close(self) -> None:
            pass

    sink = AuditLog(Full(), "/full/audit.log")  # type: ignore[arg-type]
    with structlog.testing.capture_logs() as logs:
        sink.write({"type": "mcp_ping"})
        sink.write({"type": "mcp_ping"})
    assert [entry["log_level"] for entry in logs] == ["warning"]
    assert logs[0]["audit_log"] == "/full/audit.log"


def test_without_a_log_file_events_are_raw_json_lines_on_stdout(
    capsys: pytest.CaptureFixture[str],
) -> None:
    sink = AuditLog.open(AuditConfig())
    sink.write({"type": "mcp_ping", "outcome": "success"})
    sink.close()
    out, err = capsys.readouterr()
    assert [json.loads(line) for line in out.splitlines()] == [
        {"type": "mcp_ping", "outcome": "success"}
    ]
    assert err == ""


def test_the_log_file_is_appended_to_and_private(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    path.write_text('{"earlier":true}\n')
    sink = AuditLog.open(AuditConfig(log_file=str(path)))
    sink.write({"type": "mcp_ping"})
    assert path.read_text().splitlines()[-1] == '{"type":"mcp_ping"}'  # flushed at once
    sink.close()
    assert len(path.read_text().splitlines()) == 2
    fresh = tmp_path / "fresh.log"
    AuditLog.open(AuditConfig(log_file=str(fresh))).close()
    assert fresh.stat().st_mode & 0o777 == 0o600


# ------------------------------------------------------------------ the stage, end to end


class Unauthenticated(ProxyError):
    status = 401
    code = jsonrpc.INVALID_REQUEST


class Forbidden(ProxyError):
    status = 403
    code = jsonrpc.INVALID_REQUEST


@dataclass
class FakeIdentity:
    """The identity stage's part: a bearer token makes ALICE the principal; none is 401."""

    name: str = "identity"

    async def handle(self, exchange: Exchange, call_next: Next) -> web.StreamResponse:
        if "Authorization" not in exchange.request.headers:
            raise Unauthenticated("authentication required")
        exchange.principal = ALICE
        return await call_next(exchange)


@dataclass
class FakeAuthz:
    """The authorization stage's part: the tool ``add`` is forbidden."""

    name: str = "authorization"

    def check(self, exchange: Exchange) -> None:
        message = exchange.message() if isinstance(exchange.body, bytes) and exchange.body else {}
        if isinstance(message, dict) and (message.get("params") or {}).get("name") == "add":
            raise Forbidden("tool add is not allowed")


async def serve_audited(backend_url: str, audit: AuditConfig) -> AsyncIterator[str]:
    sink = AuditLog.open(audit)
    origin = Origin(component=audit.component or "demo", replica="demo-7", transport="http")
    try:
        stages = [Audit(audit, sink, origin), FakeIdentity(), FakeAuthz()]
        async for url, _ in serve(backend_url, stages):
            yield url
    finally:
        sink.close()


async def exchange_a_few(url: str) -> str:
    """initialize, initialized, an echo, a forbidden add, tools/list, an unknown method
    and one request without a token; returns the session id."""
    async with aiohttp.ClientSession(headers=AUTH) as http:
        session = await raw_initialize(http, url)
        headers = {**MCP_HEADERS, "Mcp-Session-Id": session}
        for message, status in (
            (tools_call(1, "echo", text=SECRET_TEXT), 200),
            (tools_call(2, "add", a=1, b=2), 403),
            ({"jsonrpc": "2.0", "id": 3, "method": "tools/list"}, 200),
            ({"jsonrpc": "2.0", "id": 4, "method": "no/such/method"}, 200),
        ):
            async with http.post(url, json=message, headers=headers) as r:
                assert r.status == status, await r.text()
                await r.read()
    async with (
        aiohttp.ClientSession() as http,
        http.post(url, json=tools_call(5), headers=MCP_HEADERS) as r,
    ):
        assert r.status == 401
    return session


def events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_every_request_is_one_event_with_who_what_and_how_it_ended(
    start_backend: StartBackend, tmp_path: Path
) -> None:
    log_file = tmp_path / "audit.log"
    backend = start_backend("alpha")
    async for url in serve_audited(backend.url, AuditConfig(log_file=str(log_file))):
        session = await exchange_a_few(url)
    init, initialized, echo, add, listed, unknown, anonymous = events(log_file)
    assert [e["type"] for e in (init, initialized, echo, add, listed, unknown, anonymous)] == [
        "mcp_initialize",
        "mcp_request",
        "mcp_tool_call",
        "mcp_tool_call",
        "mcp_tools_list",
        "mcp_request",
        "mcp_tool_call",
    ]
    for event in (init, initialized, echo, add, listed, unknown):
        assert event["subjects"] == {
            "user": "alice",
            "user_id": "alice",
            "issuer": "https://idp.example",
            "client_id": "cli-1",
        }
        # The session is followed by its hash, from the initialize answer on.
        assert event["source"]["extra"] == {"session_id": short_hash(session)}
        assert event["component"] == "demo"
        assert event["msg"] == "audit_event"
        assert event["logged_at"].endswith("Z")
        assert event["metadata"]["extra"]["replica"] == "demo-7"
        assert event["metadata"]["extra"]["transport"] == "http"
        assert isinstance(event["metadata"]["extra"]["duration_ms"], int)
    assert len({e["audit_id"] for e in events(log_file)}) == 7
    assert echo["outcome"] == "success"
    assert echo["target"] == {
        "endpoint": "/mcp",
        "method": "tools/call",
        "type": "tool",
        "name": "echo",
    }
    assert echo["metadata"]["extra"]["http_status"] == 200
    assert initialized["metadata"]["extra"]["http_status"] == 202
    assert (add["outcome"], add["metadata"]["extra"]["reason"]) == ("denied", "forbidden")
    assert add["metadata"]["extra"]["http_status"] == 403
    assert add["target"]["name"] == "add"
    # A JSON-RPC error in a 200 answer is a failure ToolHive's status mapping cannot see.
    assert unknown["outcome"] == "failure"
    assert unknown["metadata"]["extra"]["jsonrpc_error_code"] == -32601
    assert anonymous["outcome"] == "denied"
    assert anonymous["metadata"]["extra"]["reason"] == "unauthenticated"
    assert anonymous["subjects"] == {"user": "anonymous"}
    assert anonymous["source"]["value"] == "127.0.0.1"
    text = log_file.read_text()
    assert all("data" not in e for e in events(log_file))
    assert SECRET_TEXT not in text
    assert TOKEN not in text
    assert "Bearer" not in text
    assert "application/json, text/event-stream" not in text  # no header values at all


async def test_bodies_only_when_asked_and_cut_to_max_data_size(
    start_backend: StartBackend, tmp_path: Path
) -> None:
    log_file = tmp_path / "audit.log"
    config = AuditConfig(
        log_file=str(log_file),
        include_request_data=True,
        include_response_data=True,
        max_data_size=200,
        event_types=("mcp_tool_call", "mcp_tools_list"),
    )
    backend = start_backend("alpha")
    async for url in serve_audited(backend.url, config):
        async with aiohttp.ClientSession(headers=AUTH) as http:
            session = await raw_initialize(http, url)
            headers = {**MCP_HEADERS, "Mcp-Session-Id": session}
            for message in (
                {"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                tools_call(2, "echo", text="x" * 500),
            ):
                async with http.post(url, json=message, headers=headers) as r:
                    await r.read()
    listed, echo = events(log_file)  # event_types: no initialize
    # A small request fits whole and is kept as the JSON it is.
    assert listed["data"]["request"] == {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    assert isinstance(listed["data"]["response"], str)  # the tool list is longer: cut
    assert len(listed["data"]["response"].encode()) <= 200
    request = echo["data"]["request"]
    assert isinstance(request, str)
    assert len(request.encode()) == 200
    assert request.startswith('{"jsonrpc"')
    assert len(echo["data"]["response"].encode()) <= 200
    assert TOKEN not in log_file.read_text()


async def test_excluded_event_types_are_not_written(
    start_backend: StartBackend, tmp_path: Path
) -> None:
    log_file = tmp_path / "audit.log"
    config = AuditConfig(
        log_file=str(log_file), exclude_event_types=("mcp_tool_call", "mcp_request")
    )
    backend = start_backend("alpha")
    async for url in serve_audited(backend.url, config):
        await exchange_a_few(url)
    assert [e["type"] for e in events(log_file)] == ["mcp_initialize", "mcp_tools_list"]
