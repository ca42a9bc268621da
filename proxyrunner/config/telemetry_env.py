"""The standard OpenTelemetry environment variables over ``telemetry_config``: they fill
what the RunConfig leaves unset (``overlay_env``), as the OpenTelemetry SDKs read them.

Split from ``config.telemetry`` (the RunConfig object, its keys and rules): this module
is only the variables, their parsing and their precedence. A header's value is never in
an error.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, Final
from urllib.parse import unquote

from proxyrunner.config.problems import Problems, show
from proxyrunner.config.telemetry import (
    ENDPOINT_ENV,
    ENDPOINT_ENVS,
    HEADERS_ENV,
    INSECURE_ENV,
    MAX_QUEUE_SIZE_ENV,
    METRIC_EXPORT_INTERVAL_ENV,
    METRICS_ENDPOINT_ENV,
    METRICS_EXPORTER_ENV,
    METRICS_HEADERS_ENV,
    PROTOCOL_ENV,
    RESOURCE_ATTRIBUTES_ENV,
    SAMPLER_ARG_ENV,
    SAMPLER_ENV,
    SDK_DISABLED_ENV,
    SERVICE_NAME_ENV,
    TRACES_ENDPOINT_ENV,
    TRACES_EXPORTER_ENV,
    TRACES_HEADERS_ENV,
    TelemetryConfig,
    endpoint_problem,
    with_server_name,
)
from proxyrunner.errors import ConfigError


def overlay_env(
    telemetry: TelemetryConfig | None, environ: Mapping[str, str], name: str = ""
) -> TelemetryConfig | None:
    """The RunConfig's telemetry with the OTEL_* variables filling what it leaves unset;
    None when telemetry is off. ``name`` is the server's (the default service name).
    Raises ConfigError naming the variable (never a header's value)."""
    env = {key: environ[key].strip() for key in environ if key.startswith("OTEL_")}
    if _env_bool(env, SDK_DISABLED_ENV):
        return None
    p = Problems()
    protocol = env.get(PROTOCOL_ENV, "")
    if protocol and protocol != "http/protobuf":
        p.add(PROTOCOL_ENV, f"only http/protobuf is supported, got {show(protocol)}")
    traces_off = _exporter_off(env, TRACES_EXPORTER_ENV, p, ("otlp",))
    # /metrics is always served: "prometheus" means no OTLP push.
    metrics_off = _exporter_off(env, METRICS_EXPORTER_ENV, p, ("otlp", "prometheus"))
    base = telemetry or TelemetryConfig()
    changes: dict[str, Any] = {}
    endpoints = {
        "endpoint": env.get(ENDPOINT_ENV, ""),
        "traces_endpoint": env.get(TRACES_ENDPOINT_ENV, ""),
        "metrics_endpoint": env.get(METRICS_ENDPOINT_ENV, ""),
    }
    for (attribute, value), variable in zip(endpoints.items(), ENDPOINT_ENVS, strict=True):
        problem = endpoint_problem(value) if value else None
        if problem:
            p.add(variable, problem)
        elif value and not base.sets(attribute):
            changes[attribute] = value
    if not (base.tracing_enabled or base.metrics_enabled):
        # An endpoint from the environment turns the signals on, as the SDKs do.
        changes["tracing_enabled"] = bool(endpoints["endpoint"] or endpoints["traces_endpoint"])
        changes["metrics_enabled"] = bool(endpoints["endpoint"] or endpoints["metrics_endpoint"])
    if env.get(INSECURE_ENV) and not base.sets("insecure"):
        changes["insecure"] = _env_bool(env, INSECURE_ENV, p)
    if env.get(SERVICE_NAME_ENV) and not base.sets("service_name"):
        changes["service_name"] = env[SERVICE_NAME_ENV]
    if env.get(SAMPLER_ENV) and not base.sets("sampling_rate"):
        rate = _sampler_rate(env, p)
        if rate is not None:
            changes["sampling_rate"] = rate
    if env.get(METRIC_EXPORT_INTERVAL_ENV) and not base.sets("metric_export_interval"):
        millis = _env_int(env, METRIC_EXPORT_INTERVAL_ENV, p)
        if millis is not None:
            changes["metric_export_interval"] = millis / 1000
    if env.get(MAX_QUEUE_SIZE_ENV) and not base.sets("max_queue_size"):
        size = _env_int(env, MAX_QUEUE_SIZE_ENV, p)
        if size is not None:
            changes["max_queue_size"] = size
    for attribute, variable in (
        ("headers", HEADERS_ENV),
        ("traces_headers", TRACES_HEADERS_ENV),
        ("metrics_headers", METRICS_HEADERS_ENV),
    ):
        if env.get(variable):
            headers = _pairs(env[variable], variable, p, secret=True)
            changes[attribute] = {**headers, **base.headers}  # the RunConfig's win, key by key
    if env.get(RESOURCE_ATTRIBUTES_ENV):
        attributes = _pairs(env[RESOURCE_ATTRIBUTES_ENV], RESOURCE_ATTRIBUTES_ENV, p)
        changes["custom_attributes"] = {**attributes, **base.custom_attributes}
    p.raise_if_any()
    if traces_off:
        changes["tracing_enabled"] = False
    if metrics_off:
        changes["metrics_enabled"] = False
    if telemetry is None and not (changes.get("tracing_enabled") or changes.get("metrics_enabled")):
        return None  # nothing in the environment turns it on
    result = replace(base, **changes)
    return with_server_name(result, name)


def _env_bool(env: Mapping[str, str], variable: str, p: Problems | None = None) -> bool:
    value = env.get(variable, "").lower()
    if value in ("", "false"):
        return False
    if value == "true":
        return True
    if p is None:
        raise ConfigError(f"{variable}: must be true or false, got {show(env[variable])}")
    p.add(variable, f"must be true or false, got {show(env[variable])}")
    return False


def _env_int(env: Mapping[str, str], variable: str, p: Problems) -> int | None:
    text = env[variable]
    if not text.isdigit() or int(text) < 1:
        p.add(variable, f"must be a whole number greater than zero, got {show(text)}")
        return None
    return int(text)


def _exporter_off(
    env: Mapping[str, str], variable: str, p: Problems, exporting: tuple[str, ...]
) -> bool:
    names = [n.strip().lower() for n in env.get(variable, "").split(",") if n.strip()]
    if not names:
        return False
    if names == ["none"]:
        return True
    unknown = [n for n in names if n not in exporting]
    if unknown:
        p.add(variable, f"must be {', '.join(exporting)} or none, got {show(env[variable])}")
    return "otlp" not in names


_SAMPLERS: Final = {
    "always_on": 1.0,
    "always_off": 0.0,
    "traceidratio": None,
    "parentbased_always_on": 1.0,
    "parentbased_always_off": 0.0,
    "parentbased_traceidratio": None,
}


def _sampler_rate(env: Mapping[str, str], p: Problems) -> float | None:
    sampler = env[SAMPLER_ENV].lower()
    if sampler not in _SAMPLERS:
        p.add(SAMPLER_ENV, f"must be one of {', '.join(_SAMPLERS)}; got {show(env[SAMPLER_ENV])}")
        return None
    rate = _SAMPLERS[sampler]
    if rate is not None:
        return rate
    arg = env.get(SAMPLER_ARG_ENV, "")
    if not arg:
        return 1.0  # the specification's default ratio
    try:
        rate = float(arg)
    except ValueError:
        rate = math.nan
    if not 0 <= rate <= 1:  # NaN fails too
        p.add(SAMPLER_ARG_ENV, f"must be a number from 0 to 1 for {sampler}, got {show(arg)}")
        return None
    return rate


def _pairs(text: str, variable: str, p: Problems, *, secret: bool = False) -> dict[str, str]:
    """``k=v,k2=v2`` (W3C-baggage-like, percent-encoded) as OpenTelemetry reads
    OTEL_EXPORTER_OTLP_HEADERS and OTEL_RESOURCE_ATTRIBUTES. A problem names the entry
    by its position, and a header's by its key only."""
    out: dict[str, str] = {}
    for index, entry in enumerate(text.split(",")):
        key, sep, value = entry.partition("=")
        key, value = unquote(key.strip()), unquote(value.strip())
        if not sep or not key:
            where = f"entry {index + 1}"
            p.add(
                variable, f"{where} must be key=value" + ("" if secret else f", got {show(entry)}")
            )
            continue
        out[key] = value
    return out
