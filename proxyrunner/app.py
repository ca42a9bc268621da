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
import functools
import resource
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Final

import aiohttp
import structlog
from aiohttp import web

from proxyrunner import __version__, heap
from proxyrunner.backends.directory import BackendDirectory
from proxyrunner.config import RunConfig, Secrets, describe
from proxyrunner.errors import StartupError
from proxyrunner.lifecycle import StopSignals, unless
from proxyrunner.logging import get_logger
from proxyrunner.metrics import Metrics
from proxyrunner.proxy.connections import ConnectionGuard, GuardedAppRunner
from proxyrunner.proxy.forward import Forwarder
from proxyrunner.proxy.guard import build_guard
from proxyrunner.proxy.parts import ProxyParts
from proxyrunner.proxy.server import build_app
from proxyrunner.proxy.upstream import UpstreamPool
from proxyrunner.sessions.factory import build_store
from proxyrunner.traffic import Traffic

if TYPE_CHECKING:
    from proxyrunner.kube.client import KubeAccess
    from proxyrunner.telemetry.runtime import Telemetry

# Time kept back from drain_timeout for cancelling leftovers and closing clients and
# child processes: the waiting for work ends this long before the one deadline.
_CLOSE_RESERVE: Final = 2.0
_CANCEL_GRACE: Final = 0.5
_RECONNECT_HINT_MS: Final = 500
# Closing with no drain before it (a failed start, a forced stop) gets this long.
_CLOSE_WITHOUT_DRAIN: Final = 5.0


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
    telemetry: Telemetry | None = None,
) -> BackendDirectory:
    if config.backend.runtime == "kubernetes":
        from proxyrunner.kube.directory import KubernetesBackendDirectory

        if kube is None:
            raise StartupError("the kubernetes runtime needs Kubernetes API access")
        return KubernetesBackendDirectory(
            config,
            kube.api,
            metrics,
            log,
            kube.namespace,
            kube.pod_address_map,
            telemetry=telemetry,
        )
    from proxyrunner.backends.local import LocalBackendDirectory

    return LocalBackendDirectory(config, metrics, log, client, telemetry)


