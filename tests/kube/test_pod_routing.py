"""Routing to backend pods, end to end: proxyrunner runs as a process with the Kubernetes
runtime against a real kube-apiserver, as the Role-limited proxy identity. There is no
kubelet, so the test creates the pods and sets their readiness itself, and maps each pod
to a local demo MCP server through the documented PROXYRUNNER_POD_ADDRESS_MAP hook."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mcp import Client

from tests.conftest import StartBackend, StartProxy
from tests.helpers import readyz_text, whoami
from tests.kube.helpers import KubeCluster, create_pod, set_ready
from tests.procs import eventually, http_status

pytestmark = [pytest.mark.kube, pytest.mark.timeout(180)]


async def test_sessions_follow_pods_as_they_come_go_and_turn_unready(
    kube_cluster: KubeCluster,
    kube_namespace: str,
    start_backend: StartBackend,
    start_proxy: StartProxy,
    tmp_path: Path,
) -> None:
    pod0, pod1 = start_backend("mcp-0"), start_backend("mcp-1")
    address_map = tmp_path / "pods.json"
    address_map.write_text(json.dumps({"mcp-0": pod0.url, "mcp-1": pod1.url}))
    proxy = start_proxy(
        {
            "name": "mcp",
            "runtime": "kubernetes",
            "image": "example.invalid/mcp:1",
            "namespace": kube_namespace,
            "target_port": 8080,
            "backend_replicas": 0,  # no kubelet: the test makes the pods itself
            "mcpserver_generation": 1,
        },
        env={
            "KUBECONFIG": str(kube_cluster.proxy_kubeconfig),
            "PROXYRUNNER_POD_ADDRESS_MAP": str(address_map),
        },
        wait=False,
    )
    await eventually(lambda: http_status(f"{proxy.base}/health") == 200, 30, "the proxy")
    assert http_status(f"{proxy.base}/readyz") == 503  # no backend pod yet

    create_pod(kube_cluster, kube_namespace, "mcp-0", "10.0.0.10")
    await eventually(lambda: http_status(f"{proxy.base}/readyz") == 200, 10, "pod mcp-0")
    async with Client(proxy.url, mode="legacy") as first:
        assert (await whoami(first))["id"] == "mcp-0"

        # Pod added: a new session goes to the pod with fewer sessions.
        create_pod(kube_cluster, kube_namespace, "mcp-1", "10.0.0.11")
        await eventually(lambda: "2 of 2" in readyz_text(proxy.base), 10, "pod mcp-1 to be ready")
        async with Client(proxy.url, mode="legacy") as second:
            assert (await whoami(second))["id"] == "mcp-1"

        # The pinned pod turns unready: the same client session continues elsewhere.
        set_ready(kube_cluster, kube_namespace, "mcp-0", False, "10.0.0.10")
        await eventually(lambda: "1 of 2" in readyz_text(proxy.base), 10, "mcp-0 unready")
        assert (await whoami(first))["id"] == "mcp-1"

        # Back, then the other pod is deleted: the session moves again.
        set_ready(kube_cluster, kube_namespace, "mcp-0", True, "10.0.0.10")
        kube_cluster.request("DELETE", f"/api/v1/namespaces/{kube_namespace}/pods/mcp-1")
        await eventually(lambda: "1 of 1" in readyz_text(proxy.base), 10, "mcp-1 gone")
        assert (await whoami(first))["id"] == "mcp-0"
    events = [e.get("event") for e in proxy.log_events()]
    assert events.count("session re-initialized") >= 2


async def test_deleted_statefulset_is_applied_again(
    kube_cluster: KubeCluster, kube_namespace: str, start_proxy: StartProxy
) -> None:
    proxy = start_proxy(
        {
            "name": "mcp",
            "runtime": "kubernetes",
            "image": "example.invalid/mcp:1",
            "namespace": kube_namespace,
            "backend_replicas": 0,
        },
        env={"KUBECONFIG": str(kube_cluster.proxy_kubeconfig)},
        wait=False,
    )
    path = f"/apis/apps/v1/namespaces/{kube_namespace}/statefulsets/mcp"

    def exists() -> bool:
        try:
            kube_cluster.request("GET", path)
            return True
        except Exception:
            return False

    await eventually(
        lambda: any(e.get("event") == "ready" for e in proxy.log_events()), 30, "the proxy"
    )
    assert exists()
    uid = kube_cluster.request("GET", path)["metadata"]["uid"]
    kube_cluster.request("DELETE", path)

    def reapplied() -> bool:
        return exists() and kube_cluster.request("GET", path)["metadata"]["uid"] != uid

    await eventually(reapplied, 15, "the StatefulSet to be applied again")
    assert proxy.alive()


def test_runconfig_is_read_from_a_configmap_through_the_api(
    kube_cluster: KubeCluster, kube_namespace: str, start_backend: StartBackend, tmp_path: Path
) -> None:
    import sys

    from tests.procs import Proc, free_port, wait_until

    backend = start_backend("alpha")
    port = free_port()
    runconfig = {"name": "demo", "remote_url": backend.url, "host": "127.0.0.1", "port": port}
    kube_cluster.request(
        "POST",
        f"/api/v1/namespaces/{kube_namespace}/configmaps",
        {"metadata": {"name": "mcp-runconfig"}, "data": {"runconfig.json": json.dumps(runconfig)}},
    )
    proc = Proc(
        [sys.executable, "-m", "proxyrunner", "run", "--configmap",
         f"{kube_namespace}/mcp-runconfig", "--log-format", "json"],
        tmp_path / "configmap-proxy.log",
        {"KUBECONFIG": str(kube_cluster.proxy_kubeconfig)},
    )  # fmt: skip
    try:
        wait_until(lambda: http_status(f"http://127.0.0.1:{port}/readyz") == 200, 30, "ready")
    finally:
        assert proc.stop() == 0
    # Any other ConfigMap is outside the Role (it names the one it may read).
    other = Proc(
        [sys.executable, "-m", "proxyrunner", "run", "--configmap", f"{kube_namespace}/other"],
        tmp_path / "other.log",
        {"KUBECONFIG": str(kube_cluster.proxy_kubeconfig)},
    )
    code = other.wait(timeout=30)
    other.stop()
    assert code == 3
    assert "does not allow 'get' on configmaps" in other.output()
