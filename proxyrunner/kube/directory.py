"""Backends on Kubernetes: the pods of the StatefulSet this proxy applies.

Pods are watched by label selector rather than through EndpointSlices: a pod's name is
the identity sessions are pinned to, and the pod object carries it with its readiness and
IP in one event (an EndpointSlice endpoint names its pod only through targetRef, and
kube-apiserver refuses loopback addresses in EndpointSlices, which the tests need).
"""

from __future__ import annotations

import asyncio
import copy
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

import aiohttp
import structlog
from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client.exceptions import ApiException
from yarl import URL

from proxyrunner.backends.channel import MessageChannel
from proxyrunner.backends.directory import Backend
from proxyrunner.backends.stdio import StdioBridge
from proxyrunner.backoff import Backoff
from proxyrunner.config import RunConfig
from proxyrunner.errors import ProxyRunnerError, StartupError
from proxyrunner.kube import workload
from proxyrunner.kube.apply import WorkloadApplier
from proxyrunner.kube.attach import open_attach
from proxyrunner.kube.attachments import Attacher, PodAttachments
from proxyrunner.kube.client import call
from proxyrunner.kube.errors import KubeError, short_reason, translate
from proxyrunner.metrics import Metrics
from proxyrunner.tasks import Supervisor

if TYPE_CHECKING:
    from proxyrunner.telemetry.runtime import Telemetry

Resolver = Callable[[str, str, int], URL]
"""(pod name, pod IP, port) -> the pod's MCP endpoint URL."""

_WATCH_SECONDS: Final = 300
_BACKOFF_FIRST: Final = 0.2
_BACKOFF_MAX: Final = 10.0
_GONE: Final = 410  # a watch's resourceVersion is too old: list again


def _backoff() -> Backoff:
    return Backoff(first=_BACKOFF_FIRST, maximum=_BACKOFF_MAX, reset_after=None)


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


def pod_ip(pod: Mapping[str, Any]) -> str | None:
    """The pod's primary address. The API server keeps ``podIP`` equal to ``podIPs[0]``
    (it fills one from the other), so this one field covers IPv4, IPv6 and dual stack."""
    ip = (pod.get("status") or {}).get("podIP")
    return str(ip) if ip else None