class ProxyProcess:
    """One proxyrunner process: ``await ProxyProcess(...).run()`` returns the exit code."""

    def __init__(
        self,
        config: RunConfig,
        secrets: Secrets,
        kube: KubeAccess | None = None,
        replica: str = "",
    ) -> None:
        """``replica`` names this process in audit events (the CLI passes the pod name);
        empty: the server's name."""
        self.config = config
        self._secrets = secrets
        self._kube = kube
        self._replica = replica
        self.log = get_logger().bind(server=config.name)
        self.metrics = Metrics()
        self.signals = StopSignals(self.log)
        self.traffic = Traffic()
        self._deadline = float("inf")
        """Loop time by which everything has ended once a drain started."""

    async def run(self) -> int:
        config = self.config
        self.signals.install()
        closers = Closers(self.log)
        try:
            telemetry = self._telemetry()
            if telemetry is not None:
                # Pushed first, so closed last: after the drain, with what it traced.
                closers.push("telemetry", telemetry.close)
            client = _backend_client(config)
            closers.push("http client", client.close)
            # The hot path's pooled client: same keep-alive and connect bounds as the session.
            pool = UpstreamPool(keepalive_timeout=30.0, connect_timeout=5.0)
            closers.push("pooled http client", pool.close)
            store = build_store(
                config, self._secrets, self.metrics, self.log, self.traffic.busy, telemetry
            )
            closers.push("session store", store.close)
            directory = _build_directory(
                config, self.metrics, self.log, client, self._kube, telemetry
            )
            closers.push("backends", directory.close)
            forwarder = Forwarder(
                client,
                pool,
                timeout=config.backend.timeout,
                max_body=config.listen.max_request_body,
                body_timeout=config.limits.body_timeout,
                trust_proxy_headers=config.listen.trust_proxy_headers,
                metrics=self.metrics,
                log=self.log,
            )
            guard, guard_closers = build_guard(
                config, self._secrets, self.metrics, self.log, self._replica
            )
            for name, closer in guard_closers:
                closers.push(name, closer)
            if not config.identity.authenticated:
                self.log.warning(
                    "the MCP endpoint is unauthenticated: anyone who can reach it can use "
                    "the MCP server (set oidc_config to require OAuth access tokens)"
                )
            parts = ProxyParts(
                config,
                store,
                directory,
                self.metrics,
                self.traffic,
                forwarder,
                self.log,
                guard,
                telemetry,
            )
            app = build_app(parts)
            app.on_shutdown.append(self._finish_work)
            # The waiting happens in _finish_work; aiohttp's own wait only has to cancel
            # what outlived the drain deadline.
            runner = GuardedAppRunner(
                app,
                ConnectionGuard(config.limits, self.metrics),
                handle_signals=False,
                access_log=None,
                shutdown_timeout=_CANCEL_GRACE,
            )
            await runner.setup()
            closers.push("listener", functools.partial(_close_listener, runner))
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
            heap.settle()
            await self.signals.stop_requested.wait()
            await self._drain(runner)
            return self._exit_code()
        finally:
            if self._deadline == float("inf"):
                self._deadline = asyncio.get_running_loop().time() + _CLOSE_WITHOUT_DRAIN
            await closers.close_all(self._deadline)
            self.signals.uninstall()

    def _telemetry(self) -> Telemetry | None:
        settings = self.config.telemetry
        if settings is None or not settings.active:
            return None
        # Imported only when on: the SDK and its exporters cost memory, not just time.
        from proxyrunner.telemetry.runtime import Telemetry

        metrics = self.metrics
        return Telemetry(
            settings,
            replica=self._replica or self.config.name,
            version=__version__,
            on_drop=metrics.spans_dropped.inc,
            on_export_failure=metrics.telemetry_export_failures.inc,
        )

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
        if await unless(start, self.signals.stop_requested):
            return True
        self.log.info("stopped while starting", step=what)
        return False

    async def _finish_work(self, app: web.Application) -> None:
        """Runs once the listener is closed: let requests in flight complete, then end the
        listen streams (clients reconnect elsewhere), all before the drain deadline.

        Listen streams stay open while other work finishes because a client whose listen
        stream cannot reconnect may give up its whole session, results in flight included.
        """
        traffic = self.traffic
        await self._until_deadline(traffic.wait_work_done(), "requests")
        traffic.close_streams(_RECONNECT_HINT_MS)
        await self._until_deadline(traffic.wait_idle(), "streams")

    async def _until_deadline(self, waiting: Awaitable[None], what: str) -> None:
        """Wait until done, the work deadline, or a forced stop, whichever comes first."""
        timeout = max(0.0, self._deadline - _CLOSE_RESERVE - asyncio.get_running_loop().time())
        forced = self.signals.force_requested
        if not await unless(waiting, forced, timeout) and not forced.is_set():
            self.log.warning("drain deadline reached", waiting_for=what)

    async def _drain(self, runner: web.AppRunner) -> None:
        """The graceful drain. The runner is cleaned up here (listener closed, work
        finished or cancelled); a second signal cuts it short."""
        config = self.config
        loop = asyncio.get_running_loop()
        started = loop.time()
        self._deadline = started + config.drain.timeout
        self.traffic.draining = True
        self.log.info(
            "draining",
            drain_delay=config.drain.delay,
            drain_timeout=config.drain.timeout,
            inflight=self.traffic.inflight,
        )
        if await self.signals.wait_or_force(config.drain.delay):
            return
        if not await unless(runner.cleanup(), self.signals.force_requested):
            return
        self.log.info(
            "drained",
            seconds=round(loop.time() - started, 3),
            cancelled=self.traffic.cancelled,
        )


async def _close_listener(runner: web.AppRunner) -> None:
    if runner.server is not None:  # not cleaned up by a drain already
        await runner.cleanup()


class Closers:
    """What the process opened, closed once each, in reverse order, under one deadline.

    Each closer gets the time left until the deadline; one that overruns is cancelled
    (a backend directory then kills what it started) and the next one still runs.
    """

    def __init__(self, log: structlog.stdlib.BoundLogger) -> None:
        self._log = log
        self._stack: list[tuple[str, Callable[[], Awaitable[object]]]] = []

    def push(self, name: str, close: Callable[[], Awaitable[object]]) -> None:
        self._stack.append((name, close))

    async def close_all(self, deadline: float) -> None:
        while self._stack:
            name, close = self._stack.pop()
            try:
                async with asyncio.timeout_at(deadline):
                    await close()
            except TimeoutError:
                self._log.warning("close deadline reached", part=name)
            except Exception:
                self._log.exception("error while closing", part=name)
