"""The generation-gated apply of the backend StatefulSet, on a real kube-apiserver, run
as the proxy's own Role-limited identity."""

from __future__ import annotations

import asyncio
import random
from dataclasses import replace

import pytest
from kubernetes_asyncio import client

from proxyrunner.config import RunConfig
from proxyrunner.errors import ConfigError, StartupError
from proxyrunner.kube.apply import WorkloadApplier
from proxyrunner.kube.configmap import load_runconfig_from_configmap
from proxyrunner.kube.errors import KubeForbidden
from proxyrunner.kube.workload import RESTARTED_AT_ANNOTATION
from proxyrunner.logging import get_logger
from proxyrunner.metrics import Metrics
from tests.kube.helpers import (
    KubeCluster,
    KubeRequestError,
    admin_api_client,
    annotation,
    apply_as_proxy,
    backend_config,
    image,
    proxy_api_client,
    read_sts,
    stamp,
)

pytestmark = [pytest.mark.kube, pytest.mark.timeout(120)]


async def test_absent_statefulset_is_created_stamped_with_our_generation(
    kube_cluster: KubeCluster, kube_namespace: str
) -> None:
    result = await apply_as_proxy(
        kube_cluster, backend_config(kube_namespace, mcpserver_generation=3)
    )
    assert result == "applied"
    sts = read_sts(kube_cluster, kube_namespace)
    assert annotation(sts) == "3"
    assert sts["spec"]["serviceName"] == "mcp-mcp-headless"
    services = kube_cluster.request("GET", f"/api/v1/namespaces/{kube_namespace}/services")
    by_name = {s["metadata"]["name"]: s["spec"] for s in services["items"]}
    assert by_name["mcp-mcp-headless"]["clusterIP"] == "None"
    assert by_name["mcp-mcp"]["sessionAffinity"] == "None"


@pytest.mark.parametrize(
    ("existing", "ours", "applied", "final"),
    [
        (None, 3, True, "3"),  # missing annotation: apply and stamp
        ("2", 3, True, "3"),  # older: apply
        ("3", 3, True, "3"),  # equal: apply (idempotent)
        ("5", 3, False, "5"),  # newer: skip
        ("abc", 3, True, "3"),  # unparsable: apply and stamp
    ],
)
async def test_generation_gate_cases(
    kube_cluster: KubeCluster,
    kube_namespace: str,
    existing: str | None,
    ours: int,
    applied: bool,
    final: str,
) -> None:
    await apply_as_proxy(
        kube_cluster, backend_config(kube_namespace, image="example.invalid/mcp:old")
    )
    if existing is not None:
        stamp(kube_cluster, kube_namespace, existing)
    config = backend_config(
        kube_namespace, image="example.invalid/mcp:new", mcpserver_generation=ours
    )
    result = await apply_as_proxy(kube_cluster, config)
    sts = read_sts(kube_cluster, kube_namespace)
    assert result == ("applied" if applied else "skipped")
    assert annotation(sts) == final
    assert image(sts) == ("example.invalid/mcp:new" if applied else "example.invalid/mcp:old")


async def test_generation_zero_applies_without_gate_or_stamp(
    kube_cluster: KubeCluster, kube_namespace: str
) -> None:
    await apply_as_proxy(kube_cluster, backend_config(kube_namespace))
    stamp(kube_cluster, kube_namespace, "9")
    config = backend_config(kube_namespace, image="example.invalid/mcp:new")
    assert await apply_as_proxy(kube_cluster, config) == "applied"
    assert image(read_sts(kube_cluster, kube_namespace)) == "example.invalid/mcp:new"


async def test_stale_generation_never_rolls_the_backend_back_in_a_race(
    kube_cluster: KubeCluster, kube_namespace: str
) -> None:
    for round_ in range(8):
        name = f"race{round_}"
        kube_cluster.bind_proxy_role(kube_namespace, server=name)  # the Role names its objects
        old = backend_config(
            kube_namespace, name=name, image="example.invalid/mcp:4", mcpserver_generation=4
        )
        new = replace(
            old,
            backend=replace(old.backend, image="example.invalid/mcp:5"),
            mcpserver_generation=5,
        )

        async def applier(config: RunConfig, times: int) -> None:
            for _ in range(times):
                await asyncio.sleep(random.uniform(0, 0.02))
                await apply_as_proxy(kube_cluster, config)

        contenders = [applier(old, 3), applier(new, 3)]
        random.shuffle(contenders)
        await asyncio.gather(*contenders)
        sts = read_sts(kube_cluster, kube_namespace, name)
        assert annotation(sts) == "5", f"round {round_}"
        assert image(sts) == "example.invalid/mcp:5", f"round {round_}"


