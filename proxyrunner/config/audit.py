"""The audit trail's settings: ToolHive's ``audit_config`` object, read as ToolHive's Go
code reads it.

A ToolHive RunConfig carries ``"audit_config": {...}`` (``pkg/audit.Config``), whose json
tags are camelCase (``eventTypes``, ``maxDataSize``, ``logFile``); an operator-rendered
one loads here unchanged, and a dump writes those names back. Keys match the way Go's
encoding/json matches them (json tag or Go field name, any case: ``go_keys``), snake_case
spellings are taken too, unknown keys are ignored as Go ignores them (upstream's
``detectApplicationErrors`` and ``maxDelegationDepth`` among them: JSON-RPC errors are
always detected here, and delegation chains are not recorded), and the rules are
upstream's ``Validate``: ``maxDataSize`` not negative, event types from the known list.
The presence of the object turns the audit on; ``enabled`` (kept from ToolHive's older
layout) can still switch it off.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from proxyrunner.config.fields import (
    BOOLEAN,
    INTEGER,
    STRING,
    STRINGS,
    JsonField,
    Kind,
    go_keys,
    read_fields,
    write_fields,
)
from proxyrunner.config.problems import Problems, show
from proxyrunner.errors import ConfigError

AUDIT_CONFIG_FIELD: Final = "audit_config"
DEFAULT_MAX_DATA_SIZE: Final = 1024  # ToolHive's DefaultConfig: 1 KiB

# ToolHive's event types (pkg/audit/mcp_events.go), in its order. sse_connection is
# upstream's name for a GET stream; its Validate forgets it, we accept it since we emit it.
EVENT_TYPES: Final = (
    "mcp_initialize",
    "sse_connection",
    "mcp_tool_call",
    "mcp_tools_list",
    "mcp_resource_read",
    "mcp_resources_list",
    "mcp_prompt_get",
    "mcp_prompts_list",
    "mcp_notification",
    "mcp_ping",
    "mcp_logging",
    "mcp_completion",
    "mcp_roots_list_changed",
    "mcp_request",
    "http_request",
)


@dataclass(frozen=True, slots=True)
class AuditConfig:
    """What the audit trail records and where it writes (``audit_config``)."""

    enabled: bool = True
    """``enabled``: ToolHive's older layout had it; false switches the audit off. Newer
    RunConfigs leave it out: the object being there is what turns the audit on."""
    component: str = ""
    """``component``: the event's ``component``; empty means the server's ``name``."""
    event_types: tuple[str, ...] = ()
    """``eventTypes``: only these are recorded; empty records every type."""
    exclude_event_types: tuple[str, ...] = ()
    """``excludeEventTypes``: never recorded; wins over ``eventTypes``."""
    include_request_data: bool = False
    """``includeRequestData``: the request body goes into the event's ``data``."""
    include_response_data: bool = False
    """``includeResponseData``: the answer's JSON-RPC messages go into ``data``."""
    max_data_size: int = DEFAULT_MAX_DATA_SIZE
    """``maxDataSize``: bytes of request (and of response) data an event keeps at
    most; beyond that the data is cut. 0 means ToolHive's default, 1 KiB, since Go's
    omitempty cannot tell an explicit 0 from an absent field."""
    log_file: str = ""
    """``logFile``: the file events are appended to (one JSON line each); empty writes
    them to stdout."""

    def __post_init__(self) -> None:
        p = Problems()
        if p.at_least(_path("max_data_size"), self.max_data_size, 0) and not self.max_data_size:
            object.__setattr__(self, "max_data_size", DEFAULT_MAX_DATA_SIZE)
        for name in ("event_types", "exclude_event_types"):
            for index, event_type in enumerate(getattr(self, name)):
                if event_type not in EVENT_TYPES:
                    p.add(
                        f"{_path(name)}[{index}]",
                        f"unknown event type {show(event_type)}; known: {', '.join(EVENT_TYPES)}",
                    )
        p.raise_if_any()

    def records(self, event_type: str) -> bool:
        """Whether events of this type are written (upstream's ShouldAuditEvent)."""
        if event_type in self.exclude_event_types:
            return False
        return not self.event_types or event_type in self.event_types


def _path(attribute: str) -> str:
    """A problem's path, with the field's json tag as ToolHive writes it."""
    return f"{AUDIT_CONFIG_FIELD}.{_TAGS[attribute]}"


# (json tag, attribute, kind): the tags are ToolHive's, what a dump writes.
AUDIT_FIELDS: Final = tuple(
    JsonField(tag, kind, attribute)
    for tag, attribute, kind in (
        ("enabled", "enabled", BOOLEAN),
        ("component", "component", STRING),
        ("eventTypes", "event_types", STRINGS),
        ("excludeEventTypes", "exclude_event_types", STRINGS),
        ("includeRequestData", "include_request_data", BOOLEAN),
        ("includeResponseData", "include_response_data", BOOLEAN),
        ("maxDataSize", "max_data_size", INTEGER),
        ("logFile", "log_file", STRING),
    )
)

# Every name accepted for a field: the json tag (which, lowercased, is also the Go field
# name: go_keys matches any case) and our snake_case attribute name.
_GO_NAMES: Final = {
    **{row.name: row.name for row in AUDIT_FIELDS},
    **{row.attribute: row.name for row in AUDIT_FIELDS},
}
_TAGS: Final = {row.attribute: row.name for row in AUDIT_FIELDS}


def _read_audit(value: object, path: str) -> AuditConfig:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{path}: must be an object of audit settings, got {show(value)}")
    p = Problems()
    values, _ = read_fields(AUDIT_FIELDS, go_keys(value, _GO_NAMES), f"{path}.", p)
    if not p.items:
        try:
            return AuditConfig(**values.get("", {}))
        except ConfigError as exc:
            p.extend(exc)
    raise ConfigError(p.items)


def _write_audit(audit: AuditConfig) -> dict[str, Any]:
    out = write_fields(AUDIT_FIELDS, audit)
    out.pop("enabled", None)  # written only when false: newer ToolHive has no such field
    if not audit.enabled:
        out["enabled"] = False
    return out


AUDIT_CONFIG: Final = Kind(_read_audit, _write_audit)
"""The ``audit_config`` row's kind: ``JsonField("audit_config", AUDIT_CONFIG, ...)``."""
