"""The pure parts of the pod directory: a pod's URL from its address, its readiness."""

from __future__ import annotations

from typing import Any

import pytest

from proxyrunner.kube.directory import pod_ip, pod_ready, pod_url_resolver


@pytest.mark.parametrize(
    ("ip", "url", "host"),
    [
        ("10.244.1.7", "http://10.244.1.7:8080/mcp", "10.244.1.7"),
        ("fd00::1", "http://[fd00::1]:8080/mcp", "fd00::1"),
        ("2001:db8:0:0:0:0:0:7", "http://[2001:db8::7]:8080/mcp", "2001:db8::7"),
    ],
    ids=["ipv4", "ipv6", "ipv6-long-form"],
)
def test_a_pod_url_is_its_ip_and_target_port_with_ipv6_bracketed(
    ip: str, url: str, host: str
) -> None:
    resolved = pod_url_resolver("streamable-http")("mcp-0", ip, 8080)
    assert str(resolved) == url
    assert resolved.host == host  # what a socket connects to: no brackets
    assert resolved.port == 8080


def test_an_sse_pod_is_reached_at_its_sse_path() -> None:
    resolved = pod_url_resolver("sse")("mcp-0", "fd00::1", 9000)
    assert str(resolved) == "http://[fd00::1]:9000/sse"


def test_the_address_map_overrides_only_the_pods_it_names() -> None:
    resolve = pod_url_resolver("streamable-http", {"mcp-0": "http://127.0.0.1:7000/mcp"})
    assert str(resolve("mcp-0", "10.0.0.1", 8080)) == "http://127.0.0.1:7000/mcp"
    assert str(resolve("mcp-1", "10.0.0.2", 8080)) == "http://10.0.0.2:8080/mcp"


def pod(ip: str | None = "10.0.0.1", ready: str = "True", **metadata: Any) -> dict[str, Any]:
    status: dict[str, Any] = {"conditions": [{"type": "Ready", "status": ready}]}
    if ip is not None:
        status["podIP"] = ip
    return {"metadata": {"name": "mcp-0", **metadata}, "status": status}


@pytest.mark.parametrize(
    ("candidate", "ready"),
    [
        (pod(), True),
        (pod(ip="fd00::1"), True),
        (pod(ready="False"), False),
        (pod(ip=None), False),  # scheduled, no address yet
        (pod(deletionTimestamp="2026-01-01T00:00:00Z"), False),  # terminating
        ({"metadata": {"name": "mcp-0"}}, False),  # no status at all
    ],
    ids=["ready", "ready-ipv6", "not-ready", "no-ip", "terminating", "no-status"],
)
def test_a_pod_is_ready_with_an_address_a_ready_condition_and_no_deletion(
    candidate: dict[str, Any], ready: bool
) -> None:
    assert pod_ready(candidate) is ready


def test_the_primary_pod_ip_is_the_address_used() -> None:
    dual_stack = pod(ip="fd00::1")
    dual_stack["status"]["podIPs"] = [{"ip": "fd00::1"}, {"ip": "10.0.0.1"}]
    assert pod_ip(dual_stack) == "fd00::1"
