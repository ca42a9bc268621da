"""kubernetes_asyncio's exceptions never leave the kube package: what its public functions
raise is a project error (kube/errors.py), with a message that names what is missing."""

from __future__ import annotations

import pytest
from kubernetes_asyncio.client.exceptions import ApiException

from proxyrunner.errors import StartupError
from proxyrunner.kube.directory import KubernetesBackendDirectory
from proxyrunner.kube.errors import KubeForbidden
from proxyrunner.logging import get_logger
from proxyrunner.metrics import Metrics
from tests.kube.helpers import KubeCluster, backend_config, proxy_api_client

pytestmark = [pytest.mark.kube, pytest.mark.timeout(60)]


async def test_a_role_without_pod_access_fails_startup_with_the_rbac_message_not_an_api_exception(
    kube_cluster: KubeCluster,
) -> None:
    namespace = kube_cluster.create_namespace("no-pods")
    try:
        kube_cluster.bind_proxy_role(namespace, without="pods")
        config = backend_config(namespace, backend_replicas=0)
        async with proxy_api_client(kube_cluster) as api:
            directory = KubernetesBackendDirectory(config, api, Metrics(), get_logger(), namespace)
            try:
                with pytest.raises(StartupError) as failed:
                    await directory.start()
            finally:
                await directory.close()
    finally:
        kube_cluster.delete_namespace(namespace)
    message = str(failed.value)
    assert "does not allow 'list' on pods" in message
    assert "config/rbac/role.yaml" in message
    assert isinstance(failed.value.__cause__, KubeForbidden)
    assert not any(isinstance(e, ApiException) for e in (failed.value, failed.value.__cause__))