async def test_replicas_set_absent_and_zero(kube_cluster: KubeCluster, kube_namespace: str) -> None:
    await apply_as_proxy(kube_cluster, backend_config(kube_namespace, backend_replicas=3))
    assert read_sts(kube_cluster, kube_namespace)["spec"]["replicas"] == 3
    # (a) absent, and nobody else touched it: the count stays, not the default 1.
    await apply_as_proxy(kube_cluster, backend_config(kube_namespace))
    assert read_sts(kube_cluster, kube_namespace)["spec"]["replicas"] == 3
    await apply_as_proxy(kube_cluster, backend_config(kube_namespace, backend_replicas=0))
    assert read_sts(kube_cluster, kube_namespace)["spec"]["replicas"] == 0


async def test_replicas_scaled_by_another_manager_survive_an_apply_without_the_field(
    kube_cluster: KubeCluster, kube_namespace: str
) -> None:
    await apply_as_proxy(kube_cluster, backend_config(kube_namespace, backend_replicas=3))
    async with admin_api_client(kube_cluster) as api:  # an HPA or kubectl scale
        await client.AppsV1Api(api).patch_namespaced_stateful_set_scale(
            "mcp", kube_namespace, {"spec": {"replicas": 5}}, field_manager="hpa"
        )
    await apply_as_proxy(kube_cluster, backend_config(kube_namespace))
    assert read_sts(kube_cluster, kube_namespace)["spec"]["replicas"] == 5
    # A later apply with a number takes the count back.
    await apply_as_proxy(kube_cluster, backend_config(kube_namespace, backend_replicas=2))
    assert read_sts(kube_cluster, kube_namespace)["spec"]["replicas"] == 2


