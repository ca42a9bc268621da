"""What Kubernetes-tier tests use to talk to the test cluster started by conftest.py.

- ``KubeCluster``: where the kube-apiserver is and who may talk to it (an admin identity in
  system:masters and the ``proxyrunner`` identity bound to config/rbac/role.yaml only in
  the namespaces that ``kube_namespace`` creates), plus small synchronous REST helpers.
- ``admin_api_client(cluster)`` / ``proxy_api_client(cluster)``: async context managers
  yielding a ``kubernetes_asyncio.client.ApiClient`` for either identity, closed on exit.
- ``create_pod``, ``set_ready``: backend pods and the status a kubelet would report.
- ``backend_config(namespace, **fields)``, ``apply_as_proxy``, ``read_sts``, ``annotation``,
  ``image``, ``stamp``: the backend StatefulSet's RunConfig, applying it as a proxy does,
  and reading or stamping what the API server holds.
"""

from __future__ import annotations

import contextlib
import json
import re
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kubernetes_asyncio import client as k8s_client
from kubernetes_asyncio import config as k8s_config

from proxyrunner.config import RunConfig, parse_config
from proxyrunner.kube.apply import WorkloadApplier
from proxyrunner.kube.rbac import proxy_role_rules
from proxyrunner.kube.workload import GENERATION_ANNOTATION
from proxyrunner.logging import get_logger
from proxyrunner.metrics import Metrics

REPO_ROOT = Path(__file__).resolve().parents[2]
ROLE_FILE = REPO_ROOT / "config" / "rbac" / "role.yaml"
PROXY_USER = "proxyrunner"
FIELD_MANAGER = "kube-test-env"


class KubeRequestError(Exception):
    """A non-2xx answer from the apiserver to ``KubeCluster.request``."""

    def __init__(self, method: str, path: str, status: int, body: str) -> None:
        super().__init__(f"{method} {path} -> {status}: {body[:2000]}")
        self.status = status
        self.body = body


