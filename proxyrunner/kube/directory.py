"""Backends on Kubernetes: the pods of the StatefulSet this proxy applies.

Pods are watched by label selector rather than through EndpointSlices: a pod's name is
the identity sessions are pinned to, and the pod object carries it with its readiness and
IP in one event (an EndpointSlice endpoint names its pod only through targetRef, and
kube-apiserver refuses loopback addresses in EndpointSlices, which the tests need).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import structlog
from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client.exceptions import ApiException
from yarl import URL

from proxyrunner.backends.directory import Backend
from proxyrunner.config import RunConfig
from proxyrunner.errors import ConfigError
from proxyrunner.kube import workload
from proxyrunner.kube.apply import WorkloadApplier
from proxyrunner.kube.configmap import default_namespace
from proxyrunner.metrics import Metrics
from proxyrunner.tasks import BackgroundTasks

Resolver = Callable[[str, str, int], URL]
"""(pod name, pod IP, port) -> the pod's MCP endpoint URL."""

_WATCH_SECONDS: Final = 300
_BACKOFF_FIRST: Final = 0.2
_BACKOFF_MAX: Final = 10.0


POD_ADDRESS_MAP_ENV: Final = "PROXYRUNNER_POD_ADDRESS_MAP"


def pod_url_resolver(transport: str, address_map: Mapping[str, str] | None = None) -> Resolver:
    """The pod's own address by default. ``address_map`` (pod name -> URL) overrides it
    for named pods: the documented hook for tests and local development, where pods are
    objects without a kubelet and their servers run as local processes."""
    path = "/sse" if transport == "sse" else "/mcp"
    overrides = dict(address_map or {})

    def resolve(name: str, ip: str, port: int) -> URL:
        if name in overrides:
            return URL(overrides[name])
        return URL.build(scheme="http", host=ip, port=port, path=path)

    return resolve


def address_map_from_env(environ: Mapping[str, str]) -> dict[str, str]:
    """$PROXYRUNNER_POD_ADDRESS_MAP names a JSON file mapping pod names to URLs."""
    path = environ.get(POD_ADDRESS_MAP_ENV)
    if not path:
        return {}
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"{POD_ADDRESS_MAP_ENV}: cannot read {path} ({exc.__class__.__name__})"
        ) from exc
    if not isinstance(doc, dict) or not all(isinstance(v, str) for v in doc.values()):
        raise ConfigError(f"{POD_ADDRESS_MAP_ENV}: {path} must map pod names to URLs")
    return {str(k): v for k, v in doc.items()}


def _pod_ready(pod: Any) -> bool:
    if pod.metadata.deletion_timestamp is not None or not pod.status or not pod.status.pod_ip:
        return False
    for condition in pod.status.conditions or []:
        if condition.type == "Ready":
            return bool(condition.status == "True")
    return False


