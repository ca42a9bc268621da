"""RunConfig: loading, validation, both layouts, omitempty dumping and round trips."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from proxyrunner.cli import embedded_config
from proxyrunner.config import (
    DEFAULT_SESSION_CACHE_SIZE,
    SessionRedisConfig,
    apply_env_overrides,
    dump_config,
    dump_json,
    dump_yaml,
    find_config_file,
    load_config_file,
    load_config_text,
    parse_config,
    secrets_from_env,
)
from proxyrunner.durations import format_duration, parse_duration
from proxyrunner.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
MINIMAL = {"name": "fetch", "remote_url": "http://127.0.0.1:9000/mcp"}


def problems_of(doc: object) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(doc)
    return info.value.problems


def test_minimal_config_gets_documented_defaults() -> None:
    config, unknown = parse_config(MINIMAL)
    assert unknown == ()
    assert config.schema_version == "v0.1.0"
    assert config.listen.port == 8080
    assert config.backend.transport == "streamable-http"
    assert config.sessions.ttl == 7200
    assert config.backend.replicas is None
    assert config.sessions.cache_size == DEFAULT_SESSION_CACHE_SIZE
    assert config.mcpserver_generation == 0


def test_absent_backend_replicas_is_none_and_explicit_zero_stays_zero() -> None:
    absent, _ = parse_config({"name": "x", "runtime": "kubernetes", "image": "img"})
    zero, _ = parse_config(
        {"name": "x", "runtime": "kubernetes", "image": "i", "backend_replicas": 0}
    )
    assert absent.backend.replicas is None
    assert zero.backend.replicas == 0
    assert "backend_replicas" not in dump_config(absent)
    assert dump_config(zero)["backend_replicas"] == 0


def test_absent_and_zero_session_cache_size_both_mean_the_default() -> None:
    absent, _ = parse_config(MINIMAL)
    zero, _ = parse_config({**MINIMAL, "session_cache_size": 0})
    sized, _ = parse_config({**MINIMAL, "session_cache_size": 500})
    assert absent.sessions.cache_size == zero.sessions.cache_size == 1000
    assert sized.sessions.cache_size == 500
    assert "session_cache_size" not in dump_config(zero)


FULL = {
    "name": "github",
    "runtime": "kubernetes",
    "image": "ghcr.io/example/github-mcp:1.2.3",
    "transport": "streamable-http",
    "cmd_args": ["--toolsets", "repos"],
    "env_vars": {"B": "2", "A": "1"},
    "allowed_hosts": ["mcp.local"],
    "target_port": 8000,
    "mcpserver_generation": 7,
    "backend_replicas": 3,
    "session_redis": {"address": "redis.default.svc:6379", "db": 2, "key_prefix": "thv:"},
    "session_cache_size": 500,
    "session_ttl": "30m",
    "drain_delay": "3s",
    "k8s_pod_template_patch": '{"spec":{"nodeSelector":{"pool":"mcp"}}}',
}


def test_json_round_trip_preserves_every_field() -> None:
    config, _ = parse_config(FULL)
    again, _ = parse_config(json.loads(dump_json(config)))
    assert again == config
    assert again.backend.replicas == 3
    assert again.sessions.redis == SessionRedisConfig("redis.default.svc:6379", 2, "thv:")


def test_yaml_round_trip_preserves_every_field() -> None:
    config, _ = parse_config(FULL)
    again = load_config_text(dump_yaml(config), "test.yaml").config
    assert again == config


def test_dump_omits_absent_and_zero_fields() -> None:
    config, _ = parse_config(MINIMAL)
    dumped = dump_config(config)
    for absent in (
        "backend_replicas",
        "session_redis",
        "session_cache_size",
        "mcpserver_generation",
        "cmd_args",
        "env_vars",
        "image",
        "k8s_pod_template_patch",
    ):
        assert absent not in dumped


def test_yaml_file_loads(tmp_path: Path) -> None:
    path = tmp_path / "runconfig.yaml"
    path.write_text(yaml.safe_dump(FULL))
    assert load_config_file(path).config == parse_config(FULL)[0]


def test_a_config_nested_too_deeply_to_parse_is_a_config_error(tmp_path: Path) -> None:
    for name, text in (
        ("runconfig.json", "[" * 100_000 + "]" * 100_000),
        ("runconfig.yaml", "a: " + "[" * 100_000 + "]" * 100_000),
    ):
        path = tmp_path / name
        path.write_text(text)
        with pytest.raises(ConfigError) as info:
            load_config_file(path)
        assert info.value.problems == [f"{path}: nested too deeply to parse"]


def test_nested_scaling_config_layout_loads_like_the_top_level_one() -> None:
    nested = {
        "name": "x",
        "runtime": "kubernetes",
        "image": "i",
        "scaling_config": {
            "backend_replicas": 2,
            "session_cache_size": 50,
            "session_redis": {"address": "r:6379", "key_prefix": "p"},
        },
    }
    flat = {
        "name": "x",
        "runtime": "kubernetes",
        "image": "i",
        "backend_replicas": 2,
        "session_cache_size": 50,
        "session_redis": {"address": "r:6379", "key_prefix": "p"},
    }
    assert parse_config(nested)[0] == parse_config(flat)[0]


def test_same_value_in_both_layouts_is_fine() -> None:
    doc = {**MINIMAL, "session_cache_size": 5, "scaling_config": {"session_cache_size": 5}}
    assert parse_config(doc)[0].sessions.configured_cache_size == 5


def test_different_values_in_both_layouts_name_both_places() -> None:
    doc = {
        "name": "x",
        "runtime": "kubernetes",
        "image": "i",
        "backend_replicas": 2,
        "scaling_config": {"backend_replicas": 3},
    }
    (problem,) = problems_of(doc)
    assert "backend_replicas" in problem
    assert "scaling_config.backend_replicas" in problem
    assert "2 vs 3" in problem


def test_key_prefix_without_colon_is_normalized() -> None:
    config, _ = parse_config(
        {**MINIMAL, "session_redis": {"address": "r:6379", "key_prefix": "thv"}}
    )
    assert config.sessions.redis is not None
    assert config.sessions.redis.key_prefix == "thv:"


@pytest.mark.parametrize("key", ["password", "passwordRef", "password_ref"])
def test_password_in_session_redis_is_refused_without_echoing_it(key: str) -> None:
    doc = {**MINIMAL, "session_redis": {"address": "r:6379", key: "hunter2-secret"}}
    (problem,) = problems_of(doc)
    assert "THV_SESSION_REDIS_PASSWORD" in problem
    assert "hunter2-secret" not in problem


@pytest.mark.parametrize(
    ("doc", "field", "fragment"),
    [
        ({**MINIMAL, "port": "8080"}, "port", "must be an integer"),
        ({**MINIMAL, "port": 70000}, "port", "between 0 and 65535"),
        ({**MINIMAL, "backend_replicas": -1}, "backend_replicas", ">= 0"),
        ({**MINIMAL, "backend_replicas": True}, "backend_replicas", "must be an integer"),
        ({**MINIMAL, "session_cache_size": 1.5}, "session_cache_size", "must be an integer"),
        ({**MINIMAL, "mcpserver_generation": -3}, "mcpserver_generation", ">= 0"),
        ({**MINIMAL, "transport": "websocket"}, "transport", "must be one of"),
        ({**MINIMAL, "session_ttl": "forever"}, "session_ttl", "not a duration"),
        ({**MINIMAL, "cmd_args": "run it"}, "cmd_args", "list of strings"),
        ({**MINIMAL, "remote_url": "localhost:9000"}, "remote_url", "full http(s) URL"),
        ({"remote_url": "http://h/mcp"}, "name", "is required"),
        ({**MINIMAL, "name": "Not_A_Label"}, "name", "DNS-1123"),
        (
            {**MINIMAL, "session_redis": {"address": "no-port"}},
            "session_redis.address",
            "host:port",
        ),
        ({"name": "x"}, "runtime", "needs one of remote_url, backend_urls or cmd_args"),
        ({"name": "x", "runtime": "kubernetes"}, "image", "is required"),
    ],
)
def test_invalid_values_are_refused_with_field_rule_and_value(
    doc: dict[str, object], field: str, fragment: str
) -> None:
    problems = problems_of(doc)
    assert any(p.startswith(f"{field}:") and fragment in p for p in problems), problems


def test_all_problems_are_reported_at_once() -> None:
    problems = problems_of({"name": "x", "port": "a", "backend_replicas": "b", "session_ttl": []})
    assert {p.split(":")[0] for p in problems} >= {"port", "backend_replicas", "session_ttl"}


def test_env_var_values_are_never_echoed_in_errors() -> None:
    (problem,) = problems_of({**MINIMAL, "env_vars": {"TOKEN": 12345678}})
    assert "12345678" not in problem


def test_unknown_fields_are_ignored_and_listed() -> None:
    config, unknown = parse_config({**MINIMAL, "future_field": 1, "another": {}})
    assert config.name == "fetch"
    assert unknown == ("another", "future_field")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("2h", 7200), ("1h30m", 5400), ("500ms", 0.5), ("1.5h", 5400), (45, 45)],
)
def test_durations_accept_go_strings_and_seconds(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds
    assert parse_duration(format_duration(parse_duration(text))) == seconds


def test_generation_env_overrides_the_file() -> None:
    config, _ = parse_config({**MINIMAL, "mcpserver_generation": 3})
    assert apply_env_overrides(config, {"THV_MCPSERVER_GENERATION": "9"}).mcpserver_generation == 9
    assert apply_env_overrides(config, {}).mcpserver_generation == 3


@pytest.mark.parametrize("bad", ["-1", "abc", "1.5"])
def test_generation_env_that_is_not_a_non_negative_integer_is_a_config_error(bad: str) -> None:
    config, _ = parse_config(MINIMAL)
    with pytest.raises(ConfigError, match="THV_MCPSERVER_GENERATION"):
        apply_env_overrides(config, {"THV_MCPSERVER_GENERATION": bad})


def test_password_comes_only_from_the_environment_and_never_shows_in_repr() -> None:
    secrets = secrets_from_env({"THV_SESSION_REDIS_PASSWORD": "s3cr3t-value"})
    assert secrets.redis_password == "s3cr3t-value"
    assert "s3cr3t-value" not in repr(secrets)


def test_config_lookup_takes_the_first_existing_path(tmp_path: Path) -> None:
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    second.write_text("{}")
    assert find_config_file([first, second]) == second
    first.write_text("{}")
    assert find_config_file([first, second]) == first


def test_no_config_anywhere_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--config"):
        find_config_file([tmp_path / "missing.json"])


def test_shipped_example_configs_are_valid() -> None:
    files = sorted((REPO / "config").glob("*.json")) + sorted((REPO / "config").glob("*.yaml"))
    assert files, "config/ ships example RunConfigs"
    for path in files:
        load_config_file(path)


def test_embedded_config_file_matches_the_built_in_default() -> None:
    from_file = load_config_file(REPO / "config" / "embedded.json").config
    built_in = embedded_config()
    assert from_file.backend.cmd_args[1:] == built_in.backend.cmd_args[1:]
    backend = replace(built_in.backend, cmd_args=from_file.backend.cmd_args)
    assert from_file == replace(built_in, backend=backend)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxyrunner", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_config_validate_prints_the_normalized_config(tmp_path: Path) -> None:
    path = tmp_path / "rc.yaml"
    path.write_text(yaml.safe_dump({**FULL, "scaling_config": {"backend_replicas": 3}}))
    result = _cli("config", "validate", str(path))
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert printed["backend_replicas"] == 3
    assert printed["session_ttl"] == "30m"
    assert "scaling_config" not in printed


def test_invalid_config_exits_2_with_the_field_and_no_traceback(tmp_path: Path) -> None:
    path = tmp_path / "rc.json"
    path.write_text(json.dumps({**MINIMAL, "port": "eighty"}))
    for args in (("config", "validate", str(path)), ("run", "--config", str(path))):
        result = _cli(*args)
        assert result.returncode == 2
        assert "port: must be an integer" in result.stderr
        assert "Traceback" not in result.stderr


def test_malformed_file_exits_2_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "rc.json"
    path.write_text("{ name: [unclosed")
    result = _cli("run", "--config", str(path))
    assert result.returncode == 2
    assert str(path) in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_generation_env_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "rc.json"
    path.write_text(json.dumps(MINIMAL))
    result = subprocess.run(
        [sys.executable, "-m", "proxyrunner", "run", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={"THV_MCPSERVER_GENERATION": "latest", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 2
    assert "THV_MCPSERVER_GENERATION" in result.stderr


def test_version_flag_prints_the_version() -> None:
    result = _cli("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("proxyrunner ")


def test_a_local_stdio_server_needs_a_command_to_run() -> None:
    problems = problems_of({**MINIMAL, "transport": "stdio"})
    assert any("transport" in p and "cmd_args" in p for p in problems), problems


def test_a_stdio_server_is_served_as_its_proxy_mode_and_http_servers_as_themselves() -> None:
    stdio, _ = parse_config({"name": "x", "transport": "stdio", "cmd_args": ["srv"]})
    legacy, _ = parse_config(
        {"name": "x", "transport": "stdio", "proxy_mode": "sse", "cmd_args": ["srv"]}
    )
    sse, _ = parse_config({**MINIMAL, "transport": "sse"})
    assert stdio.backend.served_protocol == "streamable-http"
    assert legacy.backend.served_protocol == "sse"
    assert sse.backend.served_protocol == "sse"
