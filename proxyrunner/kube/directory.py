"""Backends on Kubernetes: the pods of the StatefulSet this proxy applies.

Pods are watched by label selector rather than through EndpointSlices: a pod's name is
the identity sessions are pinned to, and the pod object carries it with its readiness and
IP in one event (an EndpointSlice endpoint names its pod only through targetRef, and
kube-apiserver refuses loopback addresses in EndpointSlices, which the tests need).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final

import aiohttp
import structlog
from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client.exceptions import ApiException
from yarl import URL

from proxyrunner.backends.channel import MessageChannel
from proxyrunner.backends.directory import Backend
from proxyrunner.backends.stdio import StdioBridge
from proxyrunner.config import RunConfig
from proxyrunner.kube import workload
from proxyrunner.kube.apply import WorkloadApplier
from proxyrunner.kube.attach import open_attach
from proxyrunner.metrics import Metrics
from proxyrunner.tasks import Supervisor

Resolver = Callable[[str, str, int], URL]
"""(pod name, pod IP, port) -> the pod's MCP endpoint URL."""
Attacher = Callable[[str], Awaitable[MessageChannel]]
"""pod name -> an attach stream to the stdio server in it."""

_WATCH_SECONDS: Final = 300
_BACKOFF_FIRST: Final = 0.2
_BACKOFF_MAX: Final = 10.0
_ATTACH_STABLE: Final = 30.0  # an attach stream up this long resets the backoff


def _reason(exc: BaseException) -> str:
    """Why an API call failed, in a few words (never a response body)."""
    if isinstance(exc, ApiException):
        return f"{exc.status} {exc.reason}"
    return f"{exc.__class__.__name__}: {str(exc)[:200]}"


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


def pod_attacher(
    api: client.ApiClient,
    namespace: str,
    log: structlog.stdlib.BoundLogger,
    address_map: Mapping[str, str] | None = None,
) -> Attacher:
    """Attach through the API server by default. For a pod named in ``address_map``, the
    mapped URL stands in for the API server (same identity): the hook the tests use,
    since the test API server has no kubelet to attach to."""
    overrides = dict(address_map or {})

    async def attach(pod: str) -> MessageChannel:
        if pod not in overrides:
            return await open_attach(api, namespace, pod, log)
        configuration = copy.copy(api.configuration)
        configuration.host = overrides[pod]
        async with client.ApiClient(configuration) as mapped:
            return await open_attach(mapped, namespace, pod, log)

    return attach


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
        namespace: str,
        address_map: Mapping[str, str] | None = None,
        resolve: Resolver | None = None,
        attach: Attacher | None = None,
    ) -> None:
        """``namespace`` is the workload's (resolved at startup: the RunConfig's, else the
        pod's); ``address_map`` maps pod names to URLs (see ``pod_url_resolver``)."""
        self._config = config
        self._api = api
        self._metrics = metrics
        self._ns = namespace
        self._log = log.bind(namespace=self._ns, statefulset=config.name)
        backend = config.backend
        self._resolve = resolve or pod_url_resolver(backend.transport, address_map)
        self._stdio = backend.transport == "stdio"
        self._attach = attach or pod_attacher(api, self._ns, self._log, address_map)
        self._bridges: dict[str, StdioBridge] = {}
        self._bridge_tasks: dict[str, asyncio.Task[None]] = {}
        self._port = workload.target_port(config)
        self._backends: dict[str, Backend] = {}
        self._tasks = Supervisor(self._log)
        self.applier = WorkloadApplier(api, config, self._ns, metrics, self._log)
        if self._stdio and (backend.replicas or 0) > 1:
            self._log.warning("stdio transport: backend_replicas capped at 1")

    async def start(self) -> None:
        if self._stdio:
            # A stdio pod is ready only while attached, which no pod event announces.
            self._metrics.backends_ready.set_function(lambda: len(self.ready_backends()))
        await self.applier.apply_all()
        await self.applier.wait_ready(self._config.kubernetes.statefulset_ready_timeout)
        await self._list_pods()
        self._tasks.spawn("watch backend pods", self._watch_pods)
        self._tasks.spawn("watch backend statefulset", self._watch_statefulset)

    async def close(self) -> None:
        await self._tasks.close()
        for name in list(self._bridge_tasks):
            await self._detach(name)

    def ready_backends(self) -> Sequence[Backend]:
        return [b for b in map(self._effective, self._backends.values()) if b.ready]

    def get(self, name: str) -> Backend | None:
        backend = self._backends.get(name)
        return self._effective(backend) if backend is not None else None

    def describe(self) -> str:
        ready = len(self.ready_backends())
        return f"{ready} of {len(self._backends)} backend pods ready"

    # ------------------------------------------------------------------ stdio pods

    def _effective(self, backend: Backend) -> Backend:
        """For a stdio pod, the backend is this process's bridge to it, ready while the
        pod is ready and the attach stream is up."""
        if not self._stdio:
            return backend
        bridge = self._bridges.get(backend.name)
        if bridge is None or not bridge.port:
            return Backend(backend.name, backend.url, False)
        path = "/sse" if self._config.backend.served_protocol == "sse" else "/mcp"
        url = URL.build(scheme="http", host="127.0.0.1", port=bridge.port, path=path)
        return Backend(backend.name, url, backend.ready and bridge.attached)

    def _track_attachment(self, name: str, present: bool) -> None:
        if present and name not in self._bridge_tasks:
            bridge = StdioBridge(
                name,
                self._log,
                max_body=self._config.listen.max_request_body,
                session_idle=self._config.sessions.ttl,
            )
            self._bridges[name] = bridge
            self._bridge_tasks[name] = asyncio.get_running_loop().create_task(
                self._keep_attached(name, bridge), name=f"attach {name}"
            )
        elif not present and name in self._bridge_tasks:
            task = self._bridge_tasks.pop(name)
            task.cancel()
            self._bridges.pop(name, None)

    async def _detach(self, name: str) -> None:
        task = self._bridge_tasks.pop(name, None)
        self._bridges.pop(name, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _keep_attached(self, name: str, bridge: StdioBridge) -> None:
        """Keep one attach stream to the pod's stdio server open while the pod exists."""
        log = self._log.bind(backend=name)
        loop = asyncio.get_running_loop()
        try:
            await bridge.start("127.0.0.1", 0)
            backoff = _BACKOFF_FIRST
            while True:
                try:
                    channel = await self._attach(name)
                except (ApiException, aiohttp.ClientError, OSError, TimeoutError) as exc:
                    log.warning(
                        "cannot attach to the backend pod; retrying",
                        error=_reason(exc),
                        retry_in=backoff,
                    )
                else:
                    log.info("attached to the backend pod")
                    started = loop.time()
                    try:
                        await bridge.serve(channel)
                        reason = getattr(channel, "ended_because", None)
                    except (aiohttp.ClientError, OSError, ValueError) as exc:
                        reason = _reason(exc)
                    log.warning("attach stream to the backend pod ended", reason=reason)
                    if loop.time() - started > _ATTACH_STABLE:
                        backoff = _BACKOFF_FIRST
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX)
        finally:
            await bridge.close()

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
        if self._stdio:
            self._track_attachment(name, present=not deleted)
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
        for gone in [name for name in self._bridge_tasks if name not in self._backends]:
            self._track_attachment(gone, present=False)
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
