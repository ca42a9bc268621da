"""Who owns the proxy Deployment's replica count: an HPA (acted on by the real
kube-controller-manager) when the MCPServer sets none, and the operator, which caps a
stdio server at 1 whatever ``kubectl scale`` did."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.kube.helpers import KubeCluster
from tests.kube.operator_helpers import (
    apply_server,
    condition,
    install_crd,
    observed,
    read,
    running_operator,
)
from tests.procs import eventually

pytestmark = [pytest.mark.kube, pytest.mark.timeout(150)]

SETTLE = 60.0


@pytest.fixture
def crd_namespace(kube_cluster: KubeCluster, kube_namespace: str) -> str:
    install_crd(kube_cluster)
    return kube_namespace


def _hpa(cluster: KubeCluster, namespace: str, name: str) -> dict[str, Any]:
    return cluster.request(
        "GET", f"/apis/autoscaling/v2/namespaces/{namespace}/horizontalpodautoscalers/{name}"
    )


def _hpa_condition(hpa: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for c in (hpa.get("status") or {}).get("conditions") or []:
        if c["type"] == kind:
            return dict(c)
    return None


def _replicas(cluster: KubeCluster, namespace: str, name: str) -> int | None:
    deployment = read(cluster, namespace, "Deployment", name)
    return None if deployment is None else deployment["spec"].get("replicas")


async def test_an_hpa_scales_the_proxy_deployment_and_the_operator_leaves_its_count(
    kube_cluster: KubeCluster, crd_namespace: str, kube_controller_manager: Path
) -> None:
    ns = crd_namespace
    spec: dict[str, Any] = {"image": "ghcr.io/example/auto:1", "transport": "sse"}
    apply_server(kube_cluster, ns, "auto", spec)
    async with running_operator(kube_cluster, ns) as reconciler:
        await eventually(lambda: observed(kube_cluster, ns, "auto", 1), SETTLE, "status")
        assert _replicas(kube_cluster, ns, "auto") == 1  # absent from our apply: defaulted

        kube_cluster.request(
            "POST",
            f"/apis/autoscaling/v2/namespaces/{ns}/horizontalpodautoscalers",
            {
                "apiVersion": "autoscaling/v2",
                "kind": "HorizontalPodAutoscaler",
                "metadata": {"name": "auto"},
                "spec": {
                    "scaleTargetRef": {
                        "apiVersion": "apps/v1",
                        "kind": "Deployment",
                        "name": "auto",
                    },
                    "minReplicas": 3,
                    "maxReplicas": 5,
                    "metrics": [
                        {
                            "type": "Resource",
                            "resource": {
                                "name": "cpu",
                                "target": {"type": "Utilization", "averageUtilization": 80},
                            },
                        }
                    ],
                },
            },
        )

        # The controller raises a count below minReplicas without asking for metrics (its
        # "Current number of replicas below Spec.MinReplicas" branch), then reports.
        def settled() -> bool:
            status = _hpa(kube_cluster, ns, "auto").get("status") or {}
            return (
                _replicas(kube_cluster, ns, "auto") == 3
                and status.get("desiredReplicas") == 3
                and status.get("currentReplicas") == 3
            )

        await eventually(settled, SETTLE, "the HPA's rescale to 3", interval=0.2)
        hpa = _hpa(kube_cluster, ns, "auto")
        able = _hpa_condition(hpa, "AbleToScale")
        assert able is not None
        assert able["status"] == "True"
        rescales = kube_cluster.request(
            "GET",
            f"/api/v1/namespaces/{ns}/events",
            query={"fieldSelector": "involvedObject.kind=HorizontalPodAutoscaler"},
        )["items"]
        assert any(
            e["reason"] == "SuccessfulRescale" and "below Spec.MinReplicas" in e["message"]
            for e in rescales
        ), rescales
        # There is no metrics API here: beyond the bounds, the controller cannot scale.
        active = _hpa_condition(hpa, "ScalingActive")
        assert active is not None
        assert active["status"] == "False"

        # The operator re-reconciling, unchanged and then with a spec change that rewrites
        # the pod template, leaves the count where the HPA put it.
        before = read(kube_cluster, ns, "Deployment", "auto")
        assert before is not None
        generation = before["metadata"]["generation"]
        await reconciler.reconcile(ns, "auto")
        after = read(kube_cluster, ns, "Deployment", "auto")
        assert after is not None
        assert after["metadata"]["generation"] == generation
        assert after["spec"]["replicas"] == 3

        apply_server(kube_cluster, ns, "auto", {**spec, "image": "ghcr.io/example/auto:2"})
        await eventually(lambda: observed(kube_cluster, ns, "auto", 2), SETTLE, "generation 2")
        rolled = read(kube_cluster, ns, "Deployment", "auto")
        assert rolled is not None
        assert rolled["metadata"]["generation"] > generation  # the operator did write
        assert rolled["spec"]["replicas"] == 3


async def test_a_stdio_proxy_scaled_above_one_is_put_back_to_one_with_its_warning(
    kube_cluster: KubeCluster, crd_namespace: str
) -> None:
    ns = crd_namespace
    apply_server(
        kube_cluster,
        ns,
        "tty",
        {"image": "ghcr.io/example/t:1", "transport": "stdio", "replicas": 3},
    )
    async with running_operator(kube_cluster, ns):
        await eventually(lambda: observed(kube_cluster, ns, "tty", 1), SETTLE, "status")
        assert _replicas(kube_cluster, ns, "tty") == 1
        # kubectl scale deployment tty --replicas=3
        kube_cluster.request(
            "PATCH",
            f"/apis/apps/v1/namespaces/{ns}/deployments/tty/scale",
            {"spec": {"replicas": 3}},
            query={"fieldManager": "kubectl"},
            content_type="application/merge-patch+json",
        )
        await eventually(
            lambda: _replicas(kube_cluster, ns, "tty") == 1, SETTLE, "the count put back to 1"
        )
    capped = condition(read(kube_cluster, ns, "MCPServer", "tty"), "StdioReplicaCapped")
    assert capped is not None
    assert (capped["status"], capped["reason"]) == ("True", "StdioTransportCapAt1")
