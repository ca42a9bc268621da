"""The RunConfig from a ConfigMap (key ``runconfig.json``), read through the API."""

from __future__ import annotations

from typing import Final

from kubernetes_asyncio import client

from proxyrunner.config import LoadedConfig, load_config_text
from proxyrunner.errors import ConfigError, StartupError
from proxyrunner.kube.client import call
from proxyrunner.kube.errors import KubeForbidden, KubeNotFound

CONFIG_KEY: Final = "runconfig.json"


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
