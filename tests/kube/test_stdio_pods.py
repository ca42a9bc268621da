"""stdio backends on Kubernetes: the proxy reaches the server in the pod through the
attach subresource. The test API server has no kubelet, so the attach itself goes to
tests/fake_kubelet.py (mapped through PROXYRUNNER_POD_ADDRESS_MAP, with the proxy's own
identity) while everything else, and the authorization of the attach, is the real API
server's."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog
from mcp import Client
from structlog.testing import capture_logs

from proxyrunner.backends.channel import MessageChannel
from proxyrunner.kube.attach import open_attach
from proxyrunner.kube.directory import KubernetesBackendDirectory, pod_attacher
from proxyrunner.logging import get_logger
from proxyrunner.metrics import Metrics
from tests.conftest import StartProxy
from tests.fake_kubelet import fake_kubelet
from tests.helpers import readyz_text, tool_text, whoami
from tests.kube.helpers import (
    KubeCluster,
    KubeRequestError,
    backend_config,
    create_pod,
    proxy_api_client,
)
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


async def test_the_documented_role_lets_the_proxy_attach_to_mcp_0_only_and_nothing_less_does(
    kube_cluster: KubeCluster, kube_namespace: str
) -> None:
    """Authorization is the API server's: with the Role, the attach gets past it and fails
    only because this cluster has no node to run the pod (400); in a namespace where the
    proxy holds no Role, it is forbidden (403)."""
    create_pod(kube_cluster, kube_namespace, "mcp-0", "10.0.0.21", owned=False)
    async with proxy_api_client(kube_cluster) as api:
        with pytest.raises(aiohttp.WSServerHandshakeError) as allowed:
            await open_attach(api, kube_namespace, "mcp-0", LOG)
        assert allowed.value.status == 400
        with pytest.raises(aiohttp.WSServerHandshakeError) as other_pod:
            await open_attach(api, kube_namespace, "mcp-1", LOG)  # stdio runs only mcp-0
        assert other_pod.value.status == 403
        with pytest.raises(aiohttp.WSServerHandshakeError) as forbidden:
            await open_attach(api, "default", "mcp-0", LOG)
        assert forbidden.value.status == 403


def attach_events(logs: Sequence[Mapping[str, Any]]) -> list[str]:
    """What the attach loop of pod mcp-0 and its supervisor logged, in order."""
    return [
        e["event"]
        for e in logs
        if e.get("task") == "attach mcp-0"
        or (e.get("backend") == "mcp-0" and "attach" in e["event"])
    ]


async def test_an_attach_loop_that_dies_is_restarted_and_a_stream_that_ends_is_reattached(
    kube_cluster: KubeCluster, kube_namespace: str
) -> None:
    """The attach loop runs under the directory's supervisor: an unexpected failure (here a
    bug in the attacher) is logged and the loop restarted; an attach the API refuses is
    retried with backoff by the loop itself; a stream that ends is attached again."""
    async with (
        fake_kubelet(
            (sys.executable, "-m", "proxyrunner.demo"),
            identity="mcp-0",
            token=kube_cluster.proxy_token,
        ) as kubelet,
        proxy_api_client(kube_cluster) as api,
    ):
        real = pod_attacher(api, kube_namespace, get_logger(), {"mcp-0": kubelet.base})
        failures: list[Exception] = [
            RuntimeError("a bug in the attacher"),
            aiohttp.ClientConnectionError("attach refused"),
        ]

        async def attach(pod: str) -> MessageChannel:
            if failures:
                raise failures.pop(0)
            return await real(pod)

        config = backend_config(kube_namespace, transport="stdio", backend_replicas=0)
        with capture_logs() as logs:
            directory = KubernetesBackendDirectory(
                config, api, Metrics(), get_logger(), kube_namespace, attach=attach
            )
            try:
                await directory.start()
                create_pod(kube_cluster, kube_namespace, "mcp-0", "10.0.0.22")

                def ready() -> bool:
                    return [b.name for b in directory.ready_backends()] == ["mcp-0"]

                await eventually(ready, 15, "the pod to be attached")
                backend = directory.get("mcp-0")
                assert backend is not None
                async with Client(str(backend.url), mode="legacy") as client:
                    assert (await whoami(client))["id"] == "mcp-0"

                await kubelet.streams[0].close()  # the kubelet ends the stream
                await eventually(
                    lambda: attach_events(logs).count("attached to the backend pod") == 2,
                    15,
                    "the second attach",
                )
                await eventually(ready, 15, "the pod to be ready again")
                async with Client(str(backend.url), mode="legacy") as client:
                    assert (await whoami(client))["id"] == "mcp-0"

                kube_cluster.request("DELETE", f"/api/v1/namespaces/{kube_namespace}/pods/mcp-0")
                await eventually(lambda: directory.get("mcp-0") is None, 15, "the pod gone")
                root = backend.url.with_path("/")
                await eventually(lambda: http_status(str(root)) is None, 15, "the bridge closed")
            finally:
                await directory.close()
    assert attach_events(logs) == [
        "background task failed; restarting",
        "cannot attach to the backend pod; retrying",
        "attached to the backend pod",
        "attach stream to the backend pod ended",
        "attached to the backend pod",
    ]
