"""OpenTelemetry's settings: ToolHive's ``telemetry_config`` object, read as ToolHive's Go
code reads it, and the standard ``OTEL_*`` environment variables laid over it.

A ToolHive RunConfig carries ``"telemetry_config": {...}`` (``pkg/telemetry.Config``),
whose json tags are camelCase (``tracingEnabled``, ``samplingRate``); an operator-rendered
one loads here unchanged, and a dump writes those names back. Keys match the way Go's
encoding/json matches them (``go_keys``), snake_case spellings are taken too, unknown keys
are ignored as Go ignores them. ``enablePrometheusMetricsPath`` and
``useLegacyAttributes`` are upstream's and accepted but have no effect: ``/metrics`` is
always served. ``samplingRate`` is a string in ToolHive's Go type ("0.05"); a number is
taken too. Upstream's rule: an endpoint with neither tracing nor metrics enabled is an
error. ``metricExportInterval`` and ``maxQueueSize`` are ours.

The environment (``telemetry_env.overlay_env``, called by ``environment.apply_env_overrides``) fills
what the RunConfig leaves unset; an OTLP endpoint from the environment alone turns both
signals on, as the OpenTelemetry SDKs do. OTLP headers usually carry a secret (an API
key), so ``OTEL_EXPORTER_OTLP_HEADERS`` is where they belong (``..._TRACES_HEADERS`` and
``..._METRICS_HEADERS`` replace it for one signal: ``signal_headers``); their values are
never in a problem, a repr, a dump or the startup summary.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from dataclasses import fields as dataclass_fields
from typing import Any, Final, Literal
from urllib.parse import urlsplit, urlunsplit

from proxyrunner import __version__
from proxyrunner.config.fields import (
    BOOLEAN,
    DURATION,
    INTEGER,
    STRING,
    STRING_MAP,
    STRINGS,
    JsonField,
    Kind,
    go_keys,
    never,
    read_fields,
    write_fields,
)
from proxyrunner.config.problems import Problems, show
from proxyrunner.errors import ConfigError

TELEMETRY_CONFIG_FIELD: Final = "telemetry_config"
DEFAULT_SERVICE_NAME: Final = "proxyrunner"
DEFAULT_SAMPLING_RATE: Final = 0.05  # ToolHive's default
DEFAULT_METRIC_EXPORT_INTERVAL: Final = 10.0  # seconds; ToolHive's SDK default too
DEFAULT_MAX_QUEUE_SIZE: Final = 2048  # the OpenTelemetry batch span processor's default
REDACTED: Final = "<redacted>"
"""What a dump writes for a header value."""
TRACES_PATH: Final = "/v1/traces"
METRICS_PATH: Final = "/v1/metrics"

# The environment variables (OpenTelemetry's names, see its SDK environment spec).
ENDPOINT_ENV: Final = "OTEL_EXPORTER_OTLP_ENDPOINT"
TRACES_ENDPOINT_ENV: Final = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
METRICS_ENDPOINT_ENV: Final = "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"
HEADERS_ENV: Final = "OTEL_EXPORTER_OTLP_HEADERS"
TRACES_HEADERS_ENV: Final = "OTEL_EXPORTER_OTLP_TRACES_HEADERS"
METRICS_HEADERS_ENV: Final = "OTEL_EXPORTER_OTLP_METRICS_HEADERS"
INSECURE_ENV: Final = "OTEL_EXPORTER_OTLP_INSECURE"
PROTOCOL_ENV: Final = "OTEL_EXPORTER_OTLP_PROTOCOL"
SERVICE_NAME_ENV: Final = "OTEL_SERVICE_NAME"
RESOURCE_ATTRIBUTES_ENV: Final = "OTEL_RESOURCE_ATTRIBUTES"
SAMPLER_ENV: Final = "OTEL_TRACES_SAMPLER"
SAMPLER_ARG_ENV: Final = "OTEL_TRACES_SAMPLER_ARG"
METRIC_EXPORT_INTERVAL_ENV: Final = "OTEL_METRIC_EXPORT_INTERVAL"
MAX_QUEUE_SIZE_ENV: Final = "OTEL_BSP_MAX_QUEUE_SIZE"
SDK_DISABLED_ENV: Final = "OTEL_SDK_DISABLED"
TRACES_EXPORTER_ENV: Final = "OTEL_TRACES_EXPORTER"
METRICS_EXPORTER_ENV: Final = "OTEL_METRICS_EXPORTER"


@dataclass(frozen=True, slots=True)
class TelemetryConfig:
    """Where traces and metrics go over OTLP/HTTP, and what they say (``telemetry_config``)."""

    endpoint: str = ""
    """``endpoint``: the OTLP/HTTP collector, ``host:port`` as ToolHive writes it (the
    scheme then follows ``insecure``) or a full ``http(s)://`` URL; ``/v1/traces`` and
    ``/v1/metrics`` are appended to its path. Never with credentials in it."""
    service_name: str = DEFAULT_SERVICE_NAME
    """``serviceName``: the ``service.name`` resource attribute. Absent: the RunConfig's
    ``name`` (ToolHive's default, the server's name)."""
    service_version: str = ""
    """``serviceVersion``: ``service.version``; empty means proxyrunner's version."""
    tracing_enabled: bool = False
    """``tracingEnabled``: spans are exported."""
    metrics_enabled: bool = False
    """``metricsEnabled``: metrics are pushed over OTLP (``/metrics`` is served anyway)."""
    sampling_rate: float = DEFAULT_SAMPLING_RATE
    """``samplingRate``: the share of traces sampled, 0 to 1 (a string in ToolHive's JSON)."""
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    """``headers``: sent with every OTLP request. Values are secrets: put them in
    OTEL_EXPORTER_OTLP_HEADERS, not in the RunConfig; they are never shown."""
    insecure: bool = False
    """``insecure``: plain http to an endpoint given without a scheme."""
    environment_variables: tuple[str, ...] = ()
    """``environmentVariables``: names of environment variables whose values become
    resource attributes (read by the runtime at startup)."""
    custom_attributes: Mapping[str, str] = field(default_factory=dict)
    """``customAttributes``: resource attributes added to every span and metric."""
    metric_export_interval: float = DEFAULT_METRIC_EXPORT_INTERVAL
    """``metricExportInterval`` (ours): seconds between metric pushes."""
    max_queue_size: int = DEFAULT_MAX_QUEUE_SIZE
    """``maxQueueSize`` (ours): spans held for export at most; beyond that they are dropped."""
    traces_endpoint: str = ""
    """OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: the traces URL, used as is (no path added)."""
    metrics_endpoint: str = ""
    """OTEL_EXPORTER_OTLP_METRICS_ENDPOINT: the metrics URL, used as is."""
    traces_headers: Mapping[str, str] | None = field(default=None, repr=False)
    """OTEL_EXPORTER_OTLP_TRACES_HEADERS with the RunConfig's ``headers`` over it: what
    spans are sent with instead of ``headers``; None when that variable is unset."""
    metrics_headers: Mapping[str, str] | None = field(default=None, repr=False)
    """OTEL_EXPORTER_OTLP_METRICS_HEADERS, the same for metrics."""
    given: frozenset[str] = field(default=frozenset(), compare=False, repr=False)
    """The attributes the RunConfig set, even to their default: the environment fills
    only the others. (An attribute that differs from its default counts as set too.)"""

    def __post_init__(self) -> None:
        p = Problems()
        for attribute in ("endpoint", "traces_endpoint", "metrics_endpoint"):
            value = getattr(self, attribute)
            if value:
                problem = endpoint_problem(value)
                if problem:
                    p.add(_path(attribute), problem)
        rate = self.sampling_rate
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 <= rate <= 1:
            p.add(_path("sampling_rate"), f"must be a number from 0 to 1, got {show(rate)}")
        if not self.metric_export_interval > 0:
            p.add(_path("metric_export_interval"), "must be greater than zero")
        p.at_least(_path("max_queue_size"), self.max_queue_size, 1)
        for index, name in enumerate(self.environment_variables):
            if not name or "=" in name:
                p.add(
                    f"{_path('environment_variables')}[{index}]",
                    f"must be an environment variable's name, got {show(name)}",
                )
        p.raise_if_any()
        if not self.service_name:
            object.__setattr__(self, "service_name", DEFAULT_SERVICE_NAME)
        if not self.service_version:
            object.__setattr__(self, "service_version", __version__)

    @property
    def traces_url(self) -> str:
        """The OTLP/HTTP URL spans are posted to."""
        if self.traces_endpoint:
            return _with_scheme(self.traces_endpoint, self.insecure)
        return _signal_url(self.endpoint, self.insecure, TRACES_PATH)

    @property
    def metrics_url(self) -> str:
        """The OTLP/HTTP URL metrics are posted to."""
        if self.metrics_endpoint:
            return _with_scheme(self.metrics_endpoint, self.insecure)
        return _signal_url(self.endpoint, self.insecure, METRICS_PATH)

    @property
    def active(self) -> bool:
        """Whether anything is exported: a signal is on and it has somewhere to go."""
        return (self.tracing_enabled and bool(self.traces_url)) or (
            self.metrics_enabled and bool(self.metrics_url)
        )

    def signal_headers(self, signal: Literal["traces", "metrics"]) -> Mapping[str, str]:
        """The headers one signal's OTLP requests carry. Its own variable
        (OTEL_EXPORTER_OTLP_TRACES_HEADERS, _METRICS_HEADERS) replaces
        OTEL_EXPORTER_OTLP_HEADERS for it, as the OpenTelemetry SDKs read them; the
        RunConfig's ``headers`` win over either, key by key."""
        own = self.traces_headers if signal == "traces" else self.metrics_headers
        return self.headers if own is None else own

    def sets(self, attribute: str) -> bool:
        """Whether the RunConfig set the attribute (the environment then leaves it)."""
        return attribute in self.given or getattr(self, attribute) != _DEFAULTS[attribute]

    def summary(self) -> str:
        """For the startup log line: the signals exported, never an address or a header."""
        signals = [
            name
            for name, on in (("tracing", self.tracing_enabled), ("metrics", self.metrics_enabled))
            if on
        ]
        return "+".join(signals) if self.active else "off"


