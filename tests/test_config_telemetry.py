"""telemetry_config: ToolHive's pkg/telemetry.Config as Go writes it, the OTEL_* overlay,
and refusals that name the problem without echoing a secret."""

from __future__ import annotations

from typing import Any

import pytest

from proxyrunner.config.environment import apply_env_overrides
from proxyrunner.config.table import dump_json, parse_config
from proxyrunner.errors import ConfigError

BACKEND = {"name": "fetch", "remote_url": "http://127.0.0.1:9/mcp"}
# What ToolHive's Go encoder writes: every field, samplingRate as a string.
TOOLHIVE = {
    "endpoint": "otel-collector.monitoring:4318",
    "serviceName": "fetch-proxy",
    "serviceVersion": "1.2.3",
    "tracingEnabled": True,
    "metricsEnabled": False,
    "samplingRate": "0.25",
    "headers": {"x-tenant": "blue"},
    "insecure": True,
    "enablePrometheusMetricsPath": False,
    "environmentVariables": ["DEPLOY_ENV"],
    "customAttributes": {"team": "platform"},
    "useLegacyAttributes": True,
}


def load(env: dict[str, str] | None = None, **fields: Any) -> Any:
    config, unknown = parse_config({**BACKEND, **fields})
    assert unknown == ()
    return apply_env_overrides(config, env or {})


def test_toolhive_telemetry_config_as_go_writes_it_loads() -> None:
    telemetry = load(telemetry_config=TOOLHIVE).telemetry
    assert telemetry.sampling_rate == 0.25
    assert telemetry.tracing_enabled
    assert not telemetry.metrics_enabled
    assert telemetry.service_name == "fetch-proxy"
    assert telemetry.traces_url == "http://otel-collector.monitoring:4318/v1/traces"
    assert telemetry.custom_attributes == {"team": "platform"}
    assert telemetry.active


def test_without_telemetry_config_or_otel_variables_telemetry_is_off() -> None:
    assert load().telemetry is None


def test_an_otlp_endpoint_from_the_environment_alone_turns_both_signals_on() -> None:
    telemetry = load({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://col:4318"}).telemetry
    assert telemetry.tracing_enabled
    assert telemetry.metrics_enabled
    assert telemetry.metrics_url == "http://col:4318/v1/metrics"
    assert telemetry.service_name == "fetch"  # the server's name when none is given


def test_otel_sdk_disabled_wins_over_the_runconfig() -> None:
    assert load({"OTEL_SDK_DISABLED": "true"}, telemetry_config=TOOLHIVE).telemetry is None


def test_header_values_from_the_environment_never_appear_in_a_dump() -> None:
    config = load(
        {"OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer%20s3cr3t-value"},
        telemetry_config=TOOLHIVE,
    )
    assert config.telemetry.headers["authorization"] == "Bearer s3cr3t-value"
    assert "s3cr3t" not in dump_json(config)
    assert "s3cr3t" not in repr(config)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"samplingRate": "1.5"}, "samplingRate"),
        ({"samplingRate": "often"}, "samplingRate"),
        ({"tracingEnabled": False, "metricsEnabled": False}, "tracing"),
    ],
)
def test_an_unusable_telemetry_config_is_refused_by_name(
    change: dict[str, Any], named: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load(telemetry_config={**TOOLHIVE, **change})
    assert named in str(caught.value)


def test_an_endpoint_with_credentials_is_refused_without_echoing_them() -> None:
    with pytest.raises(ConfigError) as caught:
        load(telemetry_config={**TOOLHIVE, "endpoint": "http://user:hunter2@col:4318"})
    assert "endpoint" in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_an_unusable_otel_variable_is_refused_by_name() -> None:
    with pytest.raises(ConfigError) as caught:
        load(
            {"OTEL_TRACES_SAMPLER_ARG": "lots", "OTEL_TRACES_SAMPLER": "traceidratio"},
            telemetry_config={"endpoint": "col:4318", "tracingEnabled": True},
        )
    assert "OTEL_TRACES_SAMPLER_ARG" in str(caught.value)
