"""The objects one MCPServer owns, as server-side apply bodies: pure functions, no I/O.

Two rules matter here. Every body is deterministic (sorted env, no timestamps, the
RunConfig dumped by the daemon's own dumper), so applying an unchanged MCPServer again is
a no-op for the API server and writes nothing. And a body names only the fields the
operator owns: ``spec.replicas`` of the Deployment appears only when the MCPServer sets
it, so an HPA or ``kubectl scale`` keeps the count otherwise.

The backend StatefulSet and its Services are not here: the proxy applies them itself,
generation-gated (``proxyrunner.kube.apply``), from the RunConfig rendered here.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any, Final

from proxyrunner.config import GENERATION_ENV, POD_NAMESPACE_ENV, REDIS_PASSWORD_ENV
from proxyrunner.kube.rbac import proxy_role_rules
from proxyrunner.kube.workload import GENERATION_ANNOTATION
from proxyrunner.operator.spec import API_VERSION, KIND, Server

FIELD_MANAGER: Final = "proxyrunner-operator"
RUNCONFIG_KEY: Final = "runconfig.json"
RUNCONFIG_DIR: Final = "/etc/runconfig"
CHECKSUM_ANNOTATION: Final = "checksum/runconfig"
MANAGED_BY: Final = "proxyrunner-operator"
# The kubelet's SIGKILL must come after the proxy's own drain deadline.
GRACE_MARGIN_SECONDS: Final = 5


def configmap_name(name: str) -> str:
    return f"{name}-runconfig"


def proxy_service_name(name: str) -> str:
    # Not mcp-<name>: the proxy applies that one for the backend pods.
    return f"mcp-{name}-proxy"


def service_account_name(name: str) -> str:
    return f"{name}-proxy-runner"


def proxy_selector(name: str) -> dict[str, str]:
    # Never "app: <name>": that label selects the backend pods (kube.workload).
    return {"app.kubernetes.io/name": "mcpserver-proxy", "app.kubernetes.io/instance": name}


def labels(name: str) -> dict[str, str]:
    return {
        **proxy_selector(name),
        "app.kubernetes.io/component": "proxy",
        "app.kubernetes.io/managed-by": MANAGED_BY,
        "toolhive.stacklok.dev/mcpserver": name,
    }


def owner_reference(server: Server) -> dict[str, Any]:
    """The controller reference by which the garbage collector deletes a child with its
    MCPServer (blockOwnerDeletion: foreground deletion waits for it)."""
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": server.name,
        "uid": server.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _metadata(server: Server, name: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": server.namespace,
        "labels": labels(server.name),
        "ownerReferences": [owner_reference(server)],
    }


def checksum(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def grace_period(server: Server) -> int:
    return math.ceil(server.run_config.drain.timeout) + GRACE_MARGIN_SECONDS


def configmap_body(server: Server) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(server, configmap_name(server.name)),
        "data": {RUNCONFIG_KEY: server.runconfig_json()},
    }


def _env(server: Server) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {
            "name": GENERATION_ENV,
            # Each pod keeps its own template's generation even if it restarts after the
            # ConfigMap moved on: the apply gate then decides on what the pod was made for.
            "valueFrom": {
                "fieldRef": {"fieldPath": f"metadata.annotations['{GENERATION_ANNOTATION}']"}
            },
        },
        {"name": POD_NAMESPACE_ENV, "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
    ]
    if server.password is not None:
        env.append(
            {
                "name": REDIS_PASSWORD_ENV,
                "valueFrom": {
                    "secretKeyRef": {"name": server.password.name, "key": server.password.key}
                },
            }
        )
    for variable, ref in server.secret_env:
        env.append(
            {
                "name": variable,
                "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}},
            }
        )
    return sorted(env, key=lambda e: str(e["name"]))


def deployment_body(
    server: Server, image: str, pull_policy: str, resources: dict[str, Any]
) -> dict[str, Any]:
    """The proxy Deployment: ``proxyrunner run`` on the mounted RunConfig."""
    port = server.proxy_port
    container: dict[str, Any] = {
        "name": "proxyrunner",
        "image": image,
        "imagePullPolicy": pull_policy,
        "command": ["proxyrunner", "run"],
        "args": ["--config", f"{RUNCONFIG_DIR}/{RUNCONFIG_KEY}", "--log-format", "json"],
        "env": _env(server),
        "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"}],
        "livenessProbe": {
            "httpGet": {"path": "/health", "port": "http"},
            "periodSeconds": 10,
            "failureThreshold": 3,
        },
        # failureThreshold 1: a draining proxy leaves the endpoints at its next probe.
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": "http"},
            "periodSeconds": 2,
            "failureThreshold": 1,
        },
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": "runconfig", "mountPath": RUNCONFIG_DIR, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},  # noqa: S108 - an emptyDir in the pod
            *({"name": m.volume, "mountPath": m.path, "readOnly": True} for m in server.mounts),
        ],
    }
    if resources:
        container["resources"] = resources
    template = {
        "metadata": {
            "labels": labels(server.name),
            "annotations": {
                # A RunConfig change rolls the pods.
                CHECKSUM_ANNOTATION: checksum(server.runconfig_json()),
                GENERATION_ANNOTATION: str(server.generation),
            },
        },
        "spec": {
            "serviceAccountName": service_account_name(server.name),
            "terminationGracePeriodSeconds": grace_period(server),
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": 65532,
                "runAsGroup": 65532,
                "fsGroup": 65532,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [container],
            "volumes": [
                {"name": "runconfig", "configMap": {"name": configmap_name(server.name)}},
                {"name": "tmp", "emptyDir": {}},
                *({"name": m.volume, "configMap": {"name": m.config_map}} for m in server.mounts),
            ],
        },
    }
    spec: dict[str, Any] = {
        "selector": {"matchLabels": proxy_selector(server.name)},
        # maxUnavailable 0: a rollout never drops below the serving count.
        "strategy": {
            "type": "RollingUpdate",
            "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
        },
        "template": template,
    }
    if server.replicas is not None:
        spec["replicas"] = server.replicas
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(server, server.name),
        "spec": spec,
    }


def replicas_body(server: Server, replicas: int) -> dict[str, Any]:
    """The apply body by which a hand-off manager co-owns the Deployment's replicas."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": server.name, "namespace": server.namespace},
        "spec": {"replicas": replicas},
    }


def service_body(server: Server) -> dict[str, Any]:
    port = {"name": "http", "port": server.proxy_port, "targetPort": "http", "protocol": "TCP"}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(server, proxy_service_name(server.name)),
        # No affinity: sessions live in the store, any proxy replica serves any session.
        "spec": {
            "selector": proxy_selector(server.name),
            "ports": [port],
            "sessionAffinity": "None",
        },
    }


def service_account_body(server: Server) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _metadata(server, service_account_name(server.name)),
    }


def role_body(server: Server) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": _metadata(server, service_account_name(server.name)),
        # The proxy's own rules for this server (kube.rbac); the RunConfig is mounted.
        "rules": proxy_role_rules(server.name),
    }


def role_binding_body(server: Server) -> dict[str, Any]:
    name = service_account_name(server.name)
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _metadata(server, name),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": server.namespace}],
    }


def statefulset_owner_body(server: Server) -> dict[str, Any]:
    """The proxy creates the backend StatefulSet (generation-gated) without owner; the
    operator adds only its owner reference, under its own manager, so that the garbage
    collector deletes the backend with the MCPServer. ownerReferences is a list keyed by
    uid: the proxy's applies never touch this entry."""
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {
            "name": server.name,
            "namespace": server.namespace,
            "ownerReferences": [owner_reference(server)],
        },
    }