def endpoint_problem(value: str) -> str | None:
    """What is wrong with an endpoint, or None. Never quotes the value: it may carry a
    token (``user:secret@``, a query)."""
    if value != value.strip() or any(c.isspace() for c in value):
        return "must not contain spaces"
    full = "://" in value
    try:
        parts = urlsplit(value if full else "//" + value)
        port = parts.port
    except ValueError:
        return "is not a valid host:port or URL (a bad port or brackets)"
    if full and parts.scheme not in ("http", "https"):
        return "must be host:port or an http(s):// URL"
    if parts.username is not None or parts.password is not None:
        return (
            f"must not carry credentials (user:password@); send them as a header in {HEADERS_ENV}"
        )
    if not parts.hostname:
        return "must name a host (host:port or an http(s):// URL)"
    if parts.fragment:
        return "must not have a #fragment"
    if port == 0:
        return "must not have port 0"
    return None


def _with_scheme(endpoint: str, insecure: bool) -> str:
    if not endpoint or "://" in endpoint:
        return endpoint
    return ("http://" if insecure else "https://") + endpoint


def _signal_url(endpoint: str, insecure: bool, signal_path: str) -> str:
    """The endpoint as a base URL with the signal's path appended (OpenTelemetry's rule
    for OTEL_EXPORTER_OTLP_ENDPOINT); "" without an endpoint."""
    if not endpoint:
        return ""
    parts = urlsplit(_with_scheme(endpoint, insecure))
    path = parts.path.rstrip("/") + signal_path
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def _path(attribute: str) -> str:
    """A problem's path, with the field's json tag as ToolHive writes it (the endpoints
    that only the environment sets are named by their variable)."""
    if attribute in _ENV_ONLY:
        return _ENV_ONLY[attribute]
    return f"{TELEMETRY_CONFIG_FIELD}.{_TAGS[attribute]}"


