"""Real ``proxyrunner run`` processes reading the RunConfig the operator rendered, as the
proxy Deployment's pods would: the rollout overlap of seed 004 (an old pod and a new pod
both applying the backend StatefulSet), and a ``backendReplicas`` the MCPServer dropped
after a ``kubectl scale``. (No kubelet: the processes run here, as the proxy identity.)"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from proxyrunner.operator.children import RUNCONFIG_KEY
from tests.kube import helpers
from tests.kube.helpers import KubeCluster
from tests.kube.operator_helpers import apply_server, install_crd, observed, read, running_operator
from tests.procs import Proc, eventually, free_port

pytestmark = [pytest.mark.kube, pytest.mark.timeout(150)]

SETTLE = 30.0
APPLIED = "StatefulSet applied"
SKIPPED = "skipping StatefulSet apply: a newer MCPServer generation is applied"
OLD_IMAGE = "ghcr.io/example/roll:1"
NEW_IMAGE = "ghcr.io/example/roll:2"


@pytest.fixture
def crd_namespace(kube_cluster: KubeCluster, kube_namespace: str) -> str:
    install_crd(kube_cluster)
    return kube_namespace


@pytest.fixture
def proxies() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for proc in started:
        proc.stop()


def start_proxy(
    cluster: KubeCluster, tmp: Path, started: list[Proc], namespace: str, configmap: str
) -> Proc:
    """``proxyrunner run --configmap`` as a proxy pod runs it, on a port of its own."""
    proc = Proc(
        [
            sys.executable, "-m", "proxyrunner", "run", "--configmap", f"{namespace}/{configmap}",
            "--host", "127.0.0.1", "--port", str(free_port()), "--drain-delay", "0s",
            "--log-format", "json", "--log-level", "debug",
        ],
        tmp / f"{configmap}-{len(started)}.log",
        {"KUBECONFIG": str(cluster.proxy_kubeconfig), "PYTHONPATH": str(helpers.REPO_ROOT)},
    )  # fmt: skip
    started.append(proc)
    return proc


def apply_events(proc: Proc) -> list[dict[str, Any]]:
    """The proxy's StatefulSet apply decisions so far, in order."""
    return [e for e in proc.log_events() if e.get("event") in (APPLIED, SKIPPED)]


async def decided(proc: Proc, count: int, what: str) -> dict[str, Any]:
    def done() -> bool:
        assert proc.alive(), proc.output_tail()
        return len(apply_events(proc)) >= count

    await eventually(done, SETTLE, what, interval=0.1)
    return apply_events(proc)[count - 1]


def copy_configmap(cluster: KubeCluster, namespace: str, source: str, target: str) -> None:
    """Keep a rendered RunConfig: the old ReplicaSet's pods still run with it after the
    operator renders the next one."""
    found = read(cluster, namespace, "ConfigMap", source)
    assert found is not None
    cluster.request(
        "POST",
        f"/api/v1/namespaces/{namespace}/configmaps",
        {"metadata": {"name": target}, "data": {RUNCONFIG_KEY: found["data"][RUNCONFIG_KEY]}},
    )