class KubernetesBackendDirectory:
    def __init__(
        self,
        config: RunConfig,
        api: client.ApiClient,
        metrics: Metrics,
        log: structlog.stdlib.BoundLogger,
        resolve: Resolver | None = None,
    ) -> None:
        self._config = config
        self._api = api
        self._metrics = metrics
        self._ns = config.namespace or default_namespace()
        self._log = log.bind(namespace=self._ns, statefulset=config.name)
        self._resolve = resolve or pod_url_resolver(
            config.transport, address_map_from_env(os.environ)
        )
        self._port = workload.target_port(config)
        self._backends: dict[str, Backend] = {}
        self._tasks = BackgroundTasks(self._log)
        self.applier = WorkloadApplier(api, config, self._ns, metrics, self._log)
        if config.transport == "stdio" and (config.backend_replicas or 0) > 1:
            self._log.warning("stdio transport: backend_replicas capped at 1")

    async def start(self) -> None:
        await self.applier.apply_all()
        await self.applier.wait_ready(self._config.statefulset_ready_timeout)
        await self._list_pods()
        self._tasks.spawn(self._watch_pods(), "watch backend pods")
        self._tasks.spawn(self._watch_statefulset(), "watch backend statefulset")

    async def close(self) -> None:
        await self._tasks.cancel_all()

    def ready_backends(self) -> Sequence[Backend]:
        return [b for b in self._backends.values() if b.ready]

    def get(self, name: str) -> Backend | None:
        return self._backends.get(name)

    def describe(self) -> str:
        ready = sum(b.ready for b in self._backends.values())
        return f"{ready} of {len(self._backends)} backend pods ready"

    # ------------------------------------------------------------------ internals

    def _update(self, pod: Any, deleted: bool = False) -> None:
        name = pod.metadata.name
        before = self._backends.get(name)
        if deleted:
            self._backends.pop(name, None)
        else:
            ip = pod.status.pod_ip if pod.status else None
            url = self._resolve(name, ip, self._port) if ip else URL("http://unassigned.invalid/")
            self._backends[name] = Backend(name, url, _pod_ready(pod))
        after = self._backends.get(name)
        if (before is None or not before.ready) != (after is None or not after.ready):
            self._log.info(
                "backend ready" if after is not None and after.ready else "backend not ready",
                backend=name,
            )
        self._metrics.backends_ready.set(len(self.ready_backends()))

    def _selector(self) -> str:
        return ",".join(f"{k}={v}" for k, v in workload.selector_labels(self._config.name).items())

    async def _list_pods(self) -> str:
        core = client.CoreV1Api(self._api)
        pods = await core.list_namespaced_pod(self._ns, label_selector=self._selector())
        self._backends.clear()
        for pod in pods.items:
            self._update(pod)
        return str(pods.metadata.resource_version)

    async def _watch_pods(self) -> None:
        core = client.CoreV1Api(self._api)
        backoff = _BACKOFF_FIRST
        version: str | None = None
        while True:
            try:
                if version is None:
                    version = await self._list_pods()
                async with watch.Watch() as stream:
                    async for event in stream.stream(
                        core.list_namespaced_pod,
                        self._ns,
                        label_selector=self._selector(),
                        resource_version=version,
                        timeout_seconds=_WATCH_SECONDS,
                    ):
                        pod = event["object"]
                        version = pod.metadata.resource_version
                        self._update(pod, deleted=event["type"] == "DELETED")
                backoff = _BACKOFF_FIRST
            except ApiException as exc:
                if exc.status == 410:  # our resourceVersion expired: list again
                    version = None
                    continue
                self._log.warning("pod watch failed; retrying", status=exc.status)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX)
            except (TimeoutError, OSError, ValueError) as exc:
                self._log.warning("pod watch interrupted; retrying", error=exc.__class__.__name__)
                version = None
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX)

    async def _watch_statefulset(self) -> None:
        """Apply again if someone deletes the StatefulSet while we run. Each (re)start
        lists first and watches from that list's resourceVersion, so a deletion between
        two watches (or before the first) is not missed."""
        apps = client.AppsV1Api(self._api)
        selector = f"metadata.name={self._config.name}"
        backoff = _BACKOFF_FIRST
        while True:
            try:
                listed = await apps.list_namespaced_stateful_set(self._ns, field_selector=selector)
                if not listed.items:
                    self._log.warning("backend StatefulSet missing; applying it again")
                    await self.applier.apply_all()
                    continue
                async with watch.Watch() as stream:
                    async for event in stream.stream(
                        apps.list_namespaced_stateful_set,
                        self._ns,
                        field_selector=selector,
                        resource_version=listed.metadata.resource_version,
                        timeout_seconds=_WATCH_SECONDS,
                    ):
                        if event["type"] == "DELETED":
                            self._log.warning("backend StatefulSet deleted; applying it again")
                            await self.applier.apply_all()
                backoff = _BACKOFF_FIRST
            except Exception as exc:  # a supervised loop: log, back off, go on
                self._log.warning("statefulset watch interrupted; retrying", error=repr(exc)[:200])
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX)