def pod_ready(pod: Mapping[str, Any]) -> bool:
    """Ready: not being deleted, has an address, and its Ready condition is True."""
    if (pod.get("metadata") or {}).get("deletionTimestamp") or not pod_ip(pod):
        return False
    for condition in (pod.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Ready":
            return bool(condition.get("status") == "True")
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
        telemetry: Telemetry | None = None,
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
        self._port = workload.target_port(config)
        self._backends: dict[str, Backend] = {}
        self._strays: set[str] = set()  # labelled pods not ours, already warned about
        self._tasks = Supervisor(self._log)
        self._stdio: PodAttachments | None = None
        if backend.transport == "stdio":
            self._stdio = PodAttachments(
                attach or pod_attacher(api, self._ns, self._log, address_map),
                self._tasks,
                self._log,
                path="/sse" if backend.served_protocol == "sse" else "/mcp",
                new_bridge=functools.partial(
                    StdioBridge,
                    log=self._log,
                    max_body=config.listen.max_request_body,
                    session_idle=config.sessions.ttl,
                    telemetry=telemetry,
                ),
            )
        self.applier = WorkloadApplier(api, config, self._ns, metrics, self._log)
        if self._stdio and (backend.replicas or 0) > 1:
            self._log.warning("stdio transport: backend_replicas capped at 1")

    async def start(self) -> None:
        if self._stdio is not None:
            # A stdio pod is ready only while attached, which no pod event announces.
            self._metrics.backends_ready.set_function(lambda: len(self.ready_backends()))
        try:
            await self.applier.apply_all()
            await self.applier.wait_ready(self._config.kubernetes.statefulset_ready_timeout)
            await self._list_pods()
        except KubeError as exc:
            raise StartupError(str(exc)) from exc
        self._tasks.spawn("watch backend pods", self._watch_pods)
        self._tasks.spawn("watch backend statefulset", self._watch_statefulset)

    async def close(self) -> None:
        await self._tasks.close()
        if self._stdio is not None:
            await self._stdio.close()

    def ready_backends(self) -> Sequence[Backend]:
        return [b for b in map(self._effective, self._backends.values()) if b.ready]

    def get(self, name: str) -> Backend | None:
        backend = self._backends.get(name)
        return self._effective(backend) if backend is not None else None

    def describe(self) -> str:
        ready = len(self.ready_backends())
        return f"{ready} of {len(self._backends)} backend pods ready"

    def _effective(self, backend: Backend) -> Backend:
        return backend if self._stdio is None else self._stdio.backend(backend)

    # ------------------------------------------------------------------ internals

    def _update(self, pod: Mapping[str, Any], deleted: bool = False) -> None:
        name = str(pod["metadata"]["name"])
        if not deleted and not workload.is_statefulset_pod(
            pod, self._config.name, self.applier.uid
        ):
            self._stray(name)
            deleted = True  # never a backend; if it was one (an older StatefulSet's), no more
        elif deleted:
            self._strays.discard(name)
        before = self._backends.get(name)
        if deleted:
            self._backends.pop(name, None)
        else:
            ip = pod_ip(pod)
            url = self._resolve(name, ip, self._port) if ip else URL("http://unassigned.invalid/")
            self._backends[name] = Backend(name, url, pod_ready(pod))
        if self._stdio is not None:
            self._stdio.track(name, present=not deleted)
        after = self._backends.get(name)
        if (before is None or not before.ready) != (after is None or not after.ready):
            self._log.info(
                "backend ready" if after is not None and after.ready else "backend not ready",
                backend=name,
            )
        self._metrics.backends_ready.set(len(self.ready_backends()))

    def _stray(self, name: str) -> None:
        if name in self._strays:
            return
        self._strays.add(name)
        self._metrics.stray_pods.inc()
        self._log.warning(
            "ignoring a pod with the backend's labels that the StatefulSet does not own",
            pod=name,
            statefulset_uid=self.applier.uid,
        )

    def _selector(self) -> str:
        return ",".join(f"{k}={v}" for k, v in workload.selector_labels(self._config.name).items())

    async def _list_pods(self) -> str:
        """All backend pods, replacing what we knew; returns the list's resourceVersion."""
        core: Any = client.CoreV1Api(self._api)  # a raw call: see kube.client.call
        pods = await call(
            "list",
            "pods",
            self._ns,
            core.list_namespaced_pod(
                self._ns, label_selector=self._selector(), _preload_content=False
            ),
        )
        self._backends.clear()
        items = pods.get("items") or []
        self._strays &= {str(pod["metadata"]["name"]) for pod in items}  # warned once each
        for pod in items:
            self._update(pod)
        if self._stdio is not None:
            self._stdio.keep_only(self._backends)
        return str(pods["metadata"]["resourceVersion"])

    async def _watch_pods(self) -> None:
        core = client.CoreV1Api(self._api)
        backoff = _backoff()
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
                        pod = event["raw_object"]
                        version = str(pod["metadata"]["resourceVersion"])
                        self._update(pod, deleted=event["type"] == "DELETED")
            except ApiException as exc:  # the watch's own errors come untranslated
                failure = translate(exc, "watch", "pods", self._ns)
            except KubeError as exc:
                failure = exc
            except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
                version = None
                delay = backoff.next_delay()
                self._log.warning(
                    "pod watch interrupted; retrying",
                    error=exc.__class__.__name__,
                    retry_in=round(delay, 3),
                )
                await asyncio.sleep(delay)
                continue
            else:
                backoff.reset()  # the server ended a healthy watch (timeout_seconds)
                continue
            if failure.status == _GONE:
                version = None
                continue
            delay = backoff.next_delay()
            self._log.warning(
                "pod watch failed; retrying",
                status=failure.status,
                error=short_reason(failure),
                retry_in=round(delay, 3),
            )
            await asyncio.sleep(delay)

    async def _reapply(self) -> None:
        """Apply again; the new StatefulSet has a new UID, so the pods of the old one are
        no longer backends: list the pods again to forget them."""
        await self.applier.apply_all()
        await self._list_pods()

    async def _watch_statefulset(self) -> None:
        """Apply again if someone deletes the StatefulSet while we run. Each (re)start
        lists first and watches from that list's resourceVersion, so a deletion between
        two watches (or before the first) is not missed."""
        apps: Any = client.AppsV1Api(self._api)
        selector = f"metadata.name={self._config.name}"
        backoff = _backoff()
        while True:
            try:
                listed = await call(
                    "list",
                    "statefulsets",
                    self._ns,
                    apps.list_namespaced_stateful_set(
                        self._ns, field_selector=selector, _preload_content=False
                    ),
                )
                if not listed.get("items"):
                    self._log.warning("backend StatefulSet missing; applying it again")
                    await self._reapply()
                    continue
                async with watch.Watch() as stream:
                    async for event in stream.stream(
                        apps.list_namespaced_stateful_set,
                        self._ns,
                        field_selector=selector,
                        resource_version=listed["metadata"]["resourceVersion"],
                        timeout_seconds=_WATCH_SECONDS,
                    ):
                        if event["type"] == "DELETED":
                            self._log.warning("backend StatefulSet deleted; applying it again")
                            await self._reapply()
            except (
                ApiException,
                ProxyRunnerError,  # a KubeError, or the applier giving up after conflicts
                aiohttp.ClientError,
                TimeoutError,
                OSError,
                ValueError,
            ) as exc:
                delay = backoff.next_delay()
                self._log.warning(
                    "statefulset watch interrupted; retrying",
                    error=short_reason(exc),
                    retry_in=round(delay, 3),
                )
                await asyncio.sleep(delay)
            else:
                backoff.reset()
