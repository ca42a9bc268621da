"""The generation-gated server-side apply of the backend workload.

The race this closes (ToolHive #5023): during a proxy rollout, an old and a new proxy pod
both apply the StatefulSet with the same field manager and force; the stale one can land
last and roll the backend back. Here every apply carries the ``resourceVersion`` the gate
decision was made on, so an apply racing with another fails with 409 and is decided
again on fresh data (bounded retries); creation uses POST, which fails if someone else
created the object first. The newest generation therefore always ends up applied.

Replicas: absent ``backend_replicas`` means an HPA or kubectl owns the count. Simply
dropping the field from our apply would let the API server reset it to the default (1)
when no other manager owns it, so ownership is handed to a separate manager first
("Transferring Ownership" in the Kubernetes server-side apply docs).
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

import structlog
from kubernetes_asyncio import client

from proxyrunner.backoff import Backoff
from proxyrunner.config import RunConfig
from proxyrunner.errors import StartupError
from proxyrunner.kube import workload
from proxyrunner.kube.client import call
from proxyrunner.kube.errors import KubeConflict, KubeNotFound
from proxyrunner.metrics import Metrics

APPLY: Final = "application/apply-patch+yaml"
_MAX_ATTEMPTS: Final = 10


def _conflict_backoff() -> Backoff:
    # Short and jittered: two proxies that conflicted must not retry in lock step, and a
    # rollout should not wait long for the loser's re-decision.
    return Backoff(first=0.01, maximum=0.5, reset_after=None)


class WorkloadApplier:
    def __init__(
        self,
        api: client.ApiClient,
        config: RunConfig,
        namespace: str,
        metrics: Metrics,
        log: structlog.stdlib.BoundLogger,
    ) -> None:
        # Raw calls (dict bodies, apply content type, undecoded answers) that the
        # generated signatures do not describe: typed as Any on purpose.
        self._apps: Any = client.AppsV1Api(api)
        self._core: Any = client.CoreV1Api(api)
        self._config = config
        self._ns = namespace
        self._metrics = metrics
        self._log = log.bind(statefulset=config.name, namespace=namespace)
        self._manager = config.kubernetes.field_manager
        self.uid: str | None = None
        """The UID of the StatefulSet as last read or applied: its pods are the backends."""

    async def apply_all(self) -> str:
        """Apply the Services and the gated StatefulSet; returns "applied" or "skipped"."""
        for body in workload.service_bodies(self._config, self._ns):
            name = body["metadata"]["name"]
            await call(
                "patch",
                f"services/{name}",
                self._ns,
                self._core.patch_namespaced_service(
                    name,
                    self._ns,
                    body,
                    field_manager=self._manager,
                    force=True,
                    _content_type=APPLY,
                    _preload_content=False,
                ),
            )
        return await self.apply_statefulset()

    async def read_statefulset(self) -> dict[str, Any] | None:
        name = self._config.name
        try:
            found = await call(
                "get",
                f"statefulsets/{name}",
                self._ns,
                self._apps.read_namespaced_stateful_set(name, self._ns, _preload_content=False),
            )
        except KubeNotFound:
            return None
        self._note_uid(found)
        return found

    def _note_uid(self, answer: dict[str, Any]) -> None:
        uid = (answer.get("metadata") or {}).get("uid")
        if uid:
            self.uid = str(uid)

    async def apply_statefulset(self) -> str:
        ours = self._config.mcpserver_generation
        backoff = _conflict_backoff()
        for _ in range(_MAX_ATTEMPTS):
            existing = await self.read_statefulset()
            template_meta = (existing or {}).get("spec", {}).get("template", {}).get("metadata", {})
            annotations = template_meta.get("annotations") or {}
            decision = workload.decide_gate(annotations.get(workload.GENERATION_ANNOTATION), ours)
            if not decision.apply:
                self._log.info(
                    "skipping StatefulSet apply: a newer MCPServer generation is applied",
                    ours=ours,
                    applied=decision.existing,
                )
                self._metrics.apply_total.labels(result="skipped").inc()
                return "skipped"
            if existing is not None and decision.unparsable:
                self._log.warning("replacing an unparsable generation annotation", ours=ours)
            try:
                if existing is None:
                    await self._create(decision.stamp)
                    continue  # now take over as an applier, on fresh data
                await self._apply_existing(existing, decision.stamp, annotations)
            except KubeConflict:
                self._metrics.apply_total.labels(result="conflict").inc()
                delay = await backoff.wait()
                self._log.info(
                    "StatefulSet changed since it was read; deciding again",
                    ours=ours,
                    waited=round(delay, 3),
                )
                continue
            self._metrics.apply_total.labels(result="applied").inc()
            self._log.info("StatefulSet applied", generation=ours)
            return "applied"
        self._metrics.apply_total.labels(result="error").inc()
        raise StartupError(
            f"StatefulSet {self._ns}/{self._config.name}: still conflicting after "
            f"{_MAX_ATTEMPTS} attempts; another writer keeps changing it"
        )

    async def _create(self, stamp: bool) -> None:
        body = workload.statefulset_body(self._config, self._ns, stamp_generation=stamp)
        created = await call(
            "create",
            f"statefulsets/{self._config.name}",
            self._ns,
            self._apps.create_namespaced_stateful_set(
                self._ns, body, field_manager=self._manager, _preload_content=False
            ),
        )
        self._note_uid(created)

    async def _apply_existing(
        self, existing: dict[str, Any], stamp: bool, annotations: dict[str, str]
    ) -> None:
        version = existing["metadata"]["resourceVersion"]
        if self._config.backend.replicas is None:
            version = await self._hand_over_replicas(existing) or version
        body = workload.statefulset_body(
            self._config,
            self._ns,
            stamp_generation=stamp,
            restarted_at=annotations.get(workload.RESTARTED_AT_ANNOTATION),
            resource_version=version,
        )
        await self._apply(body, self._manager)

    async def _apply(self, body: dict[str, Any], manager: str) -> dict[str, Any]:
        name = self._config.name
        answer = await call(
            "patch",
            f"statefulsets/{name}",
            self._ns,
            self._apps.patch_namespaced_stateful_set(
                name,
                self._ns,
                body,
                field_manager=manager,
                force=True,
                _content_type=APPLY,
                _preload_content=False,
            ),
        )
        self._note_uid(answer)
        return answer

    async def _hand_over_replicas(self, existing: dict[str, Any]) -> str | None:
        """If we are the only owner of spec.replicas, let a hand-off manager co-own the
        current value, so that dropping the field keeps the count. Returns the new
        resourceVersion when it wrote."""
        ours, others = workload.owns_replicas(existing, self._manager)
        if not ours or others:
            return None
        replicas = int(existing.get("spec", {}).get("replicas", 1))
        body = workload.replicas_body(self._config.name, self._ns, replicas)
        body["metadata"]["resourceVersion"] = existing["metadata"]["resourceVersion"]
        answer = await self._apply(body, f"{self._manager}-replicas-handoff")
        self._log.info("replica count handed over to its other owners", replicas=replicas)
        return str(answer["metadata"]["resourceVersion"])

    async def wait_ready(self, limit: float) -> None:
        """Until a backend pod is ready (nothing to wait for with 0 replicas)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        while True:
            sts = await self.read_statefulset()
            spec_replicas = (sts or {}).get("spec", {}).get("replicas", 1)
            ready = (sts or {}).get("status", {}).get("readyReplicas") or 0
            if spec_replicas == 0 or ready >= 1:
                return
            if loop.time() >= deadline:
                raise StartupError(
                    f"StatefulSet {self._ns}/{self._config.name} has no ready pod after {limit:g}s"
                )
            await asyncio.sleep(0.5)
