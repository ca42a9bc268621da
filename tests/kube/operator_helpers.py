"""What the operator tests share: the CRD installed once, an in-process controller for one
namespace, and readers of what the API server holds.

- ``install_crd(cluster)``: apply config/crd/ as the admin and wait until it is served.
- ``running_operator(cluster, namespace, as_user=None)``: ``async with`` it: the controller
  watching ``namespace`` (as the admin, or impersonating ``as_user``), yielding its
  ``Reconciler`` for direct reconciles.
- ``apply_server(cluster, namespace, spec)``, ``read(cluster, namespace, kind, name)``,
  ``status(...)``, ``condition(...)``, ``child_versions(...)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import yaml

from proxyrunner.logging import get_logger
from proxyrunner.operator.children import FIELD_MANAGER
from proxyrunner.operator.controller import Controller, ControllerSettings
from proxyrunner.operator.objects import Objects, object_path
from proxyrunner.operator.reconcile import ProxySettings, Reconciler
from tests.kube.helpers import REPO_ROOT, KubeCluster, KubeRequestError, admin_api_client

CRD_FILE = REPO_ROOT / "config" / "crd" / "toolhive.stacklok.dev_mcpservers.yaml"
PROXY_IMAGE = "example.invalid/proxyrunner:test"
CHILD_KINDS = ("ConfigMap", "Deployment", "Service", "ServiceAccount", "Role", "RoleBinding")


def install_crd(cluster: KubeCluster) -> None:
    crd = yaml.safe_load(CRD_FILE.read_text())
    path = f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd['metadata']['name']}"
    cluster.apply(path, crd)
    deadline = time.monotonic() + 30.0
    while True:
        got = cluster.request("GET", path)
        established = [
            c
            for c in (got.get("status") or {}).get("conditions") or []
            if c["type"] == "Established"
        ]
        if established and established[0]["status"] == "True":
            break
        if time.monotonic() > deadline:
            raise AssertionError(f"CRD not established: {got.get('status')}")
        time.sleep(0.1)
    # Discovery (and so the garbage collector) learns of the new type a moment later; a
    # list answering is what the operator needs.
    while True:
        try:
            cluster.request("GET", "/apis/toolhive.stacklok.dev/v1alpha1/mcpservers")
            return
        except KubeRequestError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@contextlib.asynccontextmanager
async def running_operator(
    cluster: KubeCluster, namespace: str, *, as_user: str | None = None
) -> AsyncIterator[Reconciler]:
    """The controller for ``namespace``, as the admin or (impersonated) ``as_user``."""
    async with admin_api_client(cluster) as api:
        if as_user is not None:
            api.set_default_header("Impersonate-User", as_user)
        objects = Objects(api, FIELD_MANAGER)
        log = get_logger().bind(test_operator=namespace)
        reconciler = Reconciler(objects, ProxySettings(image=PROXY_IMAGE), log)
        controller = Controller(
            api, objects, reconciler.reconcile, ControllerSettings(namespace=namespace), log
        )
        task = asyncio.ensure_future(controller.run())
        try:
            yield reconciler
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def server_path(namespace: str, name: str) -> str:
    return object_path("MCPServer", namespace, name)


def apply_server(
    cluster: KubeCluster, namespace: str, name: str, spec: Mapping[str, Any]
) -> dict[str, Any]:
    body = {
        "apiVersion": "toolhive.stacklok.dev/v1alpha1",
        "kind": "MCPServer",
        "metadata": {"name": name, "namespace": namespace},
        "spec": dict(spec),
    }
    return cluster.apply(server_path(namespace, name), body, field_manager="kubectl")


def read(cluster: KubeCluster, namespace: str, kind: str, name: str) -> dict[str, Any] | None:
    try:
        return cluster.request("GET", object_path(kind, namespace, name))
    except KubeRequestError as exc:
        if exc.status == 404:
            return None
        raise


def condition(server: Mapping[str, Any] | None, kind: str) -> dict[str, Any] | None:
    for c in ((server or {}).get("status") or {}).get("conditions") or []:
        if c["type"] == kind:
            return dict(c)
    return None


def observed(cluster: KubeCluster, namespace: str, name: str, generation: int) -> bool:
    server = read(cluster, namespace, "MCPServer", name)
    return bool(server and (server.get("status") or {}).get("observedGeneration") == generation)


def child_names(name: str) -> dict[str, str]:
    return {
        "ConfigMap": f"{name}-runconfig",
        "Deployment": name,
        "Service": f"mcp-{name}-proxy",
        "ServiceAccount": f"{name}-proxy-runner",
        "Role": f"{name}-proxy-runner",
        "RoleBinding": f"{name}-proxy-runner",
    }


def child_versions(cluster: KubeCluster, namespace: str, name: str) -> dict[str, tuple[str, int]]:
    """(resourceVersion, generation) of every child: equal before and after means no write."""
    out: dict[str, tuple[str, int]] = {}
    for kind, child in child_names(name).items():
        obj = read(cluster, namespace, kind, child)
        assert obj is not None, f"{kind} {child} missing"
        meta = obj["metadata"]
        out[kind] = (meta["resourceVersion"], int(meta.get("generation") or 0))
    return out


def events(cluster: KubeCluster, namespace: str, name: str) -> list[dict[str, Any]]:
    listed = cluster.request(
        "GET",
        f"/api/v1/namespaces/{namespace}/events",
        query={"fieldSelector": f"involvedObject.name={name}"},
    )
    return list(listed.get("items") or [])
