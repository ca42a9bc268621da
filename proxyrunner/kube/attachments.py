"""stdio backend pods: one attach stream per pod, each served over HTTP by a bridge.

The one rule here: an attach loop lives exactly as long as its pod, and runs under the
directory's Supervisor. It handles the failures it expects (a refused attach, a stream
that ends) by itself, re-attaching with backoff, the backoff reset by a stream that stayed
up; anything else is the supervisor's to log and restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Callable, Iterable
from typing import Final

import aiohttp
import structlog
from kubernetes_asyncio.client.exceptions import ApiException
from yarl import URL

from proxyrunner.backends.channel import MessageChannel
from proxyrunner.backends.directory import Backend
from proxyrunner.backends.stdio import StdioBridge
from proxyrunner.backoff import Backoff
from proxyrunner.kube.errors import KubeError, short_reason
from proxyrunner.tasks import Supervisor

Attacher = Callable[[str], Awaitable[MessageChannel]]
"""pod name -> an attach stream to the stdio server in it."""

_BACKOFF_FIRST: Final = 0.2
_BACKOFF_MAX: Final = 10.0
_ATTACH_STABLE: Final = 30.0  # an attach stream up this long resets the backoff


class PodAttachments:
    def __init__(
        self,
        attach: Attacher,
        tasks: Supervisor,
        log: structlog.stdlib.BoundLogger,
        *,
        path: str,
        new_bridge: Callable[[str], StdioBridge],
    ) -> None:
        """``new_bridge(pod name)`` makes the bridge one attach loop serves."""
        self._attach, self._tasks, self._log = attach, tasks, log
        self._path = path
        self._new_bridge = new_bridge
        self._bridges: dict[str, StdioBridge] = {}
        self._pods: set[str] = set()  # pods whose attach loop runs under self._tasks
        self._stopping: set[asyncio.Task[None]] = set()

    def track(self, name: str, present: bool) -> None:
        """Start the pod's attach loop when it appears, stop it when it is gone."""
        if present and name not in self._pods:
            self._pods.add(name)
            self._tasks.spawn(f"attach {name}", functools.partial(self._keep_attached, name))
        elif not present and name in self._pods:
            self._pods.discard(name)
            self._bridges.pop(name, None)
            stopping = self._tasks.cancel(f"attach {name}")
            if stopping is not None:  # it closes its bridge as it ends; close() awaits that
                self._stopping.add(stopping)
                stopping.add_done_callback(self._stopping.discard)

    def keep_only(self, names: Iterable[str]) -> None:
        """Stop the loops of pods not in ``names`` (after a fresh list of the pods)."""
        present = set(names)
        for gone in [name for name in self._pods if name not in present]:
            self.track(gone, present=False)

    def backend(self, pod: Backend) -> Backend:
        """The pod as the data path reaches it: this process's bridge to it, ready while
        the pod is ready and the attach stream is up."""
        bridge = self._bridges.get(pod.name)
        if bridge is None or not bridge.port:
            return Backend(pod.name, pod.url, False)
        url = URL.build(scheme="http", host="127.0.0.1", port=bridge.port, path=self._path)
        return Backend(pod.name, url, pod.ready and bridge.attached)

    async def close(self) -> None:
        """Wait for the loops of pods that went away (the supervisor closes the others)."""
        for task in list(self._stopping):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _keep_attached(self, name: str) -> None:
        """Keep one attach stream to the pod's stdio server open while the pod exists.

        Each run has a bridge of its own: if the supervisor restarts this loop after an
        unexpected failure, it starts from a fresh bridge rather than a broken one.
        """
        log = self._log.bind(backend=name)
        loop = asyncio.get_running_loop()
        backoff = Backoff(first=_BACKOFF_FIRST, maximum=_BACKOFF_MAX, reset_after=_ATTACH_STABLE)
        bridge = self._new_bridge(name)
        self._bridges[name] = bridge
        try:
            await bridge.start("127.0.0.1", 0)
            while True:
                try:
                    channel = await self._attach(name)
                except (ApiException, KubeError, aiohttp.ClientError, OSError, TimeoutError) as exc:
                    delay = backoff.next_delay()
                    log.warning(
                        "cannot attach to the backend pod; retrying",
                        error=short_reason(exc),
                        retry_in=round(delay, 3),
                    )
                else:
                    log.info("attached to the backend pod")
                    started = loop.time()
                    try:
                        await bridge.serve(channel)
                        reason = getattr(channel, "ended_because", None)
                    except (aiohttp.ClientError, OSError, ValueError) as exc:
                        reason = short_reason(exc)
                    log.warning("attach stream to the backend pod ended", reason=reason)
                    backoff.ran_for(loop.time() - started)
                    delay = backoff.next_delay()
                await asyncio.sleep(delay)
        finally:
            if self._bridges.get(name) is bridge:
                del self._bridges[name]
            await bridge.close()
