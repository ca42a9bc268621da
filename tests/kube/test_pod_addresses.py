"""The production path to a backend pod: its own address from ``status.podIP`` and the
target port, with no PROXYRUNNER_POD_ADDRESS_MAP (which every other Kubernetes test uses).

kube-apiserver accepts loopback pod addresses (unlike EndpointSlice endpoints), IPv4 and
IPv6 alike, so a pod here can carry the address a real demo MCP server listens on:
127.0.0.2 (not the proxy's own 127.0.0.1) and ::1. The pod's status is written as a
kubelet writes it, through the status subresource.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from yarl import URL

from tests.conftest import StartProxy
from tests.helpers import tool_text, whoami
from tests.kube.helpers import KubeCluster, create_pod
from tests.procs import DemoBackend, eventually, http_status, wait_until

pytestmark = [pytest.mark.kube, pytest.mark.timeout(120)]


def loopback_available(host: str) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family) as sock:
            sock.bind((host, 0))
    except OSError:
        return False
    return True


class BackendAt(DemoBackend):
    """The demo MCP server listening on ``host`` (a pod's address), not 127.0.0.1."""

    def __init__(self, tmp: Path, identity: str, host: str) -> None:
        super().__init__(tmp, identity, MCP_HOST=host)
        self.root = str(URL.build(scheme="http", host=host, port=self.port, path="/"))

    def wait_ready(self, timeout: float = 30.0) -> BackendAt:
        def answers() -> bool:
            if not self.alive():
                raise AssertionError(f"backend {self.identity} exited:\n{self.output()}")
            return http_status(self.root) is not None

        wait_until(answers, timeout, f"backend {self.identity} to answer at {self.root}")
        return self


@pytest.mark.parametrize("pod_ip", ["127.0.0.2", "::1"], ids=["ipv4", "ipv6"])
async def test_a_session_reaches_the_pod_at_its_own_ip_and_target_port(
    kube_cluster: KubeCluster,
    kube_namespace: str,
    start_proxy: StartProxy,
    tmp_path: Path,
    pod_ip: str,
) -> None:
    if not loopback_available(pod_ip):
        pytest.skip(f"this machine has no loopback address {pod_ip}")
    backend = BackendAt(tmp_path, f"pod-at-{pod_ip}", pod_ip)
    try:
        backend.wait_ready()
        config: dict[str, Any] = {
            "name": "mcp",
            "runtime": "kubernetes",
            "image": "example.invalid/mcp:1",
            "namespace": kube_namespace,
            "target_port": backend.port,
            "backend_replicas": 0,  # no kubelet: the test makes the pod itself
        }
        proxy = start_proxy(
            config,
            # Empty: no address map, whatever the environment of the test run holds.
            env={
                "KUBECONFIG": str(kube_cluster.proxy_kubeconfig),
                "PROXYRUNNER_POD_ADDRESS_MAP": "",
            },
            wait=False,
        )
        await eventually(lambda: http_status(f"{proxy.base}/health") == 200, 30, "the proxy")
        create_pod(kube_cluster, kube_namespace, "mcp-0", pod_ip)
        await eventually(lambda: http_status(f"{proxy.base}/readyz") == 200, 10, "pod mcp-0")
        async with Client(proxy.url, mode="legacy") as client:
            assert (await whoami(client))["id"] == backend.identity
            echoed = await client.call_tool("echo", {"text": f"via {pod_ip}"})
            assert tool_text(echoed) == f"via {pod_ip}"
    finally:
        backend.kill()
