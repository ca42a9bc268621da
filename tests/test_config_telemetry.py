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


SIGNALS = {
    "OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer%20general-s3cr3t,x-tenant=blue",
    "OTEL_EXPORTER_OTLP_TRACES_HEADERS": "authorization=Bearer%20traces-s3cr3t",
}


def test_a_signals_own_headers_variable_replaces_the_general_one_for_that_signal() -> None:
    telemetry = load(SIGNALS, telemetry_config=TOOLHIVE).telemetry
    # The RunConfig's header (x-tenant: blue from TOOLHIVE) is on both, key by key.
    assert telemetry.signal_headers("traces") == {
        "authorization": "Bearer traces-s3cr3t",
        "x-tenant": "blue",
    }
    assert telemetry.signal_headers("metrics") == {
        "authorization": "Bearer general-s3cr3t",
        "x-tenant": "blue",
    }
    assert telemetry.signal_headers("metrics") == telemetry.headers


def test_a_signals_own_headers_need_no_general_variable_and_the_runconfig_wins() -> None:
    telemetry = load(
        {"OTEL_EXPORTER_OTLP_METRICS_HEADERS": "x-tenant=red,x-metrics=1"},
        telemetry_config=TOOLHIVE,
    ).telemetry
    assert telemetry.signal_headers("metrics") == {"x-tenant": "blue", "x-metrics": "1"}
    assert telemetry.signal_headers("traces") == {"x-tenant": "blue"}


def test_without_any_headers_variable_every_signal_has_the_runconfigs_headers() -> None:
    telemetry = load({"OTEL_EXPORTER_OTLP_TRACES_HEADERS": ""}, telemetry_config=TOOLHIVE).telemetry
    for signal in ("traces", "metrics"):
        assert telemetry.signal_headers(signal) == {"x-tenant": "blue"}


def test_per_signal_header_values_never_appear_in_a_repr_or_a_dump() -> None:
    config = load(
        {**SIGNALS, "OTEL_EXPORTER_OTLP_METRICS_HEADERS": "authorization=metrics-s3cr3t"},
        telemetry_config=TOOLHIVE,
    )
    assert config.telemetry.signal_headers("metrics")["authorization"] == "metrics-s3cr3t"
    for shown in (dump_json(config), repr(config), repr(config.telemetry)):
        assert "s3cr3t" not in shown
    assert "traces_headers" not in dump_json(config)  # the environment's, never dumped


@pytest.mark.parametrize(
    "variable", ["OTEL_EXPORTER_OTLP_TRACES_HEADERS", "OTEL_EXPORTER_OTLP_METRICS_HEADERS"]
)
def test_a_malformed_per_signal_headers_variable_is_refused_without_echoing_it(
    variable: str,
) -> None:
    with pytest.raises(ConfigError) as caught:
        load({variable: "authorization=ok,hunter2-without-equals"}, telemetry_config=TOOLHIVE)
    assert variable in str(caught.value)
    assert "entry 2" in str(caught.value)
    assert "hunter2" not in str(caught.value)
