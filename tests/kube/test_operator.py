"""The MCPServer controller on a real kube-apiserver: what it applies, what it reports,
and that it writes nothing when nothing changed. (No kubelet: no pod ever runs.)"""

from __future__ import annotations

import json
from typing import Any

import pytest

from proxyrunner.config import parse_config
from proxyrunner.kube.rbac import proxy_role_rules
from tests.chart import by_kind, render
from tests.kube.helpers import KubeCluster
from tests.kube.operator_helpers import (
    PROXY_IMAGE,
    apply_server,
    child_names,
    child_versions,
    condition,
    events,
    install_crd,
    observed,
    read,
    running_operator,
    server_path,
)
from tests.procs import eventually

pytestmark = [pytest.mark.kube, pytest.mark.timeout(120)]

SETTLE = 30.0


@pytest.fixture
def crd_namespace(kube_cluster: KubeCluster, kube_namespace: str) -> str:
    install_crd(kube_cluster)
    return kube_namespace


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    return dict(deployment["spec"]["template"]["spec"]["containers"][0])


async def test_an_mcpserver_gets_every_child_owned_by_it_and_its_conditions(
    kube_cluster: KubeCluster, crd_namespace: str
) -> None:
    ns = crd_namespace
    created = apply_server(
        kube_cluster,
        ns,
        "fetch",
        {
            "image": "ghcr.io/example/fetch:1",
            "transport": "streamable-http",
            "mcpPort": 9000,
            "replicas": 2,
            "backendReplicas": 3,
            "sessionStorage": {
                "provider": "redis",
                "address": "redis.data:6379",
                "db": 2,
                "keyPrefix": "thv",
                "passwordRef": {"name": "redis-auth", "key": "password"},
            },
        },
    )
    async with running_operator(kube_cluster, ns):
        await eventually(lambda: observed(kube_cluster, ns, "fetch", 1), SETTLE, "status")

    names = child_names("fetch")
    for kind, name in names.items():
        child = read(kube_cluster, ns, kind, name)
        assert child is not None, f"{kind} {name}"
        (owner,) = child["metadata"]["ownerReferences"]
        assert owner["uid"] == created["metadata"]["uid"]
        assert owner["controller"] is True

    configmap = read(kube_cluster, ns, "ConfigMap", names["ConfigMap"])
    assert configmap is not None
    text = configmap["data"]["runconfig.json"]
    assert "password" not in text
    runconfig = json.loads(text)
    config, unknown = parse_config(runconfig)  # what the daemon reads, as it reads it
    assert unknown == ()
    assert runconfig["mcpserver_generation"] == 1
    assert runconfig["backend_replicas"] == 3
    assert runconfig["session_redis"] == {
        "address": "redis.data:6379",
        "db": 2,
        "key_prefix": "thv:",
    }
    assert config.backend.target_port == 9000
    assert config.backend.runtime == "kubernetes"

    deployment = read(kube_cluster, ns, "Deployment", "fetch")
    assert deployment is not None
    assert deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]
    assert pod["spec"]["terminationGracePeriodSeconds"] > config.drain.timeout
    assert pod["metadata"]["annotations"]["checksum/runconfig"]
    assert pod["spec"]["serviceAccountName"] == names["ServiceAccount"]
    container = _container(deployment)
    assert container["image"] == PROXY_IMAGE
    assert container["command"] == ["proxyrunner", "run"]
    env = {e["name"]: e for e in container["env"]}
    assert env["THV_SESSION_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "redis-auth",
        "key": "password",
    }

    role = read(kube_cluster, ns, "Role", names["Role"])
    assert role is not None
    assert role["rules"] == proxy_role_rules("fetch")  # named objects, no ConfigMap rule

    server = read(kube_cluster, ns, "MCPServer", "fetch")
    assert server is not None
    ready = condition(server, "Ready")
    assert ready is not None
    assert (ready["status"], ready["reason"]) == ("False", "DeploymentNotAvailable")
    sessions = condition(server, "SessionStorageWarning")
    assert sessions is not None
    assert sessions["status"] == "False"
    assert server["status"]["url"] == f"http://mcp-fetch-proxy.{ns}.svc.cluster.local:8080/mcp"
    assert any(e["reason"] == "Applied" for e in events(kube_cluster, ns, "fetch"))


