"""The RunConfig from a ConfigMap (key ``runconfig.json``), read through the API."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

from kubernetes_asyncio import client

from proxyrunner.config import LoadedConfig, load_config_text
from proxyrunner.errors import ConfigError, StartupError
from proxyrunner.kube.client import call
from proxyrunner.kube.errors import KubeForbidden, KubeNotFound

CONFIG_KEY: Final = "runconfig.json"
_SA_NAMESPACE: Final = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def default_namespace(sa_file: Path = _SA_NAMESPACE) -> str:
    """The pod's namespace: the service-account file, then $POD_NAMESPACE."""
    try:
        namespace = sa_file.read_text().strip()
        if namespace:
            return namespace
    except OSError:
        pass
    namespace = os.environ.get("POD_NAMESPACE", "").strip()
    if namespace:
        return namespace
    raise ConfigError(
        "namespace: not running in a pod and POD_NAMESPACE is not set; "
        "give --configmap NAMESPACE/NAME or set the RunConfig's namespace"
    )


async def load_runconfig_from_configmap(
    api: client.ApiClient, namespace: str, name: str
) -> LoadedConfig:
    core = client.CoreV1Api(api)
    resource = f"configmaps/{name}"
    try:
        configmap = await call(
            "get",
            resource,
            namespace,
            core.read_namespaced_config_map(name, namespace, _preload_content=False),
        )
    except KubeNotFound as exc:
        raise ConfigError(f"ConfigMap {namespace}/{name} not found") from exc
    except KubeForbidden as exc:
        raise StartupError(str(exc)) from exc
    data = configmap.get("data") or {}
    if CONFIG_KEY not in data:
        raise ConfigError(f"ConfigMap {namespace}/{name} has no key {CONFIG_KEY!r}")
    return load_config_text(data[CONFIG_KEY], f"ConfigMap {namespace}/{name}")
