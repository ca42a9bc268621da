"""The generation gate's 409 path, made deterministic: another writer's apply is forced in
between the gate's read and its write, on a real kube-apiserver.

``InterleavedApplier`` is the proxy's own WorkloadApplier with one seam: after each read of
the StatefulSet it lets a competing writer in, before the decision made on that read is
written. The write then carries a stale ``resourceVersion`` (or, on creation, POSTs an
object that now exists), the API server answers 409, and the applier must read again and
decide on what the other writer left.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from kubernetes_asyncio import client
from structlog.testing import capture_logs

from proxyrunner.errors import StartupError
from proxyrunner.kube.apply import WorkloadApplier
from proxyrunner.logging import get_logger
from proxyrunner.metrics import Metrics
from tests.kube import helpers
from tests.kube.helpers import KubeCluster, backend_config, proxy_api_client

pytestmark = [pytest.mark.kube, pytest.mark.timeout(120)]

Interloper = Callable[[int], Awaitable[None]]
"""Called with the number of reads so far, right after each read."""

OURS = "example.invalid/mcp:ours"
THEIRS = "example.invalid/mcp:theirs"
DECIDING_AGAIN = "StatefulSet changed since it was read; deciding again"
FINAL_EVENT = {
    "applied": "StatefulSet applied",
    "skipped": "skipping StatefulSet apply: a newer MCPServer generation is applied",
}


class InterleavedApplier(WorkloadApplier):
    def __init__(self, *args: Any, interloper: Interloper) -> None:
        super().__init__(*args)
        self.reads = 0
        self._interloper = interloper

    async def read_statefulset(self) -> dict[str, Any] | None:
        found = await super().read_statefulset()
        self.reads += 1
        await self._interloper(self.reads)
        return found


def applies(metrics: Metrics, result: str) -> float:
    value = metrics.registry.get_sample_value(
        "proxyrunner_statefulset_apply_total", {"result": result}
    )
    return value or 0.0


@pytest.mark.parametrize("before", [2, None], ids=["over-an-existing-one", "on-creation"])
@pytest.mark.parametrize(
    ("theirs", "result", "final_generation", "final_image"),
    [(5, "skipped", "5", THEIRS), (3, "applied", "4", OURS)],
    ids=["newer-written-in-between-makes-us-skip", "older-written-in-between-is-applied-over"],
)
async def test_a_write_between_the_gate_read_and_the_apply_is_a_409_and_decided_again(
    kube_cluster: KubeCluster,
    kube_namespace: str,
    before: int | None,
    theirs: int,
    result: str,
    final_generation: str,
    final_image: str,
) -> None:
    if before is not None:
        stamped = backend_config(
            kube_namespace,
            image="example.invalid/mcp:old",
            mcpserver_generation=before,
            backend_replicas=1,
        )
        await helpers.apply_as_proxy(kube_cluster, stamped)
    other = backend_config(
        kube_namespace, image=THEIRS, mcpserver_generation=theirs, backend_replicas=1
    )

    async def another_proxy_applies(reads: int) -> None:
        if reads == 1:  # only between the first read and its write
            await helpers.apply_as_proxy(kube_cluster, other)

    ours = backend_config(kube_namespace, image=OURS, mcpserver_generation=4, backend_replicas=1)
    metrics = Metrics()
    async with proxy_api_client(kube_cluster) as api:
        with capture_logs() as logs:
            applier = InterleavedApplier(
                api,
                ours,
                kube_namespace,
                metrics,
                get_logger().bind(applier="ours"),
                interloper=another_proxy_applies,
            )
            assert await applier.apply_statefulset() == result

    assert applier.reads == 2  # the stale read, then the one the final decision rests on
    assert applies(metrics, "conflict") == 1
    assert applies(metrics, result) == 1
    assert applies(metrics, "skipped" if result == "applied" else "applied") == 0
    sts = helpers.read_sts(kube_cluster, kube_namespace)
    assert helpers.annotation(sts) == final_generation
    assert helpers.image(sts) == final_image
    assert [e["event"] for e in logs if e.get("applier") == "ours"] == [
        DECIDING_AGAIN,
        FINAL_EVENT[result],
    ]


async def test_a_writer_that_never_lets_go_exhausts_the_retries_with_a_plain_error(
    kube_cluster: KubeCluster, kube_namespace: str
) -> None:
    config = backend_config(kube_namespace, mcpserver_generation=4, backend_replicas=1)
    await helpers.apply_as_proxy(kube_cluster, config)

    async with helpers.admin_api_client(kube_cluster) as admin:
        apps = client.AppsV1Api(admin)

        async def a_controller_writes_after_every_read(reads: int) -> None:
            # Changes the object (so its resourceVersion) but not the generation: each
            # re-decision is "apply", and each apply is stale again.
            await apps.patch_namespaced_stateful_set(
                "mcp",
                kube_namespace,
                {"metadata": {"annotations": {"example.invalid/writes": str(reads)}}},
                field_manager="busy-controller",
            )

        metrics = Metrics()
        async with proxy_api_client(kube_cluster) as api:
            applier = InterleavedApplier(
                api,
                config,
                kube_namespace,
                metrics,
                get_logger(),
                interloper=a_controller_writes_after_every_read,
            )
            with pytest.raises(StartupError, match="still conflicting after 10 attempts"):
                await applier.apply_statefulset()

    assert applier.reads == 10
    assert applies(metrics, "conflict") == 10
    assert applies(metrics, "error") == 1
    assert applies(metrics, "applied") == 0
