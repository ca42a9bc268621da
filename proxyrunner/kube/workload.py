"""The backend workload as server-side apply bodies: pure functions, no I/O.

Two rules matter here. The template is deterministic (env sorted, no timestamps), so a
proxy restart re-applies the same object and never rolls the backend. And the generation
gate is decided here, from the annotation the last applier stamped on the pod template:
a proxy pod of an older rollout must never roll the backend back (ToolHive #5023).
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from proxyrunner.config import RunConfig

GENERATION_ANNOTATION: Final = "toolhive.stacklok.dev/mcpserver-generation"
RESTARTED_AT_ANNOTATION: Final = "kubectl.kubernetes.io/restartedAt"
DEFAULT_TARGET_PORT: Final = 8080


def headless_service_name(name: str) -> str:
    return f"mcp-{name}-headless"


def service_name(name: str) -> str:
    return f"mcp-{name}"


def selector_labels(name: str) -> dict[str, str]:
    return {"app": name}


def workload_labels(name: str) -> dict[str, str]:
    return {
        **selector_labels(name),
        "app.kubernetes.io/name": "mcp-server",
        "app.kubernetes.io/instance": name,
        "app.kubernetes.io/managed-by": "proxyrunner",
    }


def is_statefulset_pod(pod: Mapping[str, Any], name: str, statefulset_uid: str | None) -> bool:
    """Whether ``pod`` is one of StatefulSet ``name``'s own: named ``<name>-<ordinal>`` and
    controlled by the StatefulSet with UID ``statefulset_uid``. The ``app`` label alone
    says nothing: anyone who may create pods in the namespace can set it."""
    metadata = pod.get("metadata") or {}
    if statefulset_uid is None or not re.fullmatch(
        rf"{re.escape(name)}-(0|[1-9][0-9]*)", str(metadata.get("name", ""))
    ):
        return False
    return any(
        ref.get("kind") == "StatefulSet"
        and ref.get("apiVersion") == "apps/v1"
        and ref.get("name") == name
        and ref.get("uid") == statefulset_uid
        and ref.get("controller") is True
        for ref in metadata.get("ownerReferences") or []
    )


def target_port(config: RunConfig) -> int:
    return config.backend.target_port or DEFAULT_TARGET_PORT


@dataclass(frozen=True, slots=True)
class GateDecision:
    apply: bool
    stamp: bool
    reason: str
    existing: int | None = None
    unparsable: bool = False
    """The stamped annotation is not a number: it is replaced (and the proxy warns)."""


def decide_gate(existing: str | None, ours: int) -> GateDecision:
    """Whether a proxy of generation ``ours`` may apply over a pod template stamped
    ``existing``. Equal applies (idempotent); strictly newer skips; 0 is unversioned."""
    if ours == 0:
        return GateDecision(apply=True, stamp=False, reason="unversioned: no gate")
    if existing is None:
        return GateDecision(apply=True, stamp=True, reason="no generation stamped yet")
    try:
        theirs = int(existing)
    except ValueError:
        return GateDecision(
            apply=True, stamp=True, reason=f"unparsable annotation {existing!r}", unparsable=True
        )
    if theirs > ours:
        return GateDecision(
            apply=False, stamp=False, reason="a newer generation is applied", existing=theirs
        )
    return GateDecision(apply=True, stamp=True, reason="same or older generation", existing=theirs)


def merge_patch(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """Strategic-merge-style: maps merge recursively, lists of named maps (containers,
    env, ports, volumes) merge by name, anything else in the patch replaces."""
    out = copy.deepcopy(base)
    for key, value in patch.items():
        current = out.get(key)
        if isinstance(current, dict) and isinstance(value, dict):
            out[key] = merge_patch(current, value)
        elif isinstance(current, list) and isinstance(value, list) and _named(current + value):
            merged = {item["name"]: item for item in current}
            for item in value:
                merged[item["name"]] = merge_patch(merged.get(item["name"], {}), item)
            out[key] = list(merged.values())
        else:
            out[key] = copy.deepcopy(value)
    return out


def _named(items: list[Any]) -> bool:
    return bool(items) and all(isinstance(i, dict) and "name" in i for i in items)


def _container(config: RunConfig) -> dict[str, Any]:
    backend = config.backend
    env = dict(backend.env_vars)
    if backend.transport != "stdio":
        env.update(
            MCP_TRANSPORT=backend.transport, MCP_PORT=str(target_port(config)), MCP_HOST="0.0.0.0"
        )
    container: dict[str, Any] = {
        "name": "mcp",
        "image": backend.image,
        "args": list(backend.cmd_args),
        "env": sorted(
            [{"name": k, "value": v} for k, v in env.items()]
            + [
                {"name": k, "valueFrom": {"secretKeyRef": {"name": name, "key": key}}}
                for k, (name, key) in backend.env_secrets.items()
            ],
            key=lambda e: str(e["name"]),
        ),
        "securityContext": {
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    if backend.transport == "stdio":
        # The proxy talks to the server over the attach subresource.
        container.update(stdin=True, stdinOnce=False, tty=False)
    else:
        container["ports"] = [
            {"name": "mcp", "containerPort": target_port(config), "protocol": "TCP"}
        ]
    return container


def statefulset_body(
    config: RunConfig,
    namespace: str,
    *,
    stamp_generation: bool,
    restarted_at: str | None = None,
    resource_version: str | None = None,
) -> dict[str, Any]:
    """The StatefulSet apply body. ``spec.replicas`` appears only when backend_replicas is
    set (0 included): absent, an HPA or kubectl owns the count."""
    annotations: dict[str, str] = {}
    if stamp_generation:
        annotations[GENERATION_ANNOTATION] = str(config.mcpserver_generation)
    if restarted_at is not None:
        annotations[RESTARTED_AT_ANNOTATION] = restarted_at
    template: dict[str, Any] = {
        "metadata": {"labels": workload_labels(config.name)},
        "spec": {
            "containers": [_container(config)],
            "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        },
    }
    if annotations:
        template["metadata"]["annotations"] = annotations
    if config.kubernetes.pod_template_patch:
        template = merge_patch(template, json.loads(config.kubernetes.pod_template_patch))
    spec: dict[str, Any] = {
        "selector": {"matchLabels": selector_labels(config.name)},
        "serviceName": headless_service_name(config.name),
        "template": template,
    }
    replicas = config.backend.replicas
    if replicas is not None:
        if config.backend.transport == "stdio":
            replicas = min(replicas, 1)  # one attach stream: one pod
        spec["replicas"] = replicas
    metadata: dict[str, Any] = {
        "name": config.name,
        "namespace": namespace,
        "labels": workload_labels(config.name),
    }
    if resource_version is not None:
        # A precondition: the apply fails with 409 if the object changed since the gate
        # decision was made on it.
        metadata["resourceVersion"] = resource_version
    return {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": metadata, "spec": spec}


def replicas_body(name: str, namespace: str, replicas: int) -> dict[str, Any]:
    """The apply body by which a hand-off manager co-owns spec.replicas."""
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"replicas": replicas},
    }


def service_bodies(config: RunConfig, namespace: str) -> list[dict[str, Any]]:
    """The headless Service (stable per-pod DNS) and the regular one. No ClientIP
    affinity: it would starve backend pods behind few proxy IPs."""
    port = {"name": "mcp", "port": target_port(config), "targetPort": "mcp", "protocol": "TCP"}
    common = {"selector": selector_labels(config.name), "ports": [port]}
    labels = workload_labels(config.name)
    return [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                "name": headless_service_name(config.name),
                "namespace": namespace,
                "labels": labels,
            },
            "spec": {**common, "clusterIP": "None", "publishNotReadyAddresses": False},
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                "name": service_name(config.name),
                "namespace": namespace,
                "labels": labels,
            },
            "spec": {**common, "sessionAffinity": "None"},
        },
    ]


def owns_replicas(statefulset: dict[str, Any], manager: str) -> tuple[bool, bool]:
    """(we own spec.replicas by apply, someone else owns it too) from managedFields."""
    ours = others = False
    for entry in statefulset.get("metadata", {}).get("managedFields") or []:
        fields = entry.get("fieldsV1") or {}
        if "f:replicas" not in (fields.get("f:spec") or {}):
            continue
        if entry.get("manager") == manager and entry.get("operation") == "Apply":
            ours = True
        else:
            others = True
    return ours, others
