"""The Kubernetes test environment itself: a real apiserver with SSA, RBAC and subresources."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from tests.kube.helpers import KubeCluster, admin_api_client, proxy_api_client

pytestmark = pytest.mark.kube

APPLY = "application/apply-patch+yaml"


def configmap(name: str, **data: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data}


async def test_admin_creates_namespace_and_server_side_applies(kube_cluster: KubeCluster) -> None:
    namespace = f"env-{uuid.uuid4().hex[:8]}"
    async with admin_api_client(kube_cluster) as api:
        core = client.CoreV1Api(api)
        await core.create_namespace(
            client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace))
        )
        try:
            await core.patch_namespaced_config_map(
                "settings",
                namespace,
                configmap("settings", greeting="hello"),
                field_manager="test",
                _content_type=APPLY,
            )
            cm = await core.read_namespaced_config_map("settings", namespace)
            assert cm.data == {"greeting": "hello"}
            managers = {(f.manager, f.operation) for f in cm.metadata.managed_fields}
            assert ("test", "Apply") in managers

            # Another field manager changing an owned field conflicts unless it forces.
            with pytest.raises(ApiException) as conflict:
                await core.patch_namespaced_config_map(
                    "settings",
                    namespace,
                    configmap("settings", greeting="bye"),
                    field_manager="other",
                    _content_type=APPLY,
                )
            assert conflict.value.status == 409

            # A stale resourceVersion precondition is refused.
            stale = configmap("settings", greeting="again")
            stale["metadata"]["resourceVersion"] = "1"
            with pytest.raises(ApiException) as precondition:
                await core.replace_namespaced_config_map("settings", namespace, stale)
            assert precondition.value.status == 409
        finally:
            await core.delete_namespace(namespace)


async def test_proxy_identity_is_bound_to_the_role_only(
    kube_cluster: KubeCluster, kube_namespace: str
) -> None:
    async with admin_api_client(kube_cluster) as admin:
        admin_core = client.CoreV1Api(admin)
        await admin_core.patch_namespaced_config_map(
            "mcp-runconfig",
            kube_namespace,
            configmap("mcp-runconfig", config="{}"),
            field_manager="test",
            _content_type=APPLY,
        )
        await admin_core.create_namespaced_secret(
            kube_namespace,
            client.V1Secret(metadata=client.V1ObjectMeta(name="token"), string_data={"k": "v"}),
        )

    async with proxy_api_client(kube_cluster) as proxy:
        core = client.CoreV1Api(proxy)
        cm = await core.read_namespaced_config_map("mcp-runconfig", kube_namespace)
        assert cm.data == {"config": "{}"}

        with pytest.raises(ApiException) as delete:
            await core.delete_namespaced_config_map("mcp-runconfig", kube_namespace)
        assert delete.value.status == 403
        with pytest.raises(ApiException) as read_secret:
            await core.read_namespaced_secret("token", kube_namespace)
        assert read_secret.value.status == 403
        with pytest.raises(ApiException) as list_secrets:
            await core.list_namespaced_secret(kube_namespace)
        assert list_secrets.value.status == 403
        # Bound in this namespace only.
        with pytest.raises(ApiException) as elsewhere:
            await core.read_namespaced_config_map("mcp-runconfig", "default")
        assert elsewhere.value.status == 403


async def test_statefulset_scale_subresource(
    kube_cluster: KubeCluster, kube_namespace: str
) -> None:
    labels = {"app": "backend"}
    statefulset = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": "backend"},
        "spec": {
            "replicas": 1,
            "serviceName": "backend",
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "mcp", "image": "example.invalid/mcp:1"}]},
            },
        },
    }
    async with admin_api_client(kube_cluster) as api:
        apps = client.AppsV1Api(api)
        await apps.patch_namespaced_stateful_set(
            "backend", kube_namespace, statefulset, field_manager="test", _content_type=APPLY
        )
        scale = await apps.read_namespaced_stateful_set_scale("backend", kube_namespace)
        assert scale.spec.replicas == 1

        scaled = await apps.patch_namespaced_stateful_set_scale(
            "backend", kube_namespace, {"spec": {"replicas": 3}}
        )
        assert scaled.spec.replicas == 3
        sts = await apps.read_namespaced_stateful_set("backend", kube_namespace)
        assert sts.spec.replicas == 3
        assert sts.metadata.generation == 2


async def test_pods_can_be_created_and_their_status_patched(
    kube_cluster: KubeCluster, kube_namespace: str
) -> None:
    """No kubelet: a test makes a Pod Ready itself, through the status subresource."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "backend-0", "labels": {"app": "backend"}},
        "spec": {"containers": [{"name": "mcp", "image": "example.invalid/mcp:1"}]},
    }
    async with admin_api_client(kube_cluster) as api:
        core = client.CoreV1Api(api)
        await core.create_namespaced_pod(kube_namespace, pod)
        await core.patch_namespaced_pod_status(
            "backend-0",
            kube_namespace,
            {
                "status": {
                    "phase": "Running",
                    "podIP": "10.0.0.7",
                    "conditions": [{"type": "Ready", "status": "True"}],
                }
            },
        )
    async with proxy_api_client(kube_cluster) as proxy:
        pods = await client.CoreV1Api(proxy).list_namespaced_pod(
            kube_namespace, label_selector="app=backend"
        )
    [listed] = pods.items
    assert listed.status.phase == "Running"
    assert [(c.type, c.status) for c in listed.status.conditions] == [("Ready", "True")]