def _read_rate(value: object, path: str) -> float:
    """``samplingRate``: ToolHive's Go type is a string ("0.05"); a number is taken too."""
    rate: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        rate = float(value)
    elif isinstance(value, str):
        try:
            rate = float(value.strip())
        except ValueError:
            rate = None
    if rate is None or math.isnan(rate):
        raise ConfigError(
            f"{path}: must be a number from 0 to 1 (or one as a string), got {show(value)}"
        )
    return rate


RATE: Final = Kind(_read_rate, lambda rate: repr(float(rate)), never)
"""A string when written, as ToolHive's Go type is; always written (0 is a rate)."""


def _write_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {name: REDACTED for name in sorted(headers)}


HEADERS: Final = Kind(STRING_MAP.read, _write_headers)
"""Header names with their values redacted: a dump never shows a secret."""
_IGNORED: Final = ("enablePrometheusMetricsPath", "useLegacyAttributes")
"""Upstream's, accepted for their type and without effect."""

# (json tag, attribute, kind): the tags are ToolHive's (the last two are ours).
TELEMETRY_FIELDS: Final = tuple(
    JsonField(tag, kind, attribute)
    for tag, attribute, kind in (
        ("endpoint", "endpoint", STRING),
        ("serviceName", "service_name", STRING),
        ("serviceVersion", "service_version", STRING),
        ("tracingEnabled", "tracing_enabled", BOOLEAN),
        ("metricsEnabled", "metrics_enabled", BOOLEAN),
        ("samplingRate", "sampling_rate", RATE),
        ("headers", "headers", HEADERS),
        ("insecure", "insecure", BOOLEAN),
        ("environmentVariables", "environment_variables", STRINGS),
        ("customAttributes", "custom_attributes", STRING_MAP),
        ("metricExportInterval", "metric_export_interval", DURATION),
        ("maxQueueSize", "max_queue_size", INTEGER),
    )
)
_IGNORED_FIELDS: Final = tuple(
    JsonField(tag, BOOLEAN, attribute)
    for tag, attribute in (
        ("enablePrometheusMetricsPath", "enable_prometheus_metrics_path"),
        ("useLegacyAttributes", "use_legacy_attributes"),
    )
)

