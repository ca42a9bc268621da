"""Pods that only carry the backend's labels are not backends: the proxy routes and
attaches only to pods controlled by the StatefulSet it applied (owner UID) and named
``<name>-<ordinal>``. Anyone who may create pods in the namespace can set ``app=mcp``;
here the test does, on the real API server (no kubelet: the test plays its part)."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import pytest
from mcp import Client
from structlog.testing import capture_logs

from proxyrunner.backends.channel import MessageChannel
from proxyrunner.kube.directory import KubernetesBackendDirectory
from proxyrunner.logging import get_logger
from proxyrunner.metrics import Metrics
from tests.conftest import StartBackend, StartProxy
from tests.helpers import metric, readyz_text, whoami
from tests.kube.helpers import (
    KubeCluster,
    backend_config,
    create_pod,
    proxy_api_client,
    wait_for_sts,
)
from tests.procs import eventually, http_status

pytestmark = [pytest.mark.kube, pytest.mark.timeout(180)]

STRAY_WARNING = "ignoring a pod with the backend's labels that the StatefulSet does not own"


async def test_a_labelled_pod_the_statefulset_does_not_own_never_receives_a_session(
    kube_cluster: KubeCluster,
    kube_namespace: str,
    start_backend: StartBackend,
    start_proxy: StartProxy,
    tmp_path: Path,
) -> None:
    ours, intruder = start_backend("mcp-0"), start_backend("intruder")
    address_map = tmp_path / "pods.json"
    address_map.write_text(
        json.dumps({"mcp-0": ours.url, "mcp-1": intruder.url, "helper": intruder.url})
    )
    proxy = start_proxy(
        {
            "name": "mcp",
            "runtime": "kubernetes",
            "image": "example.invalid/mcp:1",
            "namespace": kube_namespace,
            "target_port": 8080,
            "backend_replicas": 0,  # no kubelet: the test makes the pods itself
        },
        env={
            "KUBECONFIG": str(kube_cluster.proxy_kubeconfig),
            "PROXYRUNNER_POD_ADDRESS_MAP": str(address_map),
        },
        wait=False,
    )
    await eventually(lambda: http_status(f"{proxy.base}/health") == 200, 30, "the proxy")
    # Strays first: pod events arrive in order, so once mcp-0 is seen they have been too.
    create_pod(kube_cluster, kube_namespace, "mcp-1", "10.0.1.11", owned=False)  # right name
    create_pod(kube_cluster, kube_namespace, "helper", "10.0.1.12", owned=False)
    create_pod(kube_cluster, kube_namespace, "mcp-0", "10.0.1.10")
    await eventually(lambda: http_status(f"{proxy.base}/readyz") == 200, 15, "pod mcp-0")
    assert "1 of 1 backend pods ready" in readyz_text(proxy.base)
    # The balancer sends each new session to the pod with the fewest: with a second
    # backend, one of these would land there.
    async with (
        Client(proxy.url, mode="legacy") as first,
        Client(proxy.url, mode="legacy") as second,
    ):
        assert (await whoami(first))["id"] == "mcp-0"
        assert (await whoami(second))["id"] == "mcp-0"
    assert await metric(proxy, "proxyrunner_stray_pods_ignored_total") == 2
    warned = [e.get("pod") for e in proxy.log_events() if e.get("event") == STRAY_WARNING]
    assert sorted(warned) == ["helper", "mcp-1"]  # once each, though their status changed

    # The pods of a deleted StatefulSet belong to nobody the proxy applied: once it applies
    # the StatefulSet again (a new UID), mcp-0 is no backend any more.
    old_uid = wait_for_sts(kube_cluster, kube_namespace)["metadata"]["uid"]
    kube_cluster.request("DELETE", f"/apis/apps/v1/namespaces/{kube_namespace}/statefulsets/mcp")
    await eventually(
        lambda: wait_for_sts(kube_cluster, kube_namespace)["metadata"]["uid"] != old_uid,
        15,
        "the StatefulSet applied again",
    )
    await eventually(lambda: http_status(f"{proxy.base}/readyz") == 503, 15, "mcp-0 dropped")


async def test_a_labelled_stdio_pod_the_statefulset_does_not_own_is_never_attached(
    kube_cluster: KubeCluster, kube_namespace: str
) -> None:
    asked: list[str] = []

    async def attach(pod: str) -> MessageChannel:
        asked.append(pod)
        raise aiohttp.ClientConnectionError("no kubelet here")

    config = backend_config(kube_namespace, transport="stdio", backend_replicas=0)
    metrics = Metrics()
    async with proxy_api_client(kube_cluster) as api:
        with capture_logs() as logs:
            directory = KubernetesBackendDirectory(
                config, api, metrics, get_logger(), kube_namespace, attach=attach
            )
            try:
                await directory.start()
                create_pod(kube_cluster, kube_namespace, "mcp-1", "10.0.1.21", owned=False)
                create_pod(kube_cluster, kube_namespace, "mcp-0", "10.0.1.20")
                await eventually(lambda: "mcp-0" in asked, 15, "the attach to mcp-0")
                assert directory.get("mcp-1") is None
            finally:
                await directory.close()
    assert set(asked) == {"mcp-0"}
    assert metrics.registry.get_sample_value("proxyrunner_stray_pods_ignored_total") == 1
    assert [e["pod"] for e in logs if e["event"] == STRAY_WARNING] == ["mcp-1"]