@dataclass(frozen=True)
class KubeCluster:
    """A running kube-apiserver (+ etcd) on loopback; no controller-manager, no kubelet."""

    server: str  # https://127.0.0.1:<port>
    admin_kubeconfig: Path
    proxy_kubeconfig: Path
    admin_token: str  # user "admin", group system:masters
    proxy_token: str  # user "proxyrunner", no groups beyond system:authenticated
    ca_file: Path  # CA that signed the serving certificate (for 127.0.0.1 and localhost)
    etcd_url: str
    workdir: Path  # data, certificates, kubeconfigs and the logs (etcd.log, kube-apiserver.log)
    helm: Path | None = None  # the helm binary, when scripts/kube-test-env built it
    controller_manager: Path | None = None  # kube-controller-manager, when built
    proxy_user: str = PROXY_USER

    @property
    def apiserver_log(self) -> Path:
        return self.workdir / "kube-apiserver.log"

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    def request(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        *,
        token: str | None = None,
        query: Mapping[str, str] | None = None,
        content_type: str = "application/json",
        timeout: float = 30.0,
    ) -> dict[str, Any]:
        """One synchronous REST call (as the admin unless ``token`` is given).

        Returns the decoded JSON answer; raises ``KubeRequestError`` for non-2xx.
        """
        raw = self.request_raw(
            method, path, body, token=token, query=query, content_type=content_type,
            timeout=timeout,
        )  # fmt: skip
        return dict(json.loads(raw)) if raw else {}

    def request_raw(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        *,
        token: str | None = None,
        query: Mapping[str, str] | None = None,
        content_type: str = "application/json",
        timeout: float = 30.0,
    ) -> bytes:
        """``request`` returning the undecoded body (e.g. for /readyz, /version)."""
        url = self.server + path
        if query:
            url += "?" + urllib.parse.urlencode(query)
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method=method)  # noqa: S310 - loopback
        req.add_header("Authorization", f"Bearer {token or self.admin_token}")
        req.add_header("Accept", "application/json, */*")
        if data is not None:
            req.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(  # noqa: S310 - loopback https only
                req, timeout=timeout, context=self.ssl_context()
            ) as response:
                return bytes(response.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            exc.close()
            raise KubeRequestError(method, path, exc.code, detail) from None

    def apply(
        self,
        path: str,
        obj: Mapping[str, Any],
        *,
        field_manager: str = FIELD_MANAGER,
        force: bool = True,
        token: str | None = None,
    ) -> dict[str, Any]:
        """Server-side apply ``obj`` at its resource ``path`` (e.g. .../configmaps/NAME)."""
        query = {"fieldManager": field_manager}
        if force:
            query["force"] = "true"
        return self.request(
            "PATCH",
            path,
            obj,
            token=token,
            query=query,
            content_type="application/apply-patch+yaml",
        )

    def create_namespace(self, hint: str = "test") -> str:
        """A fresh namespace with its ``default`` ServiceAccount (which the controller
        manager would create; the ServiceAccount admission plugin needs it for Pods)."""
        slug = re.sub(r"[^a-z0-9-]+", "-", hint.lower()).strip("-")[:40].strip("-") or "test"
        name = f"{slug}-{uuid.uuid4().hex[:8]}"
        self.request(
            "POST",
            "/api/v1/namespaces",
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}},
        )
        self.request(
            "POST",
            f"/api/v1/namespaces/{name}/serviceaccounts",
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default"}},
        )
        return name

    def bind_proxy_role(
        self,
        namespace: str,
        without: str | None = None,
        server: str | None = None,
        configmaps: Sequence[str] = (),
    ) -> None:
        """Apply config/rbac/role.yaml (server "mcp") in ``namespace`` and bind it to the
        proxy user; ``without`` names a resource (e.g. "pods") whose rules are left out;
        ``server``: the same Role for a server of another name, in addition, reading its
        RunConfig from any of ``configmaps``."""
        role = yaml.safe_load(ROLE_FILE.read_text())
        if server is not None:
            role["metadata"]["name"] = f"proxyrunner-{server}"
            role["rules"] = proxy_role_rules(server)
            if configmaps:
                role["rules"].insert(
                    0,
                    {
                        "apiGroups": [""],
                        "resources": ["configmaps"],
                        "resourceNames": list(configmaps),
                        "verbs": ["get"],
                    },
                )
        name = role["metadata"]["name"]
        role["metadata"]["namespace"] = namespace
        if without is not None:
            role["rules"] = [r for r in role["rules"] if without not in r["resources"]]
        rbac = f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}"
        self.apply(f"{rbac}/roles/{name}", role)
        binding = {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": name, "namespace": namespace},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [
                {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": self.proxy_user}
            ],
        }
        self.apply(f"{rbac}/rolebindings/{name}", binding)
        # The RBAC authorizer reads bindings from an informer: wait until it has this one.
        review = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {
                "user": self.proxy_user,
                "groups": ["system:authenticated"],
                "resourceAttributes": {
                    "namespace": namespace,
                    "verb": "patch",
                    "group": "apps",
                    "resource": "statefulsets",
                    "name": server or "mcp",
                },
            },
        }
        deadline = time.monotonic() + 10.0
        while True:
            answer = self.request(
                "POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", review
            )
            if answer.get("status", {}).get("allowed"):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"RoleBinding in {namespace} not effective: {answer}")
            time.sleep(0.05)

    def delete_namespace(self, namespace: str) -> None:
        """Delete ``namespace``. Without a controller manager it stays Terminating (its
        objects are not garbage collected); unique names keep tests apart regardless."""
        with contextlib.suppress(KubeRequestError):
            self.request("DELETE", f"/api/v1/namespaces/{namespace}")


@contextlib.asynccontextmanager
async def _api_client(kubeconfig: Path) -> AsyncIterator[k8s_client.ApiClient]:
    api = await k8s_config.new_client_from_config(config_file=str(kubeconfig), persist_config=False)
    try:
        yield api
    finally:
        await api.close()


def admin_api_client(
    cluster: KubeCluster,
) -> contextlib.AbstractAsyncContextManager[k8s_client.ApiClient]:
    """``async with admin_api_client(cluster) as api:`` an ApiClient as the admin."""
    return _api_client(cluster.admin_kubeconfig)


def proxy_api_client(
    cluster: KubeCluster,
) -> contextlib.AbstractAsyncContextManager[k8s_client.ApiClient]:
    """``async with proxy_api_client(cluster) as api:`` an ApiClient as ``proxyrunner``."""
    return _api_client(cluster.proxy_kubeconfig)