# Every name accepted for a field: the json tag (which, lowercased, is also the Go field
# name: go_keys matches any case) and our snake_case attribute name.
_GO_NAMES: Final = {
    **{row.name: row.name for row in TELEMETRY_FIELDS + _IGNORED_FIELDS},
    **{row.attribute: row.name for row in TELEMETRY_FIELDS + _IGNORED_FIELDS},
}
_TAGS: Final = {row.attribute: row.name for row in TELEMETRY_FIELDS}
ENDPOINT_ENVS: Final = (ENDPOINT_ENV, TRACES_ENDPOINT_ENV, METRICS_ENDPOINT_ENV)
_ENV_ONLY: Final = {
    "traces_endpoint": TRACES_ENDPOINT_ENV,
    "metrics_endpoint": METRICS_ENDPOINT_ENV,
}
_DEFAULTS: Final[Mapping[str, Any]] = {
    f.name: ({} if f.name in ("headers", "custom_attributes") else f.default)
    for f in dataclass_fields(TelemetryConfig)
}


def _read_telemetry(value: object, path: str) -> TelemetryConfig:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{path}: must be an object of telemetry settings, got {show(value)}")
    p = Problems()
    doc = go_keys(value, _GO_NAMES)
    read_fields(_IGNORED_FIELDS, doc, f"{path}.", p)  # only their type is checked
    values, _ = read_fields(TELEMETRY_FIELDS, doc, f"{path}.", p)
    own = values.get("", {})
    for name, header in own.get("headers", {}).items():
        if header == REDACTED:
            p.add(
                f"{path}.headers.{name}",
                f"is a dump's redaction marker, not the value; set the header in {HEADERS_ENV}",
            )
    if own.get("endpoint") and not (own.get("tracing_enabled") or own.get("metrics_enabled")):
        p.add(
            f"{path}.endpoint",
            "is set but neither tracingEnabled nor metricsEnabled is true; "
            "enable one of them or remove the endpoint",
        )
    if not p.items:
        try:
            return TelemetryConfig(**own, given=frozenset(own))
        except ConfigError as exc:
            p.extend(exc)
    raise ConfigError(p.items)


def _write_telemetry(telemetry: TelemetryConfig) -> dict[str, Any]:
    out = write_fields(TELEMETRY_FIELDS, telemetry)
    # Defaults that are not settings: the running version, the name filled at startup.
    if telemetry.service_version == __version__ and "service_version" not in telemetry.given:
        out.pop("serviceVersion", None)
    if not telemetry.sets("service_name"):
        out.pop("serviceName", None)
    return out


TELEMETRY_CONFIG: Final = Kind(_read_telemetry, _write_telemetry)
"""The ``telemetry_config`` row's kind: ``JsonField("telemetry_config", TELEMETRY_CONFIG, ...)``."""


def with_server_name(telemetry: TelemetryConfig, name: str) -> TelemetryConfig:
    """``serviceName`` absent: the server's name (ToolHive's default)."""
    if telemetry.sets("service_name") or not name:
        return telemetry
    return replace(telemetry, service_name=name)
