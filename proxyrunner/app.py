"""Composition root: builds the parts in order, serves, and drains.

Order matters. The listener comes up first so that /health answers while backends start
(a StatefulSet can take minutes; liveness must not kill us meanwhile) and a taken port
fails fast. Then the session store, then the backends. Shutdown runs the same list
backwards within ``drain_timeout``:

1. /readyz turns 503 at once; /health stays 200.
2. For ``drain_delay`` everything is still served, new connections included, so the
   endpoint removal reaches every load balancer first.
3. The listener closes, idle keep-alive connections close, open SSE streams end at an
   event boundary with a ``retry:`` hint, and requests already received run to completion.
4. What still runs at the deadline is cancelled and counted in the log.
5. Backends this process started, the store and the HTTP client are closed. A Kubernetes
   backend StatefulSet is left running: other replicas use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Final

import aiohttp
import structlog
from aiohttp import web

from proxyrunner.backends.directory import BackendDirectory
from proxyrunner.config import RunConfig, Secrets, describe
from proxyrunner.errors import StartupError
from proxyrunner.lifecycle import StopSignals
from proxyrunner.logging import get_logger
from proxyrunner.metrics import Metrics
from proxyrunner.proxy.server import ServingState, build_app
from proxyrunner.proxy.streamable import ProxyParts
from proxyrunner.proxy.streams import StreamRegistry
from proxyrunner.proxy.upstream import UpstreamPool
from proxyrunner.sessions.factory import build_store
from proxyrunner.sessions.store import SessionStore

if TYPE_CHECKING:
    from proxyrunner.kube.client import KubeAccess

# Time kept back from drain_timeout for cancelling leftovers and closing clients and
# child processes.
_CLOSE_RESERVE: Final = 2.0
_CANCEL_GRACE: Final = 0.5
_DRAIN_POLL: Final = 0.02
_RECONNECT_HINT_MS: Final = 500


def raise_open_file_limit() -> tuple[int, int]:
    """Lift the soft limit on open files to the hard one; returns (before, after).

    Every client stream holds two sockets (client and backend). Container runtimes often
    start processes with a soft limit of 1024 under a far higher hard one, which would
    cap a replica at a few hundred streams, after which accept() fails with EMFILE.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft >= hard:
        return soft, soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        return soft, soft
    return soft, hard


def _backend_client(config: RunConfig) -> aiohttp.ClientSession:
    # One pooled keep-alive session for every backend request of the process. No total
    # timeout: SSE streams live as long as the session; the time to response headers is
    # bounded per request by backend_timeout.
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30, ttl_dns_cache=10)
    return aiohttp.ClientSession(
        connector=connector,
        # A proxy must never keep one client's backend cookies and replay them for
        # another: cookies pass through in headers, untouched (and untracked, which is
        # also cheaper per request).
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,  # relay bytes as the backend encoded them
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=5),
        # Relayed bodies are never decompressed, so the backend may compress only when
        # the client asked for it: no Accept-Encoding of our own.
        skip_auto_headers=("User-Agent", "Accept-Encoding"),
    )


def _build_directory(
    config: RunConfig,
    metrics: Metrics,
    log: structlog.stdlib.BoundLogger,
    client: aiohttp.ClientSession,
    kube: KubeAccess | None,
) -> BackendDirectory:
    if config.backend.runtime == "kubernetes":
        from proxyrunner.kube.directory import KubernetesBackendDirectory

        if kube is None:
            raise StartupError("the kubernetes runtime needs Kubernetes API access")
        return KubernetesBackendDirectory(
            config, kube.api, metrics, log, kube.namespace, kube.pod_address_map
        )
    from proxyrunner.backends.local import LocalBackendDirectory

    return LocalBackendDirectory(config, metrics, log, client)


