"""One Kubernetes API client per process: in-cluster first, then kubeconfig."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.config.config_exception import ConfigException

from proxyrunner.errors import StartupError
from proxyrunner.kube.errors import translate


@dataclass(frozen=True, slots=True)
class KubeAccess:
    """What the kubernetes runtime needs besides the RunConfig, resolved once at startup."""

    api: client.ApiClient
    namespace: str
    """Where the backend workload lives: the RunConfig's namespace, else the pod's own."""
    pod_address_map: Mapping[str, str] = field(default_factory=dict)
    """Pod name -> URL overrides from PROXYRUNNER_POD_ADDRESS_MAP (tests, local dev)."""


async def open_api_client(kubeconfig: str | None = None) -> client.ApiClient:
    """In-cluster service account when running in a pod, else the kubeconfig file
    (``kubeconfig``, $KUBECONFIG or ~/.kube/config). Raises StartupError if neither."""
    if kubeconfig is None:
        configuration = client.Configuration()
        try:
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
            return client.ApiClient(configuration)
        except ConfigException:
            pass
    configuration = client.Configuration()
    try:
        await config.load_kube_config(
            config_file=kubeconfig or os.environ.get("KUBECONFIG"),
            client_configuration=configuration,
        )
    except (ConfigException, OSError) as exc:
        raise StartupError(
            "no Kubernetes API access: not in a pod, and no usable kubeconfig "
            f"({exc.__class__.__name__})"
        ) from exc
    return client.ApiClient(configuration)


async def call(verb: str, resource: str, namespace: str, awaitable: Any) -> dict[str, Any]:
    """Await one raw (``_preload_content=False``) API call and decode its JSON answer.

    A raw call does not check the status itself, so this does: any non-2xx answer, and
    any library error, becomes a KubeError subclass.
    """
    try:
        response = await awaitable
        data = await response.read()
        response.release()
    except Exception as exc:
        raise translate(exc, verb, resource, namespace) from exc
    if not 200 <= response.status <= 299:
        failure = ApiException(status=response.status, reason=response.reason)
        failure.body = data
        raise translate(failure, verb, resource, namespace)
    return dict(json.loads(data)) if data else {}
