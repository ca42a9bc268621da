"""Raw, kind-generic access to the API objects the operator touches.

The operator handles a dozen kinds the same way (read, server-side apply, merge-patch a
status, create an event), always as plain dicts: one path table and one call path here,
rather than a dozen generated typed clients whose models would be converted back to
dicts. Errors come out as ``proxyrunner.kube.errors`` classes, through ``kube.client.call``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from typing import Any, Final
from urllib.parse import quote

import aiohttp
from kubernetes_asyncio import client

from proxyrunner.kube.client import call
from proxyrunner.kube.errors import KubeError, KubeNotFound, translate
from proxyrunner.operator.spec import GROUP, KIND, PLURAL, VERSION

APPLY: Final = "application/apply-patch+yaml"
MERGE: Final = "application/merge-patch+json"
_REQUEST_TIMEOUT: Final = 30.0

# kind -> (API prefix, plural). Every kind the operator reads or writes is namespaced.
KINDS: Final[Mapping[str, tuple[str, str]]] = {
    "ConfigMap": ("/api/v1", "configmaps"),
    "Service": ("/api/v1", "services"),
    "ServiceAccount": ("/api/v1", "serviceaccounts"),
    "Event": ("/api/v1", "events"),
    "Deployment": ("/apis/apps/v1", "deployments"),
    "StatefulSet": ("/apis/apps/v1", "statefulsets"),
    "Role": ("/apis/rbac.authorization.k8s.io/v1", "roles"),
    "RoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "rolebindings"),
    "Lease": ("/apis/coordination.k8s.io/v1", "leases"),
    KIND: (f"/apis/{GROUP}/{VERSION}", PLURAL),
}


def collection_path(kind: str, namespace: str | None) -> str:
    prefix, plural = KINDS[kind]
    if namespace is None:
        return f"{prefix}/{plural}"
    return f"{prefix}/namespaces/{quote(namespace, safe='')}/{plural}"


def object_path(kind: str, namespace: str, name: str) -> str:
    return f"{collection_path(kind, namespace)}/{quote(name, safe='')}"


class Objects:
    """Reads and writes as one identity (the operator's API client)."""

    def __init__(self, api: client.ApiClient, field_manager: str) -> None:
        self._api = api
        self.field_manager = field_manager

    async def _request(
        self,
        verb: str,
        method: str,
        path: str,
        namespace: str,
        resource: str,
        *,
        body: object = None,
        query: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        headers = {"Accept": "application/json", "Content-Type": content_type}
        awaitable = self._api.call_api(
            path,
            method,
            query_params=query or [],
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
            _preload_content=False,
            _return_http_data_only=True,
            _request_timeout=_REQUEST_TIMEOUT,
        )
        return await call(verb, resource, namespace, awaitable)

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """The object, or None when it does not exist."""
        try:
            return await self._request(
                "get", "GET", object_path(kind, namespace, name), namespace, _named(kind, name)
            )
        except KubeNotFound:
            return None

    async def list(
        self, kind: str, namespace: str | None, *, label_selector: str | None = None
    ) -> dict[str, Any]:
        query = [("labelSelector", label_selector)] if label_selector else []
        return await self._request(
            "list",
            "GET",
            collection_path(kind, namespace),
            namespace or "(all namespaces)",
            KINDS[kind][1],
            query=query,
        )

    async def apply(self, body: Mapping[str, Any], *, manager: str | None = None) -> dict[str, Any]:
        """Server-side apply ``body`` with force: the operator's fields are its own, and a
        hand edit of one of them is put back."""
        kind, meta = str(body["kind"]), body["metadata"]
        namespace, name = str(meta["namespace"]), str(meta["name"])
        query = [("fieldManager", manager or self.field_manager), ("force", "true")]
        return await self._request(
            "patch",
            "PATCH",
            object_path(kind, namespace, name),
            namespace,
            _named(kind, name),
            body=dict(body),
            query=query,
            content_type=APPLY,
        )

    async def patch_status(
        self, kind: str, namespace: str, name: str, status: Mapping[str, Any]
    ) -> dict[str, Any]:
        path = object_path(kind, namespace, name) + "/status"
        return await self._request(
            "patch",
            "PATCH",
            path,
            namespace,
            _named(kind, name) + "/status",
            body={"status": dict(status)},
            content_type=MERGE,
        )

    async def create(self, kind: str, namespace: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return await self._request(
            "create",
            "POST",
            collection_path(kind, namespace),
            namespace,
            KINDS[kind][1],
            body=dict(body),
        )

    async def replace(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """PUT: fails with 409 unless ``body`` carries the object's current resourceVersion."""
        kind, meta = str(body["kind"]), body["metadata"]
        namespace, name = str(meta["namespace"]), str(meta["name"])
        return await self._request(
            "update",
            "PUT",
            object_path(kind, namespace, name),
            namespace,
            _named(kind, name),
            body=dict(body),
        )


def _named(kind: str, name: str) -> str:
    """How an error message names the object: "deployments/x"."""
    return f"{KINDS[kind][1]}/{name}"


async def watch_events(
    api: client.ApiClient,
    kind: str,
    namespace: str | None,
    resource_version: str,
    *,
    label_selector: str | None = None,
    timeout_seconds: int = 300,
) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """(type, object) for each change after ``resource_version`` until the server ends the
    watch (``timeout_seconds``). A watch that can no longer resume (410 Gone) raises a
    KubeError with status 410: the caller lists again."""
    query = [
        ("watch", "true"),
        ("resourceVersion", resource_version),
        ("allowWatchBookmarks", "true"),
        ("timeoutSeconds", str(timeout_seconds)),
    ]
    if label_selector:
        query.append(("labelSelector", label_selector))
    where = namespace or "(all namespaces)"
    resource = KINDS[kind][1]
    try:
        response = await api.call_api(
            collection_path(kind, namespace),
            "GET",
            query_params=query,
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
            _preload_content=False,
            _return_http_data_only=True,
            # The server ends the watch; only a silent connection is cut here.
            _request_timeout=aiohttp.ClientTimeout(sock_connect=10, sock_read=timeout_seconds + 30),
        )
    except Exception as exc:
        raise translate(exc, "watch", resource, where) from exc
    try:
        if not 200 <= response.status <= 299:
            await call("watch", resource, where, _answered(response))
        async for line in response.content:
            if not line.strip():
                continue
            event = json.loads(line)
            obj = event.get("object") or {}
            if event.get("type") == "ERROR":
                status = int(obj.get("code") or 0)
                raise KubeError(f"watch {resource} in {where}: {obj.get('message', '')}", status)
            yield str(event.get("type")), obj
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise translate(exc, "watch", resource, where) from exc
    finally:
        response.release()


async def _answered(response: Any) -> Any:
    return response