# --- backend pods (no kubelet: the tests play its part) --------------------------------


def create_pod(
    cluster: KubeCluster, namespace: str, name: str, ip: str, *, owned: bool = True
) -> None:
    """A ready backend pod at address ``ip``, labelled ``app=mcp``. ``owned``: controlled
    by StatefulSet ``mcp`` (waited for: a starting proxy applies it), as the StatefulSet
    controller makes its pods; otherwise a stray that only carries the labels."""
    metadata: dict[str, Any] = {"name": name, "labels": {"app": "mcp"}}
    if owned:
        sts = wait_for_sts(cluster, namespace)
        metadata["ownerReferences"] = [
            {
                "apiVersion": "apps/v1",
                "kind": "StatefulSet",
                "name": "mcp",
                "uid": sts["metadata"]["uid"],
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
    cluster.request(
        "POST",
        f"/api/v1/namespaces/{namespace}/pods",
        {
            "metadata": metadata,
            "spec": {"containers": [{"name": "mcp", "image": "example.invalid/mcp:1"}]},
        },
    )
    set_ready(cluster, namespace, name, True, ip)


def set_ready(cluster: KubeCluster, namespace: str, name: str, ready: bool, ip: str) -> None:
    """What a kubelet reports through the status subresource: the pod's address (both
    fields, as a kubelet sets them) and its Ready condition."""
    cluster.request(
        "PATCH",
        f"/api/v1/namespaces/{namespace}/pods/{name}/status",
        {
            "status": {
                "phase": "Running",
                "podIP": ip,
                "podIPs": [{"ip": ip}],
                "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            }
        },
        content_type="application/merge-patch+json",
    )


# --- the backend StatefulSet ---------------------------------------------------------


def backend_config(namespace: str, **fields: Any) -> RunConfig:
    """A Kubernetes-runtime RunConfig for StatefulSet ``mcp`` (``fields`` override)."""
    doc: dict[str, Any] = {
        "name": "mcp",
        "runtime": "kubernetes",
        "image": "example.invalid/mcp:1",
        "namespace": namespace,
        "target_port": 8080,
        **fields,
    }
    return parse_config(doc)[0]


async def apply_as_proxy(cluster: KubeCluster, config: RunConfig) -> str:
    """What a proxy does at startup: apply the Services and the gated StatefulSet, as the
    Role-limited proxy identity."""
    namespace = config.kubernetes.namespace
    assert namespace is not None
    async with proxy_api_client(cluster) as api:
        applier = WorkloadApplier(api, config, namespace, Metrics(), get_logger())
        return await applier.apply_all()


def wait_for_sts(
    cluster: KubeCluster, namespace: str, name: str = "mcp", limit: float = 30.0
) -> dict[str, Any]:
    """The StatefulSet, as soon as it exists."""
    deadline = time.monotonic() + limit
    while True:
        try:
            return read_sts(cluster, namespace, name)
        except KubeRequestError as exc:
            if exc.status != 404 or time.monotonic() > deadline:
                raise
        time.sleep(0.05)


def read_sts(cluster: KubeCluster, namespace: str, name: str = "mcp") -> dict[str, Any]:
    return cluster.request("GET", f"/apis/apps/v1/namespaces/{namespace}/statefulsets/{name}")


def annotation(sts: dict[str, Any]) -> str | None:
    annotations = sts["spec"]["template"]["metadata"].get("annotations") or {}
    value = annotations.get(GENERATION_ANNOTATION)
    return None if value is None else str(value)


def image(sts: dict[str, Any]) -> str:
    return str(sts["spec"]["template"]["spec"]["containers"][0]["image"])


def stamp(cluster: KubeCluster, namespace: str, value: str) -> None:
    """Another writer sets the pod-template annotation (as an older proxyrunner would)."""
    cluster.request(
        "PATCH",
        f"/apis/apps/v1/namespaces/{namespace}/statefulsets/mcp",
        {"spec": {"template": {"metadata": {"annotations": {GENERATION_ANNOTATION: value}}}}},
        query={"fieldManager": "someone-else"},
        content_type="application/merge-patch+json",
    )
