"""The chart's telemetry values: rendered into the RunConfig's telemetry_config, which the
proxy's own loader reads, with the OTLP headers from a Secret and never in a ConfigMap."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxyrunner.config import apply_env_overrides, parse_config
from proxyrunner.config.telemetry import HEADERS_ENV, TelemetryConfig
from tests import chart

pytestmark = pytest.mark.timeout(120)

TELEMETRY = chart.CHART / "ci" / "telemetry-values.yaml"
# What the Secret's key holds in the tests: an OTEL_EXPORTER_OTLP_HEADERS string.
HEADER_VALUE = "authorization=Bearer%20s3cr3t-token,x-tenant=blue"


def loaded(docs: list[dict[str, Any]], env: dict[str, str] | None = None) -> TelemetryConfig | None:
    """The telemetry the daemon runs with: the mounted RunConfig, then the environment."""
    config, unknown = parse_config(chart.runconfig_of(docs))
    assert unknown == ()
    return apply_env_overrides(config, env or {}).telemetry


def telemetry_of(docs: list[dict[str, Any]], env: dict[str, str] | None = None) -> TelemetryConfig:
    telemetry = loaded(docs, env)
    assert telemetry is not None
    return telemetry


def test_the_values_render_a_telemetry_config_the_proxy_loads() -> None:
    docs = chart.render(TELEMETRY)
    assert chart.runconfig_of(docs)["telemetry_config"] == {
        "endpoint": "otel-collector.monitoring:4318",
        "tracingEnabled": True,
        "metricsEnabled": True,
        "samplingRate": "0.25",  # a string, as ToolHive's Go type writes it
        "insecure": True,
        "metricExportInterval": "10s",
        "maxQueueSize": 2048,
        "customAttributes": {"team": "platform"},
        "environmentVariables": ["POD_NAMESPACE"],
    }
    telemetry = telemetry_of(docs)
    assert telemetry.traces_url == "http://otel-collector.monitoring:4318/v1/traces"
    assert telemetry.metrics_url == "http://otel-collector.monitoring:4318/v1/metrics"
    assert telemetry.sampling_rate == 0.25
    assert telemetry.service_name == "fetch"  # runConfig.name
    assert telemetry.metric_export_interval == 10.0
    assert telemetry.custom_attributes == {"team": "platform"}
    assert telemetry.summary() == "tracing+metrics"


def test_the_headers_come_from_the_secret_as_env_and_never_from_a_configmap() -> None:
    docs = chart.render(TELEMETRY)
    refs = chart.secret_env(docs)
    assert refs == {HEADERS_ENV: ("otel-auth", "headers")}
    # The daemon's own read, the variable holding what the Secret's key would.
    telemetry = telemetry_of(docs, {HEADERS_ENV: HEADER_VALUE})
    assert dict(telemetry.headers) == {
        "authorization": "Bearer s3cr3t-token",
        "x-tenant": "blue",
    }
    assert "headers" not in chart.runconfig_of(docs)["telemetry_config"]
    for configmap in chart.by_kind(docs, "ConfigMap"):
        text = json.dumps(configmap["data"]).lower()
        assert "header" not in text
        assert "otel-auth" not in text  # not even the Secret's name
        assert "authorization" not in text


def test_without_telemetry_values_nothing_of_telemetry_is_rendered() -> None:
    for docs in (
        chart.render(),
        chart.render(None, "default", "telemetry.headersSecret.name=otel-auth"),  # not enabled
    ):
        assert "telemetry_config" not in chart.runconfig_of(docs)
        names = {e["name"] for e in chart.proxy_container(docs)["env"]}
        assert not {n for n in names if n.startswith("OTEL_")}
        assert loaded(docs) is None


def test_an_enabled_telemetry_without_a_headers_secret_has_no_headers_variable() -> None:
    docs = chart.render(TELEMETRY, "default", "telemetry.headersSecret.name=")
    assert HEADERS_ENV not in {e["name"] for e in chart.proxy_container(docs)["env"]}
    assert telemetry_of(docs).active


def test_a_sampling_rate_of_zero_is_rendered_not_dropped_as_unset() -> None:
    docs = chart.render(TELEMETRY, "default", "telemetry.samplingRate=0")
    assert chart.runconfig_of(docs)["telemetry_config"]["samplingRate"] == "0"
    assert telemetry_of(docs).sampling_rate == 0


def test_a_sampling_rate_from_set_a_string_there_is_taken_as_toolhive_writes_it() -> None:
    docs = chart.render(TELEMETRY, "default", "telemetry.samplingRate=0.1")  # --set: a string
    assert chart.runconfig_of(docs)["telemetry_config"]["samplingRate"] == "0.1"
    assert telemetry_of(docs).sampling_rate == 0.1


def test_runconfig_telemetry_config_written_by_hand_wins_key_by_key(tmp_path: Path) -> None:
    values = yaml.safe_load(TELEMETRY.read_text())
    values["runConfig"]["telemetry_config"] = {
        "sampling_rate": 0.5,
        "serviceName": "by-hand",
        "useLegacyAttributes": True,
    }
    both = tmp_path / "v.yaml"
    both.write_text(yaml.safe_dump(values))
    docs = chart.render(TELEMETRY)
    merged_docs = chart.render(both)
    merged = chart.runconfig_of(merged_docs)["telemetry_config"]
    # The hand-written spelling replaces the rendered one (Go matches both as one field).
    assert "samplingRate" not in merged
    assert merged["sampling_rate"] == 0.5
    assert merged["useLegacyAttributes"] is True
    assert merged["endpoint"] == chart.runconfig_of(docs)["telemetry_config"]["endpoint"]
    telemetry = telemetry_of(merged_docs)
    assert telemetry.sampling_rate == 0.5
    assert telemetry.service_name == "by-hand"


def test_a_change_of_the_headers_secret_reference_rolls_the_pods() -> None:
    def identity(*sets: str) -> str:
        deployment = chart.only(chart.render(TELEMETRY, "default", *sets), "Deployment")
        return str(deployment["spec"]["template"]["metadata"]["annotations"]["checksum/identity"])

    assert identity() == identity()
    assert identity() != identity("telemetry.headersSecret.name=other-auth")
    assert identity() != identity("telemetry.headersSecret.key=other-key")


@pytest.mark.parametrize(
    ("settings", "where", "rule"),
    [
        (("telemetry.samplingRate=2",), "at '/telemetry/samplingRate'", "maximum"),
        (("telemetry.samplingRate=-1",), "at '/telemetry/samplingRate'", "minimum"),
        (("telemetry.samplingRate=1.5",), "at '/telemetry/samplingRate'", "does not match"),
        (("telemetry.enabled=true",), "at '/telemetry/endpoint'", "minLength"),
        (("telemetry.endpoint=u:p@col:4318",), "at '/telemetry/endpoint'", "does not match"),
        (("telemetry.maxQueueSize=0",), "at '/telemetry/maxQueueSize'", "minimum"),
        (("telemetry.metricExportInterval=soon",), "at '/telemetry/metricExportInterval'", "match"),
        (("telemetry.headers.x=y",), "at '/telemetry'", "'headers' not allowed"),
        (("telemetry.headersSecret.name=Bad_Name",), "at '/telemetry/headersSecret/name'", "match"),
    ],
)
def test_schema_rejects_bad_telemetry_values_naming_where_and_why(
    settings: tuple[str, ...], where: str, rule: str
) -> None:
    args = [a for s in settings for a in ("--set", s)]
    refusal = chart.schema_refusal(*args)
    assert where in refusal, refusal
    assert rule in refusal, refusal
    lint = chart.helm("lint", "--strict", str(chart.CHART), *args)
    assert lint.returncode != 0
    assert where in lint.stdout + lint.stderr


@pytest.mark.parametrize("key", ["headers", "Headers", "HEADERS"])
def test_headers_in_runconfig_telemetry_config_are_refused_without_echoing_them(
    key: str, tmp_path: Path
) -> None:
    values = tmp_path / "v.yaml"
    values.write_text(f"runConfig:\n  name: x\n  telemetry_config:\n    {key}:\n      a: hunter2\n")
    refusal = chart.schema_refusal("-f", str(values))
    assert f"at '/runConfig/telemetry_config/{key}'" in refusal, refusal
    assert "hunter2" not in refusal


def test_telemetry_with_neither_signal_fails_rendering() -> None:
    result = chart.helm(
        "template",
        "r",
        str(chart.CHART),
        "-f",
        str(TELEMETRY),
        "--set",
        "telemetry.tracingEnabled=false",
        "--set",
        "telemetry.metricsEnabled=false",
    )
    assert result.returncode != 0
    assert "telemetry.enabled needs telemetry.tracingEnabled or telemetry.metricsEnabled" in (
        result.stderr
    )


def test_every_telemetry_value_is_in_the_readmes_chart_table() -> None:
    readme = (chart.REPO / "README.md").read_text()
    values = yaml.safe_load((chart.CHART / "values.yaml").read_text())["telemetry"]
    (row,) = [line for line in readme.splitlines() if line.startswith("| `telemetry.*` |")]
    for name in [*values, *values["headersSecret"]]:
        assert f"`{name}`" in row, name


def test_the_readme_telemetry_example_is_the_values_file_the_tests_check() -> None:
    readme = (chart.REPO / "README.md").read_text()
    section = readme[readme.index("On Kubernetes the chart's `telemetry.*` values") :]
    start = section.index("```yaml\n") + len("```yaml\n")
    example = section[start : section.index("```", start)]
    assert yaml.safe_load(example) == yaml.safe_load(TELEMETRY.read_text())
    command = section[: section.index("```yaml\n")]
    (created,) = re.findall(r"create secret generic (\S+) --from-literal=([^=]+)=", command)
    assert {created} == set(chart.secret_env(chart.render(TELEMETRY)).values())
