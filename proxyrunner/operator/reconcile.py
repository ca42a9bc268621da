"""One reconcile of one MCPServer: apply its children, then report its status.

Idempotence is the rule here. Every child is server-side applied from a deterministic
body, so an unchanged MCPServer re-applies to no-ops that the API server does not write;
each child is read first only to tell what an apply created or changed, which is what the
events report. A child deleted by hand is created again; a field of ours changed by hand
is put back (apply with force); fields we do not send (an HPA's replica count) stay.
"""

from __future__ import annotations

import datetime
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import structlog

from proxyrunner.errors import ConfigError
from proxyrunner.kube.errors import KubeError
from proxyrunner.kube.workload import owns_replicas
from proxyrunner.operator import children, conditions
from proxyrunner.operator.objects import Objects
from proxyrunner.operator.spec import API_VERSION, KIND, Server, read_server

_HANDOFF_SUFFIX: Final = "-replicas-handoff"


@dataclass(frozen=True, slots=True)
class ProxySettings:
    """What the operator puts in every proxy Deployment besides the MCPServer's spec."""

    image: str
    pull_policy: str = "IfNotPresent"
    resources: Mapping[str, Any] = field(
        default_factory=lambda: {
            "requests": {"cpu": "100m", "memory": "128Mi"},
            "limits": {"memory": "512Mi"},
        }
    )


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _url(server: Server) -> str:
    path = "/sse" if server.run_config.backend.served_protocol == "sse" else "/mcp"
    host = f"{children.proxy_service_name(server.name)}.{server.namespace}.svc.cluster.local"
    return f"http://{host}:{server.proxy_port}{path}"


class Reconciler:
    def __init__(
        self,
        objects: Objects,
        proxy: ProxySettings,
        log: structlog.stdlib.BoundLogger,
        identity: str = "proxyrunner-operator",
    ) -> None:
        self._objects = objects
        self._proxy = proxy
        self._log = log
        self._identity = identity

    async def reconcile(self, namespace: str, name: str) -> None:
        """Bring MCPServer ``namespace/name`` and its children in line. Raises KubeError
        (the caller retries with backoff); a spec that cannot make a RunConfig is
        reported in the status instead."""
        resource = await self._objects.get(KIND, namespace, name)
        if resource is None or resource["metadata"].get("deletionTimestamp"):
            return  # the garbage collector removes the children through their owner
        log = self._log.bind(mcpserver=f"{namespace}/{name}")
        try:
            server = read_server(resource)
        except ConfigError as exc:
            await self._report(resource, [conditions.invalid_spec(str(exc))], None, log)
            return
        changed: list[str] = []
        for body in (
            children.service_account_body(server),
            children.role_body(server),
            children.role_binding_body(server),
            children.configmap_body(server),
            children.service_body(server),
        ):
            changed += await self._apply(body)
        deployment, what = await self._apply_deployment(server)
        changed += what
        statefulset = await self._adopt_statefulset(server)
        for change in changed:
            log.info("child applied", change=change)
            await self._event(resource, "Normal", "Applied", change)
        wanted = [conditions.ready_condition(deployment, statefulset), *conditions.warnings(server)]
        await self._report(resource, wanted, _url(server), log)

    async def _apply(self, body: Mapping[str, Any]) -> list[str]:
        kind, name = str(body["kind"]), str(body["metadata"]["name"])
        before = await self._objects.get(kind, str(body["metadata"]["namespace"]), name)
        after = await self._objects.apply(body)
        return _change(kind, name, before, after)

    async def _apply_deployment(self, server: Server) -> tuple[dict[str, Any], list[str]]:
        body = children.deployment_body(
            server, self._proxy.image, self._proxy.pull_policy, dict(self._proxy.resources)
        )
        before = await self._objects.get("Deployment", server.namespace, server.name)
        if before is not None and server.replicas is None:
            await self._hand_over_replicas(server, before)
        after = await self._objects.apply(body)
        return after, _change("Deployment", server.name, before, after)

    async def _hand_over_replicas(self, server: Server, existing: dict[str, Any]) -> None:
        """The MCPServer stopped setting ``replicas``: if we are its only owner, dropping
        it from our apply would reset it to 1. A hand-off manager co-owns the current
        count first, so it stays until an HPA or kubectl changes it (the Kubernetes
        server-side apply docs, "Transferring Ownership")."""
        ours, others = owns_replicas(existing, self._objects.field_manager)
        if not ours or others:
            return
        replicas = int(existing.get("spec", {}).get("replicas", 1))
        await self._objects.apply(
            children.replicas_body(server, replicas),
            manager=self._objects.field_manager + _HANDOFF_SUFFIX,
        )

    async def _adopt_statefulset(self, server: Server) -> dict[str, Any] | None:
        statefulset = await self._objects.get("StatefulSet", server.namespace, server.name)
        if statefulset is None:
            return None
        owners = statefulset["metadata"].get("ownerReferences") or []
        if any(o.get("uid") == server.uid for o in owners):
            return statefulset
        return await self._objects.apply(children.statefulset_owner_body(server))

    async def _report(
        self,
        resource: dict[str, Any],
        wanted: list[conditions.Condition],
        url: str | None,
        log: structlog.stdlib.BoundLogger,
    ) -> None:
        status = conditions.status_body(resource, wanted, url, _now())
        if not conditions.status_changed(resource, status):
            return
        # Events first: a status showing the new generation implies its events exist.
        before = {
            c.get("type"): c.get("status")
            for c in (resource.get("status") or {}).get("conditions") or []
        }
        for c in wanted:
            if before.get(c.type) == c.status:
                continue
            warning = c.status == "True" and c.type != conditions.READY
            if warning or c.reason == "InvalidSpec":
                log.warning("condition", type=c.type, reason=c.reason, message=c.message)
                await self._event(resource, "Warning", c.reason, c.message)
            elif c.type == conditions.READY:
                await self._event(resource, "Normal", c.reason, c.message)
        meta = resource["metadata"]
        await self._objects.patch_status(KIND, meta["namespace"], meta["name"], status)

    async def _event(self, resource: dict[str, Any], kind: str, reason: str, message: str) -> None:
        """Record an event on the MCPServer; a failure is logged, never fatal: events are
        for people, the status is the contract."""
        meta = resource["metadata"]
        now = _now()
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": f"{meta['name']}.{secrets.token_hex(8)}",
                "namespace": meta["namespace"],
            },
            "involvedObject": {
                "apiVersion": API_VERSION,
                "kind": KIND,
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid"),
            },
            "type": kind,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": children.MANAGED_BY},
            "reportingComponent": children.MANAGED_BY,
            "reportingInstance": self._identity,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            await self._objects.create("Event", meta["namespace"], body)
        except KubeError as exc:
            self._log.warning("could not record an event", reason=reason, error=str(exc))


def _change(
    kind: str, name: str, before: Mapping[str, Any] | None, after: Mapping[str, Any]
) -> list[str]:
    if before is None:
        return [f"{kind} {name} created"]
    if before["metadata"].get("resourceVersion") != after["metadata"].get("resourceVersion"):
        return [f"{kind} {name} updated"]
    return []