async def test_reapplying_the_same_config_is_a_no_op_and_keeps_a_restart_annotation(
    kube_cluster: KubeCluster, kube_namespace: str
) -> None:
    config = backend_config(
        kube_namespace,
        mcpserver_generation=2,
        env_vars={"B": "2", "A": "1"},
        backend_replicas=1,
    )
    await apply_as_proxy(kube_cluster, config)
    kube_cluster.request(
        "PATCH",
        f"/apis/apps/v1/namespaces/{kube_namespace}/statefulsets/mcp",
        {"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT_ANNOTATION: "t1"}}}}},
        query={"fieldManager": "kubectl-rollout"},
        content_type="application/merge-patch+json",
    )
    before = read_sts(kube_cluster, kube_namespace)["metadata"]["generation"]
    await apply_as_proxy(kube_cluster, config)
    after = read_sts(kube_cluster, kube_namespace)
    assert after["metadata"]["generation"] == before
    assert after["spec"]["template"]["metadata"]["annotations"][RESTARTED_AT_ANNOTATION] == "t1"
    env = after["spec"]["template"]["spec"]["containers"][0]["env"]
    assert [e["name"] for e in env] == sorted(e["name"] for e in env)


async def test_runconfig_loads_from_a_configmap_and_errors_name_the_problem(
    kube_cluster: KubeCluster, kube_namespace: str
) -> None:
    """The Role lets the proxy read only ConfigMap mcp-runconfig: any other is forbidden."""
    base = f"/api/v1/namespaces/{kube_namespace}/configmaps"
    async with proxy_api_client(kube_cluster) as api:
        with pytest.raises(ConfigError, match="not found"):
            await load_runconfig_from_configmap(api, kube_namespace, "mcp-runconfig")
        kube_cluster.request("POST", base, {"metadata": {"name": "mcp-runconfig"}, "data": {}})
        with pytest.raises(ConfigError, match=r"runconfig\.json"):
            await load_runconfig_from_configmap(api, kube_namespace, "mcp-runconfig")
        kube_cluster.request(
            "PUT",
            f"{base}/mcp-runconfig",
            {
                "metadata": {"name": "mcp-runconfig"},
                "data": {"runconfig.json": '{"name": "demo", "remote_url": "http://h:1/mcp"}'},
            },
        )
        loaded = await load_runconfig_from_configmap(api, kube_namespace, "mcp-runconfig")
        assert loaded.config.name == "demo"
        kube_cluster.request("POST", base, {"metadata": {"name": "other"}, "data": {"x": "y"}})
        with pytest.raises(StartupError, match="get"):
            await load_runconfig_from_configmap(api, kube_namespace, "other")
        with pytest.raises(StartupError, match="get"):
            await load_runconfig_from_configmap(api, "default", "anything")


async def test_the_proxy_identity_cannot_do_more_than_its_job(
    kube_cluster: KubeCluster, kube_namespace: str
) -> None:
    await apply_as_proxy(kube_cluster, backend_config(kube_namespace))
    async with proxy_api_client(kube_cluster) as api:
        applier = WorkloadApplier(
            api, backend_config("default"), "default", Metrics(), get_logger()
        )
        with pytest.raises(KubeForbidden, match="statefulsets"):
            await applier.apply_statefulset()
        apps = client.AppsV1Api(api)
        with pytest.raises(client.exceptions.ApiException) as denied:
            await apps.delete_namespaced_stateful_set("mcp", kube_namespace)
        assert denied.value.status == 403


def test_the_proxy_role_reaches_only_the_objects_named_after_its_server(
    kube_cluster: KubeCluster, kube_namespace: str
) -> None:
    """config/rbac/role.yaml (server "mcp") on the real API server: what the proxy does is
    allowed (404: allowed, not there yet), the same on any other name is forbidden."""

    def status(method: str, path: str, body: dict[str, object] | None = None, **query: str) -> int:
        try:
            kube_cluster.request(
                method,
                f"/api{path}" if path.startswith("/v1/") else f"/apis{path}",
                body,
                token=kube_cluster.proxy_token,
                query=query or None,
                content_type="application/apply-patch+yaml" if method == "PATCH" else "",
            )
        except KubeRequestError as exc:
            return exc.status
        return 200

    ns = kube_namespace
    sts = f"/apps/v1/namespaces/{ns}/statefulsets"
    assert status("GET", f"{sts}/mcp") == 404
    assert status("GET", f"{sts}/other") == 403
    assert status("GET", sts, fieldSelector="metadata.name=mcp") == 200
    assert status("GET", sts, watch="true", fieldSelector="metadata.name=mcp",
                  timeoutSeconds="1") == 200  # fmt: skip
    assert status("GET", sts) == 403  # every StatefulSet of the namespace
    service = {"apiVersion": "v1", "kind": "Service", "spec": {"ports": [{"port": 80}]}}
    for name, allowed in [("mcp-mcp", True), ("mcp-mcp-headless", True), ("other", False)]:
        body = {**service, "metadata": {"name": name}}
        path = f"/v1/namespaces/{ns}/services/{name}"
        assert status("PATCH", path, body, fieldManager="t") == (200 if allowed else 403), name
    assert status("GET", f"/v1/namespaces/{ns}/services/mcp-mcp") == 403  # never read
    assert status("GET", f"/v1/namespaces/{ns}/pods") == 200
    assert status("GET", f"/v1/namespaces/{ns}/pods/mcp-0") == 403  # only listed
    assert status("GET", f"/discovery.k8s.io/v1/namespaces/{ns}/endpointslices") == 403


async def test_env_secrets_reach_the_api_server_as_secret_key_refs(
    kube_cluster: KubeCluster, kube_namespace: str
) -> None:
    refs = {"API_TOKEN": {"name": "fetch-api", "key": "token"}}
    await apply_as_proxy(kube_cluster, backend_config(kube_namespace, env_secrets=refs))
    container = read_sts(kube_cluster, kube_namespace)["spec"]["template"]["spec"]["containers"][0]
    (token,) = [e for e in container["env"] if e["name"] == "API_TOKEN"]
    assert token == {"name": "API_TOKEN", "valueFrom": {"secretKeyRef": refs["API_TOKEN"]}}
