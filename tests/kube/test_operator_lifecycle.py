"""The operator with real controllers behind it (kube-controller-manager: Deployments get
ReplicaSets, owner references are collected), ToolHive's own example, and leader
election between two candidates on one Lease."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from proxyrunner.config import parse_config
from proxyrunner.logging import get_logger
from proxyrunner.operator.children import FIELD_MANAGER
from proxyrunner.operator.leader import LeaderElector, LeaseSettings
from proxyrunner.operator.objects import Objects
from tests.kube.helpers import (
    REPO_ROOT,
    KubeCluster,
    KubeRequestError,
    admin_api_client,
    apply_as_proxy,
    set_ready,
)
from tests.kube.operator_helpers import (
    apply_server,
    child_names,
    condition,
    install_crd,
    observed,
    read,
    running_operator,
    server_path,
)
from tests.procs import Proc, eventually, wait_until

pytestmark = [pytest.mark.kube, pytest.mark.timeout(150)]

SETTLE = 60.0

# examples/operator/mcp-servers/mcpserver_fetch.yaml in stacklok/toolhive, as published
# (only the namespace differs: each test has its own).
TOOLHIVE_FETCH_SPEC = {
    "image": "ghcr.io/stackloklabs/gofetch/server",
    "transport": "streamable-http",
    "port": 8080,
    "targetPort": 8080,
    "permissionProfile": {"type": "builtin", "name": "network"},
    "resources": {
        "limits": {"cpu": "100m", "memory": "128Mi"},
        "requests": {"cpu": "50m", "memory": "64Mi"},
    },
}


@pytest.fixture
def crd_namespace(kube_cluster: KubeCluster, kube_namespace: str) -> str:
    install_crd(kube_cluster)
    return kube_namespace


def _replicasets(cluster: KubeCluster, namespace: str) -> list[dict[str, object]]:
    listed = cluster.request("GET", f"/apis/apps/v1/namespaces/{namespace}/replicasets")
    return list(listed.get("items") or [])


def _generation_of(cluster: KubeCluster, namespace: str, name: str) -> int | None:
    configmap = read(cluster, namespace, "ConfigMap", f"{name}-runconfig")
    if configmap is None:
        return None
    return int(json.loads(configmap["data"]["runconfig.json"])["mcpserver_generation"])


async def test_an_image_edit_raises_the_generation_and_rolls_a_new_replicaset(
    kube_cluster: KubeCluster, crd_namespace: str, kube_controller_manager: Path
) -> None:
    ns = crd_namespace
    spec = {"image": "ghcr.io/example/roll:1", "transport": "sse", "replicas": 1}
    apply_server(kube_cluster, ns, "roll", spec)
    async with running_operator(kube_cluster, ns):
        await eventually(lambda: observed(kube_cluster, ns, "roll", 1), SETTLE, "status")
        await eventually(lambda: len(_replicasets(kube_cluster, ns)) == 1, SETTLE, "first RS")
        assert _generation_of(kube_cluster, ns, "roll") == 1

        apply_server(kube_cluster, ns, "roll", {**spec, "image": "ghcr.io/example/roll:2"})
        await eventually(lambda: observed(kube_cluster, ns, "roll", 2), SETTLE, "generation 2")
        assert _generation_of(kube_cluster, ns, "roll") == 2
        # The RunConfig checksum on the pod template changed: the Deployment rolls.
        await eventually(lambda: len(_replicasets(kube_cluster, ns)) == 2, SETTLE, "second RS")


async def test_deleting_the_mcpserver_collects_every_child(
    kube_cluster: KubeCluster, crd_namespace: str, kube_controller_manager: Path
) -> None:
    ns = crd_namespace
    apply_server(kube_cluster, ns, "gone", {"image": "ghcr.io/example/g:1", "transport": "sse"})
    async with running_operator(kube_cluster, ns):
        await eventually(lambda: observed(kube_cluster, ns, "gone", 1), SETTLE, "status")
    kube_cluster.request("DELETE", server_path(ns, "gone"))

    def collected() -> bool:
        kinds = child_names("gone")
        left = [k for k, name in kinds.items() if read(kube_cluster, ns, k, name) is not None]
        return not left and not _replicasets(kube_cluster, ns)

    await eventually(collected, SETTLE, "every child garbage-collected", interval=0.5)


async def test_toolhives_fetch_example_applies_unchanged_and_is_reconciled(
    kube_cluster: KubeCluster, crd_namespace: str
) -> None:
    ns = crd_namespace
    apply_server(kube_cluster, ns, "fetch", TOOLHIVE_FETCH_SPEC)
    async with running_operator(kube_cluster, ns):
        await eventually(lambda: observed(kube_cluster, ns, "fetch", 1), SETTLE, "status")
    configmap = read(kube_cluster, ns, "ConfigMap", "fetch-runconfig")
    assert configmap is not None
    runconfig = json.loads(configmap["data"]["runconfig.json"])
    assert runconfig["target_port"] == 8080
    assert "backend_replicas" not in runconfig  # the spec has none: an HPA may own it
    patch = json.loads(runconfig["k8s_pod_template_patch"])
    assert patch["spec"]["containers"][0]["resources"]["limits"]["memory"] == "128Mi"
    ignored = condition(read(kube_cluster, ns, "MCPServer", "fetch"), "UnsupportedFieldsIgnored")
    assert ignored is not None
    assert "permissionProfile" in ignored["message"]


async def test_two_candidates_never_lead_at_once_and_a_release_hands_over_at_once(
    kube_cluster: KubeCluster, kube_namespace: str
) -> None:
    leading: list[str] = []
    overlap: list[tuple[str, ...]] = []
    stop = {"a": asyncio.Event(), "b": asyncio.Event()}
    became = {"a": asyncio.Event(), "b": asyncio.Event()}

    def lead_as(who: str):  # type: ignore[no-untyped-def]
        async def lead() -> None:
            leading.append(who)
            if len(leading) > 1:
                overlap.append(tuple(leading))
            became[who].set()
            try:
                await stop[who].wait()
            finally:
                leading.remove(who)

        return lead

    async with admin_api_client(kube_cluster) as api:
        objects = Objects(api, FIELD_MANAGER)

        def elector(who: str) -> LeaderElector:
            settings = LeaseSettings(
                namespace=kube_namespace,
                name="operator",
                identity=who,
                lease_duration=6.0,
                renew_deadline=4.0,
                retry_period=0.3,
            )
            return LeaderElector(objects, settings, get_logger())

        a = asyncio.ensure_future(elector("a").run(lead_as("a")))
        await asyncio.wait_for(became["a"].wait(), 10)
        b = asyncio.ensure_future(elector("b").run(lead_as("b")))
        await asyncio.sleep(1.5)  # b gets several tries at a Lease that is held
        assert leading == ["a"]
        assert not became["b"].is_set()

        started = asyncio.get_running_loop().time()
        stop["a"].set()  # a returns: it releases the Lease
        await a
        await asyncio.wait_for(became["b"].wait(), 10)
        # Well before the 6 s expiry: the release handed it over.
        assert asyncio.get_running_loop().time() - started < 3.0
        stop["b"].set()
        await b
    assert overlap == []
    lease = kube_cluster.request(
        "GET", f"/apis/coordination.k8s.io/v1/namespaces/{kube_namespace}/leases/operator"
    )
    assert lease["spec"]["leaseTransitions"] >= 1
    assert lease["spec"]["holderIdentity"] == ""


def _lease_holder(cluster: KubeCluster, namespace: str) -> str | None:
    try:
        lease = cluster.request(
            "GET", f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/ops"
        )
    except KubeRequestError:
        return None
    return str(lease["spec"].get("holderIdentity") or "")


def test_the_operator_command_leads_reconciles_and_exits_0_on_sigterm_releasing_its_lease(
    kube_cluster: KubeCluster, crd_namespace: str, tmp_path: Path
) -> None:
    ns = crd_namespace
    apply_server(kube_cluster, ns, "cli", {"image": "ghcr.io/example/c:1", "transport": "sse"})
    proc = Proc(
        [
            sys.executable, "-m", "proxyrunner", "operator",
            f"--kubeconfig={kube_cluster.admin_kubeconfig}", "--proxy-image=example.invalid/p:1",
            f"--namespace={ns}", f"--lease-namespace={ns}", "--lease-name=ops",
            "--identity=cli-test", "--log-format=json",
        ],
        tmp_path / "operator.log",
        {"PYTHONPATH": str(REPO_ROOT)},
    )  # fmt: skip
    try:
        wait_until(lambda: _lease_holder(kube_cluster, ns) == "cli-test", 30, "the Lease taken")
        wait_until(lambda: observed(kube_cluster, ns, "cli", 1), 30, "the MCPServer reconciled")
        proc.signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0, proc.output_tail()
    finally:
        proc.stop()
    assert _lease_holder(kube_cluster, ns) == ""  # released: a successor need not wait


def test_the_operator_command_without_a_proxy_image_exits_2() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "proxyrunner", "operator"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "PROXYRUNNER_PROXY_IMAGE": ""},
        check=False,
    )
    assert done.returncode == 2
    assert "--proxy-image" in done.stderr


def _pods(cluster: KubeCluster, namespace: str, prefix: str) -> list[str]:
    listed = cluster.request("GET", f"/api/v1/namespaces/{namespace}/pods")
    return [
        p["metadata"]["name"]
        for p in listed.get("items") or []
        if p["metadata"]["name"].startswith(prefix)
    ]


async def test_ready_follows_the_proxy_deployment_then_the_backend_statefulset(
    kube_cluster: KubeCluster, crd_namespace: str, kube_controller_manager: Path
) -> None:
    ns = crd_namespace
    spec = {"image": "ghcr.io/example/up:1", "transport": "sse", "replicas": 1}
    apply_server(kube_cluster, ns, "up", {**spec, "backendReplicas": 1})
    kube_cluster.bind_proxy_role(ns, server="up")

    def ready_reason() -> str | None:
        ready = condition(read(kube_cluster, ns, "MCPServer", "up"), "Ready")
        return None if ready is None else f"{ready['status']}/{ready['reason']}"

    async with running_operator(kube_cluster, ns):
        await eventually(lambda: observed(kube_cluster, ns, "up", 1), SETTLE, "status")
        assert ready_reason() == "False/DeploymentNotAvailable"
        # No kubelet: the test reports the proxy pod the ReplicaSet made as running.
        await eventually(lambda: len(_pods(kube_cluster, ns, "up-")) == 1, SETTLE, "proxy pod")
        (proxy_pod,) = _pods(kube_cluster, ns, "up-")
        set_ready(kube_cluster, ns, proxy_pod, True, "10.0.0.10")
        await eventually(
            lambda: ready_reason() == "False/BackendNotApplied", SETTLE, "deployment available"
        )
        # What the proxy does at startup: apply the backend StatefulSet from its RunConfig.
        configmap = read(kube_cluster, ns, "ConfigMap", "up-runconfig")
        assert configmap is not None
        config, _ = parse_config(json.loads(configmap["data"]["runconfig.json"]))
        await apply_as_proxy(kube_cluster, config)
        await eventually(lambda: ready_reason() == "False/BackendNotReady", SETTLE, "backend")
        # What the StatefulSet controller reports once its pod is ready (the test cluster
        # runs no statefulset controller: backend pods are the tests' to make).
        kube_cluster.request(
            "PATCH",
            f"/apis/apps/v1/namespaces/{ns}/statefulsets/up/status",
            {"status": {"replicas": 1, "readyReplicas": 1, "availableReplicas": 1}},
            content_type="application/merge-patch+json",
        )
        await eventually(lambda: ready_reason() == "True/Ready", SETTLE, "Ready")
    server = read(kube_cluster, ns, "MCPServer", "up")
    assert server is not None
    assert server["status"]["phase"] == "Running"  # the CRD's phase for a serving server