async def test_reconciling_an_unchanged_mcpserver_writes_nothing(
    kube_cluster: KubeCluster, crd_namespace: str
) -> None:
    ns = crd_namespace
    apply_server(kube_cluster, ns, "same", {"image": "ghcr.io/example/s:1", "transport": "sse"})
    async with running_operator(kube_cluster, ns) as reconciler:
        await eventually(lambda: observed(kube_cluster, ns, "same", 1), SETTLE, "status")
        before = child_versions(kube_cluster, ns, "same")
        server_before = read(kube_cluster, ns, "MCPServer", "same")
        count = len(events(kube_cluster, ns, "same"))
        await reconciler.reconcile(ns, "same")
        await reconciler.reconcile(ns, "same")
        assert child_versions(kube_cluster, ns, "same") == before
        server_after = read(kube_cluster, ns, "MCPServer", "same")
        assert server_before is not None
        assert server_after is not None
        assert (
            server_after["metadata"]["resourceVersion"]
            == server_before["metadata"]["resourceVersion"]
        )
        assert len(events(kube_cluster, ns, "same")) == count


async def test_a_deleted_child_is_recreated_and_a_hand_edit_is_put_back_but_not_a_scale(
    kube_cluster: KubeCluster, crd_namespace: str
) -> None:
    ns = crd_namespace
    apply_server(kube_cluster, ns, "heal", {"image": "ghcr.io/example/h:1"})
    async with running_operator(kube_cluster, ns):
        await eventually(lambda: observed(kube_cluster, ns, "heal", 1), SETTLE, "status")
        deployment = read(kube_cluster, ns, "Deployment", "heal")
        assert deployment is not None
        assert "replicas" not in (deployment["metadata"]["managedFields"][0]["fieldsV1"]["f:spec"])

        cm = child_names("heal")["ConfigMap"]
        kube_cluster.request("DELETE", f"/api/v1/namespaces/{ns}/configmaps/{cm}")
        await eventually(
            lambda: read(kube_cluster, ns, "ConfigMap", cm) is not None, SETTLE, "ConfigMap back"
        )

        path = f"/apis/apps/v1/namespaces/{ns}/deployments/heal"
        kube_cluster.request(
            "PATCH",
            path,
            {
                "spec": {
                    "template": {
                        "spec": {"containers": [{"name": "proxyrunner", "image": "evil:1"}]}
                    }
                }
            },
            query={"fieldManager": "someone"},
            content_type="application/strategic-merge-patch+json",
        )
        kube_cluster.request(
            "PATCH",
            path + "/scale",
            {"spec": {"replicas": 4}},
            query={"fieldManager": "kubectl-scale"},
            content_type="application/merge-patch+json",
        )

        def restored() -> bool:
            got = read(kube_cluster, ns, "Deployment", "heal")
            return got is not None and _container(got)["image"] == PROXY_IMAGE

        await eventually(restored, SETTLE, "the image put back")
        got = read(kube_cluster, ns, "Deployment", "heal")
        assert got is not None
        assert got["spec"]["replicas"] == 4  # not ours: left as scaled


async def test_stdio_replicas_are_capped_at_one_with_a_warning_condition(
    kube_cluster: KubeCluster, crd_namespace: str
) -> None:
    ns = crd_namespace
    apply_server(
        kube_cluster,
        ns,
        "tty",
        {"image": "ghcr.io/example/t:1", "transport": "stdio", "replicas": 3, "backendReplicas": 3},
    )
    async with running_operator(kube_cluster, ns):
        await eventually(lambda: observed(kube_cluster, ns, "tty", 1), SETTLE, "status")
    deployment = read(kube_cluster, ns, "Deployment", "tty")
    assert deployment is not None
    assert deployment["spec"]["replicas"] == 1
    configmap = read(kube_cluster, ns, "ConfigMap", "tty-runconfig")
    assert configmap is not None
    assert json.loads(configmap["data"]["runconfig.json"])["backend_replicas"] == 1
    server = read(kube_cluster, ns, "MCPServer", "tty")
    capped = condition(server, "StdioReplicaCapped")
    assert capped is not None
    assert (capped["status"], capped["reason"]) == ("True", "StdioTransportCapAt1")
    # replicas 3 without Redis: sessions are not shared, which is said too.
    sessions = condition(server, "SessionStorageWarning")
    assert sessions is not None
    assert (sessions["status"], sessions["reason"]) == ("True", "SessionStorageMissingForReplicas")
    warnings = {e["reason"] for e in events(kube_cluster, ns, "tty") if e["type"] == "Warning"}
    assert {"StdioTransportCapAt1", "SessionStorageMissingForReplicas"} <= warnings