@pytest.mark.parametrize("first", ["old", "new"], ids=["old-pod-first", "new-pod-first"])
async def test_in_a_rollout_overlap_the_newer_generation_wins_the_statefulset(
    kube_cluster: KubeCluster,
    crd_namespace: str,
    proxies: list[Proc],
    tmp_path: Path,
    first: str,
) -> None:
    ns = crd_namespace
    spec = {"image": OLD_IMAGE, "transport": "streamable-http", "backendReplicas": 1}
    apply_server(kube_cluster, ns, "roll", spec)
    # The Role a proxy of this server gets, reading either generation's RunConfig.
    kube_cluster.bind_proxy_role(
        ns, server="roll", configmaps=("roll-runconfig", "roll-runconfig-gen1")
    )
    async with running_operator(kube_cluster, ns):
        await eventually(lambda: observed(kube_cluster, ns, "roll", 1), SETTLE, "generation 1")
        copy_configmap(kube_cluster, ns, "roll-runconfig", "roll-runconfig-gen1")
        apply_server(kube_cluster, ns, "roll", {**spec, "image": NEW_IMAGE})
        await eventually(lambda: observed(kube_cluster, ns, "roll", 2), SETTLE, "generation 2")

        configmaps = {"old": "roll-runconfig-gen1", "new": "roll-runconfig"}
        second = "new" if first == "old" else "old"
        procs = {
            first: start_proxy(kube_cluster, tmp_path, proxies, ns, configmaps[first]),
        }
        first_decision = await decided(procs[first], 1, f"the {first} proxy's apply")
        procs[second] = start_proxy(kube_cluster, tmp_path, proxies, ns, configmaps[second])
        second_decision = await decided(procs[second], 1, f"the {second} proxy's apply")

        # Whoever came first applied; the old one, coming second, stood back.
        assert first_decision["event"] == APPLIED
        assert second_decision["event"] == (APPLIED if second == "new" else SKIPPED)
        sts = helpers.read_sts(kube_cluster, ns, "roll")
        assert helpers.annotation(sts) == "2"
        assert helpers.image(sts) == NEW_IMAGE

        # The old pod restarting while the new one runs (a crash loop, a node drain) is a
        # stale writer arriving last: it writes nothing.
        # (metadata.generation, not resourceVersion: the operator's adoption of the
        # StatefulSet, an owner reference, may land at any moment and is no spec change.)
        written = sts["metadata"]["generation"]
        restarted = start_proxy(kube_cluster, tmp_path, proxies, ns, configmaps["old"])
        assert (await decided(restarted, 1, "the restarted old proxy's apply"))["event"] == SKIPPED
        after = helpers.read_sts(kube_cluster, ns, "roll")
        assert after["metadata"]["generation"] == written
        assert helpers.annotation(after) == "2"
        assert helpers.image(after) == NEW_IMAGE


async def test_backend_replicas_dropped_from_the_mcpserver_after_a_scale_keeps_the_scaled_count(
    kube_cluster: KubeCluster, crd_namespace: str, proxies: list[Proc], tmp_path: Path
) -> None:
    ns = crd_namespace
    spec: dict[str, Any] = {"image": OLD_IMAGE, "transport": "sse", "backendReplicas": 3}
    apply_server(kube_cluster, ns, "scaled", spec)
    kube_cluster.bind_proxy_role(ns, server="scaled", configmaps=("scaled-runconfig",))
    async with running_operator(kube_cluster, ns):
        await eventually(lambda: observed(kube_cluster, ns, "scaled", 1), SETTLE, "generation 1")
        first = start_proxy(kube_cluster, tmp_path, proxies, ns, "scaled-runconfig")
        assert (await decided(first, 1, "the first proxy's apply"))["event"] == APPLIED
        assert helpers.read_sts(kube_cluster, ns, "scaled")["spec"]["replicas"] == 3

        # kubectl scale statefulset scaled --replicas=5
        kube_cluster.request(
            "PATCH",
            f"/apis/apps/v1/namespaces/{ns}/statefulsets/scaled/scale",
            {"spec": {"replicas": 5}},
            query={"fieldManager": "kubectl"},
            content_type="application/merge-patch+json",
        )
        del spec["backendReplicas"]
        apply_server(kube_cluster, ns, "scaled", spec)
        await eventually(lambda: observed(kube_cluster, ns, "scaled", 2), SETTLE, "generation 2")
        configmap = read(kube_cluster, ns, "ConfigMap", "scaled-runconfig")
        assert configmap is not None
        assert "backend_replicas" not in json.loads(configmap["data"][RUNCONFIG_KEY])

        # The rolled proxy pod starts with the new RunConfig and applies its StatefulSet.
        rolled = start_proxy(kube_cluster, tmp_path, proxies, ns, "scaled-runconfig")
        assert (await decided(rolled, 1, "the rolled proxy's apply"))["event"] == APPLIED
    sts = helpers.read_sts(kube_cluster, ns, "scaled")
    assert helpers.annotation(sts) == "2"  # the new RunConfig was applied...
    assert sts["spec"]["replicas"] == 5  # ...without taking the count back
