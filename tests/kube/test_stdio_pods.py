"""stdio backends on Kubernetes: the proxy reaches the server in the pod through the
attach subresource. The test API server has no kubelet, so the attach itself goes to
tests/fake_kubelet.py (mapped through PROXYRUNNER_POD_ADDRESS_MAP, with the proxy's own
identity) while everything else, and the authorization of the attach, is the real API
server's."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import aiohttp
import pytest
import structlog
from mcp import Client

from proxyrunner.kube.attach import open_attach
from tests.conftest import StartProxy
from tests.fake_kubelet import fake_kubelet
from tests.helpers import readyz_text, tool_text, whoami
from tests.kube.helpers import KubeCluster, KubeRequestError, proxy_api_client
from tests.kube.test_pod_routing import create_pod
from tests.procs import eventually, http_status

pytestmark = [pytest.mark.kube, pytest.mark.timeout(180)]

LOG = structlog.get_logger().bind(test="stdio-pods")


async def test_a_stdio_server_in_a_pod_serves_sdk_clients_through_attach(
    kube_cluster: KubeCluster, kube_namespace: str, start_proxy: StartProxy, tmp_path: Path
) -> None:
    async with fake_kubelet(
        (sys.executable, "-m", "proxyrunner.demo"), identity="mcp-0", token=kube_cluster.proxy_token
    ) as kubelet:
        address_map = tmp_path / "pods.json"
        address_map.write_text(json.dumps({"mcp-0": kubelet.base}))
        proxy = start_proxy(
            {
                "name": "mcp",
                "runtime": "kubernetes",
                "transport": "stdio",
                "image": "example.invalid/mcp-stdio:1",
                "namespace": kube_namespace,
                "backend_replicas": 3,  # capped at 1: one attach stream, one pod
                "mcpserver_generation": 1,
            },
            env={
                "KUBECONFIG": str(kube_cluster.proxy_kubeconfig),
                "PROXYRUNNER_POD_ADDRESS_MAP": str(address_map),
            },
            wait=False,
        )
        path = f"/apis/apps/v1/namespaces/{kube_namespace}/statefulsets/mcp"

        def applied() -> bool:
            try:
                kube_cluster.request("GET", path)
            except KubeRequestError:
                return False
            return True

        await eventually(applied, 30, "the StatefulSet to be applied")
        statefulset = kube_cluster.request("GET", path)
        assert statefulset["spec"]["replicas"] == 1
        container = statefulset["spec"]["template"]["spec"]["containers"][0]
        assert container["stdin"] is True
        assert "ports" not in container

        # No controller or kubelet here: play their part.
        create_pod(kube_cluster, kube_namespace, "mcp-0", "10.0.0.20")
        kube_cluster.request(
            "PATCH",
            f"{path}/status",
            {"status": {"replicas": 1, "readyReplicas": 1}},
            content_type="application/merge-patch+json",
        )
        await eventually(lambda: "1 of 1" in readyz_text(proxy.base), 15, "the attach")
        async with Client(proxy.url, mode="legacy") as client:
            assert (await whoami(client))["id"] == "mcp-0"
            assert tool_text(await client.call_tool("echo", {"text": "in a pod"})) == "in a pod"
        assert kubelet.attaches[0]["container"] == "mcp"

        kube_cluster.request("DELETE", f"/api/v1/namespaces/{kube_namespace}/pods/mcp-0")
        await eventually(lambda: http_status(f"{proxy.base}/readyz") == 503, 15, "pod gone")
    events = [e.get("event") for e in proxy.log_events()]
    assert "attached to the backend pod" in events
    assert any("capped at 1" in str(e) for e in events)


async def test_the_documented_role_lets_the_proxy_attach_and_nothing_less_does(
    kube_cluster: KubeCluster, kube_namespace: str
) -> None:
    """Authorization is the API server's: with the Role, the attach gets past it and fails
    only because this cluster has no node to run the pod (400); in a namespace where the
    proxy holds no Role, it is forbidden (403)."""
    create_pod(kube_cluster, kube_namespace, "mcp-0", "10.0.0.21")
    async with proxy_api_client(kube_cluster) as api:
        with pytest.raises(aiohttp.WSServerHandshakeError) as allowed:
            await open_attach(api, kube_namespace, "mcp-0", LOG)
        assert allowed.value.status == 400
        with pytest.raises(aiohttp.WSServerHandshakeError) as forbidden:
            await open_attach(api, "default", "mcp-0", LOG)
        assert forbidden.value.status == 403
