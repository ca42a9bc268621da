"""RunConfig by concern: each concern validates itself, the drain delay follows where the
proxy listens, the field table maps every JSON field, and the environment is read only
by the functions the CLI calls at startup."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from subprocess import CompletedProcess

import pytest

from proxyrunner.cli import embedded_config
from proxyrunner.config import (
    FIELDS,
    BackendConfig,
    DrainConfig,
    KubernetesConfig,
    ListenConfig,
    RunConfig,
    SessionRedisConfig,
    SessionsConfig,
    dump_config,
    parse_config,
    pod_address_map,
    pod_namespace,
)
from proxyrunner.errors import ConfigError

MINIMAL = {"name": "fetch", "remote_url": "http://127.0.0.1:9000/mcp"}
KUBE = {"name": "x", "runtime": "kubernetes", "image": "img"}


def proxyrunner(*args: str, env: Mapping[str, str] | None = None) -> CompletedProcess[str]:
    """``python -m proxyrunner`` as a user runs it; with ``env``, in that environment only."""
    command = [sys.executable, "-m", "proxyrunner", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=30, check=False, env=env)


def delay_of(doc: dict[str, object]) -> float:
    return parse_config(doc)[0].drain.delay


def test_a_loopback_proxy_with_the_local_runtime_has_no_drain_delay_unless_configured() -> None:
    assert delay_of(MINIMAL) == 0
    assert delay_of({**MINIMAL, "host": "localhost"}) == 0
    assert delay_of({**MINIMAL, "host": "::1"}) == 0
    assert embedded_config().drain.delay == 0


def test_a_proxy_that_a_load_balancer_may_front_keeps_the_5s_drain_delay() -> None:
    assert delay_of({**MINIMAL, "host": "0.0.0.0"}) == 5
    assert delay_of({**MINIMAL, "host": "10.1.2.3"}) == 5
    assert delay_of(KUBE) == 5  # listening on loopback, but the backend is a StatefulSet


def test_an_explicit_drain_delay_is_kept_wherever_the_proxy_listens() -> None:
    assert delay_of({**MINIMAL, "drain_delay": "2s"}) == 2
    assert delay_of({**MINIMAL, "host": "0.0.0.0", "drain_delay": "0s"}) == 0
    assert delay_of({**KUBE, "drain_delay": "1s"}) == 1


def test_the_default_drain_delay_follows_a_changed_listen_address() -> None:
    config = embedded_config()
    public = replace(config, listen=replace(config.listen, host="0.0.0.0"))
    assert public.drain.delay == 5
    assert replace(public, listen=config.listen).drain.delay == 0


def test_the_dump_writes_drain_delay_only_when_the_config_gives_it() -> None:
    assert "drain_delay" not in dump_config(parse_config(MINIMAL)[0])
    assert "drain_delay" not in dump_config(parse_config(KUBE)[0])
    assert dump_config(parse_config({**MINIMAL, "drain_delay": 0})[0])["drain_delay"] == "0s"


def test_config_validate_prints_no_drain_delay_the_user_did_not_write(tmp_path: Path) -> None:
    for doc, expected in ((MINIMAL, None), (KUBE, None), ({**MINIMAL, "drain_delay": "3s"}, "3s")):
        path = tmp_path / "rc.json"
        path.write_text(json.dumps(doc))
        result = proxyrunner("config", "validate", str(path))
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout).get("drain_delay") == expected


@pytest.mark.parametrize(
    ("build", "fragment"),
    [
        (lambda: ListenConfig(port=70000), "port: must be between 0 and 65535, got 70000"),
        (lambda: ListenConfig(max_request_body=0), "max_request_body: must be > 0"),
        (lambda: BackendConfig(), "runtime: the local runtime needs one of remote_url"),
        (lambda: BackendConfig(runtime="kubernetes"), "image: is required"),
        (lambda: BackendConfig(remote_url="x", urls=("y",)), "remote_url: must be a full"),
        (lambda: BackendConfig(cmd_args=("a",), replicas=-1), "backend_replicas: must be >= 0"),
        (
            lambda: SessionsConfig(ttl=10, touch_interval=60),
            "session_touch_interval: must be shorter than session_ttl (10s), got 1m",
        ),
        (
            lambda: BackendConfig(
                runtime="kubernetes", image="img", transport="stdio", stdio_isolation="per-session"
            ),
            "stdio_isolation: per-session needs the local runtime",
        ),
        (
            lambda: BackendConfig(cmd_args=("a",), stdio_isolation="per-session"),
            "stdio_isolation: per-session applies to transport stdio only",
        ),
        (
            lambda: BackendConfig(cmd_args=("a",), transport="stdio", stdio_isolation="apart"),
            "stdio_isolation: must be one of shared, per-session",
        ),
        (
            lambda: BackendConfig(cmd_args=("a",), transport="stdio", stdio_max_sessions=0),
            "stdio_max_sessions: must be >= 1",
        ),
        (
            lambda: BackendConfig(cmd_args=("a",), transport="stdio", stdio_idle_timeout=0),
            "stdio_idle_timeout: must be greater than zero",
        ),
        (lambda: SessionsConfig(configured_cache_size=-1), "session_cache_size: must be >= 0"),
        (lambda: SessionRedisConfig("no-port"), "session_redis.address: must be host:port"),
        (lambda: DrainConfig(timeout=0), "drain_timeout: must be greater than zero"),
        (lambda: DrainConfig(configured_delay=-1), "drain_delay: must not be negative"),
        (lambda: KubernetesConfig(pod_template_patch="[1]"), "k8s_pod_template_patch: must be"),
        (
            lambda: RunConfig(name="Bad_Name", backend=BackendConfig(cmd_args=("srv",))),
            "name: must be a DNS-1123 label",
        ),
    ],
)
def test_each_concern_refuses_invalid_values_naming_the_json_field(
    build: Callable[[], object], fragment: str
) -> None:
    with pytest.raises(ConfigError) as info:
        build()
    assert any(fragment in problem for problem in info.value.problems), info.value.problems


def test_a_concern_reports_all_its_problems_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        SessionsConfig(ttl=0, local_max_age=0, configured_cache_size=-1)
    fields = {problem.split(":")[0] for problem in info.value.problems}
    assert fields >= {"session_ttl", "session_local_max_age", "session_cache_size"}


def test_problems_of_different_concerns_are_reported_together() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"name": "Bad_Name", "port": 70000, "session_ttl": 0, "drain_timeout": 0})
    fields = {problem.split(":")[0] for problem in info.value.problems}
    assert fields >= {"name", "port", "session_ttl", "drain_timeout", "runtime"}


def test_every_table_row_names_a_distinct_json_field_and_an_existing_attribute() -> None:
    config = parse_config(KUBE)[0]
    names = [row.name for row in FIELDS]
    assert len(names) == len(set(names))
    for row in FIELDS:
        value: object = config
        for part in row.target.split("."):
            assert hasattr(value, part), row
            value = getattr(value, part)


def test_the_scaling_config_layout_dumps_and_loads_back_unchanged() -> None:
    config = parse_config(
        {
            **KUBE,
            "backend_replicas": 0,
            "session_cache_size": 50,
            "session_redis": {"address": "r:6379", "key_prefix": "p"},
        }
    )[0]
    nested = dump_config(config, layout="scaling_config")
    assert nested["scaling_config"] == {
        "backend_replicas": 0,
        "session_redis": {"address": "r:6379", "key_prefix": "p:", "db": 0},
        "session_cache_size": 50,
    }
    assert not {"backend_replicas", "session_redis", "session_cache_size"} & nested.keys()
    assert parse_config(nested)[0] == config


def test_the_pod_namespace_comes_from_the_service_account_file_then_pod_namespace(
    tmp_path: Path,
) -> None:
    sa_file = tmp_path / "namespace"
    sa_file.write_text("from-file\n")
    assert pod_namespace({"POD_NAMESPACE": "from-env"}, sa_file) == "from-file"
    missing = tmp_path / "missing"
    assert pod_namespace({"POD_NAMESPACE": " from-env "}, missing) == "from-env"
    with pytest.raises(ConfigError, match="not running in a pod and POD_NAMESPACE is not set"):
        pod_namespace({}, missing)


def test_the_pod_address_map_is_read_from_the_file_its_variable_names(tmp_path: Path) -> None:
    path = tmp_path / "pods.json"
    path.write_text(json.dumps({"mcp-0": "http://127.0.0.1:9000/mcp"}))
    env = {"PROXYRUNNER_POD_ADDRESS_MAP": str(path)}
    assert pod_address_map(env) == {"mcp-0": "http://127.0.0.1:9000/mcp"}
    assert pod_address_map({}) == {}
    path.write_text("[1]")
    with pytest.raises(ConfigError, match=r"PROXYRUNNER_POD_ADDRESS_MAP: .* must map pod names"):
        pod_address_map(env)
    with pytest.raises(ConfigError, match=r"PROXYRUNNER_POD_ADDRESS_MAP: cannot read .*missing"):
        pod_address_map({"PROXYRUNNER_POD_ADDRESS_MAP": str(tmp_path / "missing")})


def test_a_bad_pod_address_map_stops_a_kubernetes_proxy_at_startup_with_exit_2(
    tmp_path: Path,
) -> None:
    config = tmp_path / "rc.json"
    config.write_text(json.dumps({**KUBE, "namespace": "ns"}))
    env = {**os.environ, "PROXYRUNNER_POD_ADDRESS_MAP": str(tmp_path / "missing.json")}
    result = proxyrunner("run", "--config", str(config), env=env)
    assert result.returncode == 2, result.stderr
    assert "PROXYRUNNER_POD_ADDRESS_MAP: cannot read" in result.stderr
    assert "Traceback" not in result.stderr
