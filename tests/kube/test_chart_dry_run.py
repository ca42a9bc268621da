"""Every manifest the chart renders is accepted by a real kube-apiserver (server-side
dry-run apply), for every values file in charts/proxyrunner/ci."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chart import CI_VALUES, render
from tests.kube.helpers import KubeCluster

pytestmark = [pytest.mark.kube, pytest.mark.timeout(120)]

_PATHS = {
    "ConfigMap": "/api/v1/namespaces/{ns}/configmaps/{name}",
    "Service": "/api/v1/namespaces/{ns}/services/{name}",
    "ServiceAccount": "/api/v1/namespaces/{ns}/serviceaccounts/{name}",
    "Deployment": "/apis/apps/v1/namespaces/{ns}/deployments/{name}",
    "HorizontalPodAutoscaler": (
        "/apis/autoscaling/v2/namespaces/{ns}/horizontalpodautoscalers/{name}"
    ),
    "PodDisruptionBudget": "/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets/{name}",
    "NetworkPolicy": "/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies/{name}",
    "Role": "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles/{name}",
    "RoleBinding": "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings/{name}",
}


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.stem)
def test_every_rendered_manifest_passes_a_server_side_dry_run(
    values: Path, kube_cluster: KubeCluster, kube_namespace: str
) -> None:
    docs = render(values, kube_namespace)
    assert docs
    for doc in docs:
        path = _PATHS[doc["kind"]].format(ns=kube_namespace, name=doc["metadata"]["name"])
        kube_cluster.request(
            "PATCH",
            path,
            doc,
            query={"fieldManager": "helm-test", "force": "true", "dryRun": "All"},
            content_type="application/apply-patch+yaml",
        )
