"""The MCPServer controller: watches turn into keys, keys into reconciles.

The rules, as a Kubernetes work queue has them: a key waits in the queue at most once
however many events name it; one key is never reconciled by two workers at once (an
event during a reconcile queues it again for afterwards); a failed reconcile is retried
with backoff. Watches on the children (and on the backend StatefulSet the proxy creates)
queue their MCPServer, so a child deleted or edited by hand is put back within moments;
a periodic resync catches anything a watch missed.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

import aiohttp
import structlog
from kubernetes_asyncio import client

from proxyrunner.backoff import Backoff
from proxyrunner.kube.errors import KubeError, short_reason
from proxyrunner.operator import children
from proxyrunner.operator.objects import Objects, watch_events
from proxyrunner.operator.spec import KIND
from proxyrunner.tasks import Supervisor

Key = tuple[str, str]  # (namespace, name)
_GONE: Final = 410

# Kinds watched for changes to what the operator owns, with the selector that finds them.
_CHILD_WATCHES: Final = (
    *(
        (kind, f"app.kubernetes.io/managed-by={children.MANAGED_BY}")
        for kind in ("ConfigMap", "Deployment", "Service", "ServiceAccount", "Role", "RoleBinding")
    ),
    # The proxy applies the backend StatefulSet with its own label; its name is the MCPServer's.
    ("StatefulSet", "app.kubernetes.io/managed-by=proxyrunner"),
)


@dataclass(frozen=True, slots=True)
class ControllerSettings:
    namespace: str | None = None
    """Watch one namespace; None: all of them."""
    workers: int = 2
    resync: float = 300.0
    """Seconds between full re-queues of every MCPServer."""


class WorkQueue:
    """Keys to reconcile: deduplicated, one worker per key at a time."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[Key] = asyncio.Queue()
        self._waiting: set[Key] = set()
        self._active: set[Key] = set()
        self._again: set[Key] = set()

    def add(self, key: Key) -> None:
        if key in self._active:
            self._again.add(key)
        elif key not in self._waiting:
            self._waiting.add(key)
            self._queue.put_nowait(key)

    async def take(self) -> Key:
        key = await self._queue.get()
        self._waiting.discard(key)
        self._active.add(key)
        return key

    def done(self, key: Key) -> None:
        self._active.discard(key)
        if key in self._again:
            self._again.discard(key)
            self.add(key)

    def idle(self) -> bool:
        return not (self._waiting or self._active or self._again)


def _owner_key(obj: dict[str, Any], kind: str) -> Key | None:
    meta = obj.get("metadata") or {}
    namespace = str(meta.get("namespace") or "")
    if kind == "StatefulSet":
        return namespace, str(meta.get("name"))
    for owner in meta.get("ownerReferences") or []:
        if owner.get("kind") == KIND and owner.get("controller"):
            return namespace, str(owner.get("name"))
    return None


class Controller:
    def __init__(
        self,
        api: client.ApiClient,
        objects: Objects,
        reconcile: Callable[[str, str], Awaitable[None]],
        settings: ControllerSettings,
        log: structlog.stdlib.BoundLogger,
    ) -> None:
        self._api = api
        self._objects = objects
        self._reconcile = reconcile
        self._s = settings
        self._log = log
        self.queue = WorkQueue()
        self._failures: dict[Key, Backoff] = {}
        self._retries: set[asyncio.TimerHandle] = set()

    async def run(self) -> None:
        """Watch and reconcile until cancelled."""
        tasks = Supervisor(self._log)
        try:
            tasks.spawn("watch mcpservers", lambda: self._watch(KIND, None, self._on_server))
            for kind, selector in _CHILD_WATCHES:
                on_child = functools.partial(self._on_child, kind)
                tasks.spawn(
                    f"watch {kind.lower()}s",
                    functools.partial(self._watch, kind, selector, on_child),
                )
            for i in range(self._s.workers):
                tasks.spawn(f"reconcile worker {i}", self._work)
            tasks.spawn("resync", self._resync)
            await asyncio.Event().wait()
        finally:
            for handle in self._retries:
                handle.cancel()
            self._retries.clear()
            await tasks.close()

    def _on_server(self, event_type: str, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        if event_type != "DELETED":
            self.queue.add((str(meta.get("namespace")), str(meta.get("name"))))

    def _on_child(self, kind: str, _event_type: str, obj: dict[str, Any]) -> None:
        key = _owner_key(obj, kind)
        if key is not None:
            self.queue.add(key)

    async def _watch(
        self,
        kind: str,
        selector: str | None,
        on_event: Callable[[str, dict[str, Any]], None],
    ) -> None:
        """List, queue what is there, then watch from the list's resourceVersion; list
        again when the watch cannot resume (410) or breaks."""
        backoff = Backoff(first=0.5, maximum=30.0)
        version: str | None = None
        while True:
            try:
                if version is None:
                    listed = await self._objects.list(
                        kind, self._s.namespace, label_selector=selector
                    )
                    for item in listed.get("items") or []:
                        item.setdefault("metadata", {})
                        on_event("ADDED", item)
                    version = str(listed["metadata"]["resourceVersion"])
                async for event_type, obj in watch_events(
                    self._api, kind, self._s.namespace, version, label_selector=selector
                ):
                    version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
                    if event_type != "BOOKMARK":
                        on_event(event_type, obj)
                backoff.reset()  # the server ended a healthy watch
            except KubeError as exc:
                if exc.status == _GONE:
                    version = None
                    continue
                version = None
                delay = backoff.next_delay()
                self._log.warning(
                    "watch failed; listing again",
                    kind=kind,
                    error=short_reason(exc),
                    retry_in=round(delay, 3),
                )
                await asyncio.sleep(delay)
            except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
                version = None
                delay = backoff.next_delay()
                self._log.warning(
                    "watch interrupted; listing again",
                    kind=kind,
                    error=exc.__class__.__name__,
                    retry_in=round(delay, 3),
                )
                await asyncio.sleep(delay)

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            key = await self.queue.take()
            try:
                await self._reconcile(*key)
            except KubeError as exc:
                backoff = self._failures.setdefault(key, Backoff(first=0.2, maximum=60.0))
                delay = backoff.next_delay()
                self._log.warning(
                    "reconcile failed; retrying",
                    mcpserver="/".join(key),
                    error=short_reason(exc),
                    retry_in=round(delay, 3),
                )
                self._retry_later(loop, key, delay)
            else:
                self._failures.pop(key, None)
            finally:
                self.queue.done(key)

    def _retry_later(self, loop: asyncio.AbstractEventLoop, key: Key, delay: float) -> None:
        def fire() -> None:
            self._retries.discard(handle)
            self.queue.add(key)

        handle = loop.call_later(delay, fire)
        self._retries.add(handle)

    async def _resync(self) -> None:
        while True:
            await asyncio.sleep(self._s.resync)
            try:
                listed = await self._objects.list(KIND, self._s.namespace)
            except KubeError as exc:
                self._log.warning("resync list failed", error=short_reason(exc))
                continue
            for item in listed.get("items") or []:
                self._on_server("ADDED", item)
