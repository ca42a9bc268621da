"""The RunConfig field table, and the parser and dumper that walk it.

Field names are snake_case and match ToolHive's RunConfig where upstream has them, so an
operator-rendered ConfigMap loads as is. The rows are in the order a dump writes them.
Parsing and dumping have no side effects.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final, Literal

import yaml

from proxyrunner.config.audit import AUDIT_CONFIG
from proxyrunner.config.authz import AUTHZ_CONFIG
from proxyrunner.config.fields import (
    BOOLEAN,
    DURATION,
    INTEGER,
    JSON_OBJECT,
    SECRET_REFS,
    SESSION_REDIS,
    STRING,
    STRING_MAP,
    STRINGS,
    JsonField,
    Kind,
    omit_absent,
    read_fields,
    write_fields,
)
from proxyrunner.config.oidc import (
    read_backend_auth,
    read_oidc,
    read_token_exchange,
    write_dataclass,
)
from proxyrunner.config.problems import Problems, show
from proxyrunner.config.run_config import RunConfig, assemble
from proxyrunner.config.telemetry import TELEMETRY_CONFIG
from proxyrunner.errors import ConfigError

OIDC: Final = Kind(read_oidc, write_dataclass)
TOKEN_EXCHANGE: Final = Kind(read_token_exchange, write_dataclass)
BACKEND_AUTH: Final = Kind(read_backend_auth, write_dataclass)

FIELDS: Final = (
    JsonField("name", STRING, "name"),
    JsonField("schema_version", STRING, "schema_version"),
    JsonField("transport", STRING, "backend.transport"),
    JsonField("proxy_mode", STRING, "backend.proxy_mode"),
    JsonField("runtime", STRING, "backend.runtime"),
    JsonField("host", STRING, "listen.host"),
    JsonField("port", INTEGER, "listen.port"),
    JsonField("target_host", STRING, "backend.target_host"),
    JsonField("target_port", INTEGER, "backend.target_port"),
    JsonField("image", STRING, "backend.image"),
    JsonField("cmd_args", STRINGS, "backend.cmd_args"),
    JsonField("env_vars", STRING_MAP, "backend.env_vars"),
    JsonField("env_secrets", SECRET_REFS, "backend.env_secrets"),
    JsonField("stdio_isolation", STRING, "backend.stdio_isolation"),
    JsonField("stdio_max_sessions", INTEGER, "backend.stdio_max_sessions"),
    JsonField("stdio_idle_timeout", DURATION, "backend.stdio_idle_timeout"),
    JsonField("remote_url", STRING, "backend.remote_url"),
    JsonField("backend_urls", STRINGS, "backend.urls"),
    JsonField("allowed_hosts", STRINGS, "listen.allowed_hosts"),
    JsonField("mcpserver_generation", INTEGER, "mcpserver_generation"),
    JsonField("backend_replicas", INTEGER, "backend.replicas", scaling=True, omit=omit_absent),
    JsonField("session_redis", SESSION_REDIS, "sessions.redis", scaling=True),
    JsonField("session_cache_size", INTEGER, "sessions.configured_cache_size", scaling=True),
    JsonField("session_ttl", DURATION, "sessions.ttl"),
    JsonField("session_local_max_age", DURATION, "sessions.local_max_age"),
    JsonField("session_touch_interval", DURATION, "sessions.touch_interval"),
    # Written only when given: the default depends on where the proxy listens.
    JsonField("drain_delay", DURATION, "drain.configured_delay", omit=omit_absent),
    JsonField("drain_timeout", DURATION, "drain.timeout"),
    JsonField("backend_start_timeout", DURATION, "backend.start_timeout"),
    JsonField("backend_timeout", DURATION, "backend.timeout"),
    JsonField("max_request_body", INTEGER, "listen.max_request_body"),
    JsonField("trust_proxy_headers", BOOLEAN, "listen.trust_proxy_headers"),
    JsonField("max_stored_initialize", INTEGER, "limits.max_stored_initialize"),
    JsonField("max_pending_sessions", INTEGER, "limits.max_pending_sessions"),
    JsonField("header_timeout", DURATION, "limits.header_timeout"),
    JsonField("body_timeout", DURATION, "limits.body_timeout"),
    JsonField("keepalive_timeout", DURATION, "limits.keepalive_timeout"),
    JsonField("max_connections", INTEGER, "limits.max_connections"),
    JsonField("max_streams_per_session", INTEGER, "limits.max_streams_per_session"),
    JsonField("max_streams", INTEGER, "limits.max_streams"),
    JsonField("stream_keepalive", DURATION, "limits.stream_keepalive"),
    JsonField("k8s_pod_template_patch", JSON_OBJECT, "kubernetes.pod_template_patch"),
    JsonField("namespace", STRING, "kubernetes.namespace"),
    JsonField("field_manager", STRING, "kubernetes.field_manager"),
    JsonField("statefulset_ready_timeout", DURATION, "kubernetes.statefulset_ready_timeout"),
    JsonField("oidc_config", OIDC, "identity.oidc"),
    JsonField("token_exchange_config", TOKEN_EXCHANGE, "identity.token_exchange"),
    JsonField("backend_auth", BACKEND_AUTH, "identity.backend_auth"),
    JsonField("authz_config", AUTHZ_CONFIG, "policy.authz"),
    JsonField("authz_config_path", STRING, "policy.authz_path"),
    JsonField("audit_config", AUDIT_CONFIG, "policy.audit"),
    JsonField("audit_config_path", STRING, "policy.audit_path"),
    JsonField("telemetry_config", TELEMETRY_CONFIG, "telemetry"),
)
"""Every field of the flat layout: JSON name, kind, target attribute, omit rule."""

SCALING_CONFIG: Final = "scaling_config"
_KNOWN: Final = frozenset(row.name for row in FIELDS) | {SCALING_CONFIG}

Layout = Literal["flat", "scaling_config"]


def _fold_scaling_layout(doc: Mapping[str, Any], p: Problems) -> dict[str, Any]:
    """Fold ``scaling_config.<field>`` into the top level; equal values in both are fine."""
    merged = dict(doc)
    nested = doc.get(SCALING_CONFIG)
    if nested is None:
        return merged
    if not isinstance(nested, Mapping):
        p.add(SCALING_CONFIG, f"must be an object, got {show(nested)}")
        return merged
    # Unknown nested fields are ignored like unknown top-level ones.
    for name in (row.name for row in FIELDS if row.scaling and row.name in nested):
        value, flat = nested[name], doc.get(name)
        if flat is not None and flat != value:
            p.add(
                name,
                f"conflicts with {SCALING_CONFIG}.{name} ({show(flat)} vs {show(value)}); "
                "set it in one place",
            )
        else:
            merged[name] = value
    return merged


def parse_config(data: object) -> tuple[RunConfig, tuple[str, ...]]:
    """Validate a decoded RunConfig document. Returns the config and the unknown fields.

    Raises ConfigError listing every problem found.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"the document must be an object of fields, got {show(data)}")
    p = Problems()
    doc = _fold_scaling_layout(data, p)
    unknown = tuple(sorted(str(k) for k in doc if k not in _KNOWN))
    values, unparsed = read_fields(FIELDS, doc, "", p)
    config = assemble(values, unparsed, p)
    if config is None or p.items:
        raise ConfigError(p.items)
    return config, unknown


def dump_config(config: RunConfig, layout: Layout = "flat") -> dict[str, Any]:
    """A JSON-ready dict, omitting absent and zero fields (omitempty) but keeping an
    explicit ``backend_replicas: 0``. ``layout="scaling_config"`` nests the fields that
    upstream moved there."""
    out = write_fields(FIELDS, config)
    if layout == SCALING_CONFIG:
        nested = {row.name: out.pop(row.name) for row in FIELDS if row.scaling and row.name in out}
        if nested:
            out[SCALING_CONFIG] = nested
    return out


def dump_json(config: RunConfig) -> str:
    return json.dumps(dump_config(config), indent=2) + "\n"


def dump_yaml(config: RunConfig) -> str:
    return yaml.safe_dump(dump_config(config), sort_keys=False)