async def test_removing_replicas_from_the_spec_keeps_the_running_count(
    kube_cluster: KubeCluster, crd_namespace: str
) -> None:
    ns = crd_namespace
    spec: dict[str, Any] = {"image": "ghcr.io/example/r:1", "transport": "sse", "replicas": 3}
    apply_server(kube_cluster, ns, "keep", spec)
    async with running_operator(kube_cluster, ns):
        await eventually(lambda: observed(kube_cluster, ns, "keep", 1), SETTLE, "status")
        del spec["replicas"]
        apply_server(kube_cluster, ns, "keep", spec)
        await eventually(lambda: observed(kube_cluster, ns, "keep", 2), SETTLE, "generation 2")
    deployment = read(kube_cluster, ns, "Deployment", "keep")
    assert deployment is not None
    assert deployment["spec"]["replicas"] == 3


async def test_a_spec_the_daemon_would_refuse_is_reported_not_applied(
    kube_cluster: KubeCluster, crd_namespace: str
) -> None:
    ns = crd_namespace
    # The schema cannot know it: a Redis address without a port.
    apply_server(
        kube_cluster,
        ns,
        "bad",
        {"image": "x:1", "sessionStorage": {"provider": "redis", "address": "redis"}},
    )
    async with running_operator(kube_cluster, ns):
        await eventually(lambda: observed(kube_cluster, ns, "bad", 1), SETTLE, "status")
    server = read(kube_cluster, ns, "MCPServer", "bad")
    ready = condition(server, "Ready")
    assert ready is not None
    assert ready["reason"] == "InvalidSpec"
    assert "session_redis.address" in ready["message"]
    assert server is not None
    assert server["status"]["phase"] == "Failed"
    assert read(kube_cluster, ns, "Deployment", "bad") is None


def test_the_schema_rejects_what_toolhive_rejects(
    kube_cluster: KubeCluster, crd_namespace: str
) -> None:
    from tests.kube.helpers import KubeRequestError

    ns = crd_namespace
    for spec, word in (
        ({"transport": "stdio"}, "image"),
        ({"image": "x:1", "transport": "websocket"}, "transport"),
        ({"image": "x:1", "replicas": -1}, "replicas"),
        ({"image": "x:1", "sessionStorage": {"provider": "redis"}}, "address"),
    ):
        with pytest.raises(KubeRequestError) as failure:
            apply_server(kube_cluster, ns, "refused", spec)
        assert failure.value.status == 422
        assert word in failure.value.body
    with pytest.raises(KubeRequestError):
        kube_cluster.request("GET", server_path(ns, "refused"))


async def test_the_operator_works_with_only_the_rbac_the_chart_grants_it(
    kube_cluster: KubeCluster, crd_namespace: str
) -> None:
    ns = crd_namespace
    docs = render(
        None, ns, "operator.enabled=true", "server.enabled=false", f"operator.watchNamespace={ns}"
    )
    (role,) = [r for r in by_kind(docs, "Role") if not r["metadata"]["name"].endswith("-leader")]
    rbac = f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}"
    kube_cluster.apply(f"{rbac}/roles/{role['metadata']['name']}", role)
    user = "operator-under-test"
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": "operator", "namespace": ns},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": role["metadata"]["name"],
        },
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
    }
    kube_cluster.apply(f"{rbac}/rolebindings/operator", binding)
    apply_server(kube_cluster, ns, "least", {"image": "ghcr.io/example/l:1", "transport": "sse"})
    async with running_operator(kube_cluster, ns, as_user=user):
        # The RBAC authorizer sees the binding a moment later; the retries cover that.
        await eventually(lambda: observed(kube_cluster, ns, "least", 1), SETTLE, "status")
    child_versions(kube_cluster, ns, "least")  # every child is there