class ProxyProcess:
    """One proxyrunner process: ``await ProxyProcess(...).run()`` returns the exit code."""

    def __init__(self, config: RunConfig, secrets: Secrets, kube: KubeAccess | None = None) -> None:
        self.config = config
        self._secrets = secrets
        self._kube = kube
        self.log = get_logger().bind(server=config.name)
        self.metrics = Metrics()
        self.signals = StopSignals(self.log)
        self.state = ServingState()
        self.streams = StreamRegistry()
        self._deadline = float("inf")

    async def run(self) -> int:
        config = self.config
        self.signals.install()
        client = _backend_client(config)
        # The hot path's pooled client: same keep-alive and connect bounds as the session.
        upstream = UpstreamPool(keepalive_timeout=30.0, connect_timeout=5.0)
        store: SessionStore | None = None
        directory: BackendDirectory | None = None
        runner: web.AppRunner | None = None
        try:
            store = build_store(config, self._secrets, self.metrics, self.log)
            directory = _build_directory(config, self.metrics, self.log, client, self._kube)
            parts = ProxyParts(
                config, store, directory, self.metrics, client, self.streams, self.log, upstream
            )
            app = build_app(parts, self.state)
            app.on_shutdown.append(self._finish_work)
            # The waiting happens in _finish_work; aiohttp's own wait only has to cancel
            # what outlived the drain deadline.
            runner = web.AppRunner(
                app, handle_signals=False, access_log=None, shutdown_timeout=_CANCEL_GRACE
            )
            await runner.setup()
            await self._listen(runner)
            before, after = raise_open_file_limit()
            self.log.info("starting", open_files_limit=after, **describe(config))
            if before != after:
                self.log.debug("open files limit raised", soft_before=before, soft=after)
            if not await self._until_stop(store.start(), "session store"):
                return self._exit_code()
            if not await self._until_stop(directory.start(), "backends"):
                return self._exit_code()
            self.log.info("ready", backends=directory.describe(), store=store.health().reason)
            await self.signals.stop_requested.wait()
            if await self._drain(runner):
                runner = None  # cleaned up by the drain
            return self._exit_code()
        finally:
            await self._release(runner, directory, store, client, upstream)
            self.signals.uninstall()

    def _exit_code(self) -> int:
        return 1 if self.signals.force_requested.is_set() else 0

    async def _listen(self, runner: web.AppRunner) -> None:
        listen = self.config.listen
        site = web.TCPSite(runner, listen.host, listen.port, reuse_address=True, backlog=1024)
        try:
            await site.start()
        except OSError as exc:
            raise StartupError(
                f"cannot listen on {listen.host}:{listen.port}: {exc.strerror or exc}"
            ) from exc
        for address in runner.addresses:
            host, port = address[0], address[1]
            self.log.info("listening", url=f"http://{host}:{port}/mcp")

    async def _until_stop(self, start: Awaitable[None], what: str) -> bool:
        """Run a start step unless a stop signal arrives first; False if stopped."""
        task = asyncio.ensure_future(start)
        stop = asyncio.ensure_future(self.signals.stop_requested.wait())
        try:
            await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if task.done():
            task.result()  # re-raise a startup failure
            return True
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        self.log.info("stopped while starting", step=what)
        return False

    async def _finish_work(self, app: web.Application) -> None:
        """Runs once the listener is closed: let requests in flight complete, then end the
        listen streams (clients reconnect elsewhere), all before the drain deadline.

        Listen streams stay open while other work finishes because a client whose listen
        stream cannot reconnect may give up its whole session, results in flight included.
        """
        traffic = self.streams
        await self._wait_for(lambda: traffic.inflight <= traffic.open, "requests")
        traffic.close_all(_RECONNECT_HINT_MS)
        await self._wait_for(lambda: traffic.inflight == 0, "streams")

    async def _wait_for(self, done: Callable[[], bool], what: str) -> None:
        loop = asyncio.get_running_loop()
        while not done() and not self.signals.force_requested.is_set():
            if loop.time() >= self._deadline:
                self.log.warning("drain deadline reached", waiting_for=what)
                return
            await asyncio.sleep(_DRAIN_POLL)

    async def _drain(self, runner: web.AppRunner) -> bool:
        """The graceful drain; True when it cleaned the runner up, False when a second
        signal cut it short (the caller then releases everything at once)."""
        config = self.config
        loop = asyncio.get_running_loop()
        started = loop.time()
        self._deadline = started + config.drain.timeout - _CLOSE_RESERVE
        self.state.draining = True
        self.log.info(
            "draining",
            drain_delay=config.drain.delay,
            drain_timeout=config.drain.timeout,
            inflight=self.streams.inflight,
        )
        if await self.signals.wait_or_force(config.drain.delay):
            return False
        cleanup = asyncio.ensure_future(runner.cleanup())
        force = asyncio.ensure_future(self.signals.force_requested.wait())
        await asyncio.wait({cleanup, force}, return_when=asyncio.FIRST_COMPLETED)
        force.cancel()
        if not cleanup.done():
            cleanup.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await cleanup
            return False
        cleanup.result()
        self.log.info(
            "drained",
            seconds=round(loop.time() - started, 3),
            cancelled=self.streams.cancelled,
        )
        return True

    async def _release(
        self,
        runner: web.AppRunner | None,
        directory: BackendDirectory | None,
        store: SessionStore | None,
        client: aiohttp.ClientSession,
        upstream: UpstreamPool,
    ) -> None:
        if runner is not None:
            await runner.cleanup()
        for name, closer in (
            ("backends", directory.close if directory else None),
            ("session store", store.close if store else None),
            ("http client", client.close),
            ("pooled http client", upstream.close),
        ):
            if closer is None:
                continue
            try:
                await closer()
            except Exception:
                self.log.exception("error while closing", part=name)
