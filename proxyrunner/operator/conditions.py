"""The MCPServer's status, decided from what its children report: pure, no I/O.

Condition types and reasons are ToolHive's where ToolHive has them (seed 003):
``StdioReplicaCapped`` / ``StdioTransportCapAt1`` and ``SessionStorageWarning`` /
``SessionStorageMissingForReplicas``. A condition keeps its ``lastTransitionTime`` while
its status stays the same, so a status that did not change is not written again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from proxyrunner.operator.spec import Server

READY: Final = "Ready"
STDIO_CAPPED: Final = "StdioReplicaCapped"
SESSION_STORAGE_WARNING: Final = "SessionStorageWarning"
IGNORED_FIELDS: Final = "UnsupportedFieldsIgnored"


@dataclass(frozen=True, slots=True)
class Condition:
    type: str
    status: str  # "True", "False", "Unknown"
    reason: str
    message: str


def _ready_count(obj: Mapping[str, Any] | None, field: str) -> tuple[int, int]:
    """(wanted, ready) replicas of a Deployment or StatefulSet; wanted 1 when unset."""
    if obj is None:
        return 0, 0
    wanted = obj.get("spec", {}).get("replicas")
    status = obj.get("status") or {}
    return (1 if wanted is None else int(wanted)), int(status.get(field) or 0)


def ready_condition(
    deployment: Mapping[str, Any] | None, statefulset: Mapping[str, Any] | None
) -> Condition:
    """Ready when every wanted proxy replica is available and every wanted backend pod is
    ready. The StatefulSet is the proxy's to create, so its absence means the proxies
    have not started yet."""
    if deployment is None:
        return Condition(READY, "False", "DeploymentMissing", "the proxy Deployment is not there")
    wanted, available = _ready_count(deployment, "availableReplicas")
    if available < wanted:
        return Condition(
            READY,
            "False",
            "DeploymentNotAvailable",
            f"proxy Deployment: {available}/{wanted} replicas available",
        )
    if statefulset is None:
        return Condition(
            READY, "False", "BackendNotApplied", "the backend StatefulSet is not applied yet"
        )
    wanted_backends, ready = _ready_count(statefulset, "readyReplicas")
    if ready < wanted_backends:
        return Condition(
            READY,
            "False",
            "BackendNotReady",
            f"backend StatefulSet: {ready}/{wanted_backends} pods ready",
        )
    return Condition(READY, "True", "Ready", "proxy and backend are ready")


def warnings(server: Server) -> list[Condition]:
    out: list[Condition] = []
    if server.stdio_capped:
        out.append(
            Condition(
                STDIO_CAPPED,
                "True",
                "StdioTransportCapAt1",
                f"stdio serves one attach stream per backend pod: replicas "
                f"{server.requested_replicas} and backendReplicas "
                f"{server.requested_backend_replicas} are applied as at most 1",
            )
        )
    if (server.requested_replicas or 0) > 1:
        if server.shares_sessions:
            out.append(
                Condition(
                    SESSION_STORAGE_WARNING,
                    "False",
                    "SessionStorageConfigured",
                    "Redis session storage is configured",
                )
            )
        else:
            out.append(
                Condition(
                    SESSION_STORAGE_WARNING,
                    "True",
                    "SessionStorageMissingForReplicas",
                    f"replicas is {server.requested_replicas} but sessionStorage.provider "
                    "is not redis: sessions are not shared across proxy replicas",
                )
            )
    if server.ignored:
        out.append(
            Condition(
                IGNORED_FIELDS,
                "True",
                "NotSupportedByProxyrunner",
                "accepted but not acted on: " + ", ".join(server.ignored),
            )
        )
    return out


def invalid_spec(message: str) -> Condition:
    return Condition(READY, "False", "InvalidSpec", message[:1000])


def merge_conditions(
    current: Sequence[Mapping[str, Any]],
    wanted: Sequence[Condition],
    generation: int,
    now: str,
) -> list[dict[str, Any]]:
    """The conditions list to write: ``wanted`` in order, each keeping the transition
    time it already has when its status did not change. Conditions not wanted (a cap no
    longer needed) are dropped."""
    previous = {str(c.get("type")): c for c in current}
    out: list[dict[str, Any]] = []
    for c in wanted:
        before = previous.get(c.type)
        since = now
        if before is not None and before.get("status") == c.status:
            since = str(before.get("lastTransitionTime") or now)
        out.append(
            {
                "type": c.type,
                "status": c.status,
                "reason": c.reason,
                "message": c.message,
                "observedGeneration": generation,
                "lastTransitionTime": since,
            }
        )
    return out


def status_body(
    resource: Mapping[str, Any],
    conditions: Sequence[Condition],
    url: str | None,
    now: str,
) -> dict[str, Any]:
    """The whole status for ``resource`` (JSON merge patch replaces the conditions list)."""
    generation = int((resource.get("metadata") or {}).get("generation") or 0)
    current = (resource.get("status") or {}).get("conditions") or []
    ready = next((c for c in conditions if c.type == READY), None)
    if ready is not None and ready.reason == "InvalidSpec":
        phase = "Failed"
    elif ready is not None and ready.status == "True":
        phase = "Running"
    else:
        phase = "Pending"
    status: dict[str, Any] = {
        "observedGeneration": generation,
        "phase": phase,
        "message": ready.message if ready is not None else "",
        "conditions": merge_conditions(current, conditions, generation, now),
    }
    if url is not None:
        status["url"] = url
    return status


def status_changed(resource: Mapping[str, Any], status: Mapping[str, Any]) -> bool:
    current = resource.get("status") or {}
    return any(current.get(k) != v for k, v in status.items())
