"""Backends without a cluster: child processes, one remote URL, or a static list of URLs.

A backend counts as ready while its periodic probe gets any HTTP answer (a 404 or 405 is
an answer: the server is up; a refused connection is not). Probes hit the server's root
path, never the MCP endpoint itself, so that a probe can never open an SSE stream or a
session. Child processes run in their own process groups; a crashed child is restarted
with exponential backoff on the same port, under the same name, so that sessions pinned
to it can be re-initialized there.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import socket
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Final

import aiohttp
import structlog
from yarl import URL

from proxyrunner.backends.channel import MAX_LINE, ProcessChannel, StderrTail, stop_process
from proxyrunner.backends.directory import Backend
from proxyrunner.backends.stdio import StdioBridge
from proxyrunner.backends.stdio.per_session import PerSessionBridge
from proxyrunner.backoff import Backoff
from proxyrunner.config import RunConfig
from proxyrunner.errors import StartupError
from proxyrunner.metrics import Metrics
from proxyrunner.tasks import Supervisor

if TYPE_CHECKING:
    from proxyrunner.telemetry.runtime import Telemetry

_PROBE_INTERVAL: Final = 2.0
_PROBE_INTERVAL_NOT_READY: Final = 0.1
_PROBE_TIMEOUT: Final = 1.0
_BACKOFF_FIRST: Final = 0.1
_BACKOFF_MAX: Final = 10.0
_STABLE_AFTER: Final = 30.0  # a child up this long has its backoff reset
_STOP_GRACE: Final = 5.0


# What a child takes from the proxy's environment besides its configured env_vars: what
# finding programs, files and the locale needs. Nothing else: the proxy's environment holds
# its own secrets (THV_SESSION_REDIS_PASSWORD, backend_auth and OIDC client secrets) and
# the cluster's service addresses, none of which is the server's business.
_INHERITED: Final = frozenset({"PATH", "HOME", "LANG", "LANGUAGE", "TZ", "TMPDIR"})


def child_environment(parent: Mapping[str, str], configured: Mapping[str, str]) -> dict[str, str]:
    """The environment a backend child starts with (before its transport variables):
    ``PATH``, ``HOME``, ``LANG``, ``LC_*``, ``TZ`` and ``TMPDIR`` from ``parent``, then the
    configured ``env_vars``, which win."""
    kept = {k: v for k, v in parent.items() if k in _INHERITED or k.startswith("LC_")}
    return {**kept, **configured}


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class _Slot:
    """One backend and what is known about it now."""

    def __init__(self, name: str, url: URL) -> None:
        self.name = name
        self.url = url
        self.answering = False
        self.process: asyncio.subprocess.Process | None = None
        self.output = StderrTail()
        self.exits = 0
        self.bridge: StdioBridge | PerSessionBridge | None = None

    @property
    def ready(self) -> bool:
        alive = self.process is None or self.process.returncode is None
        attached = self.bridge is None or self.bridge.attached
        return self.answering and alive and attached

    def as_backend(self) -> Backend:
        return Backend(self.name, self.url, self.ready)


class LocalBackendDirectory:
    def __init__(
        self,
        config: RunConfig,
        metrics: Metrics,
        log: structlog.stdlib.BoundLogger,
        client: aiohttp.ClientSession,
        telemetry: Telemetry | None = None,
    ) -> None:
        self._config = config
        self._metrics = metrics
        self._log = log
        self._client = client
        self._tasks = Supervisor(log)
        backend = config.backend
        self._children = bool(backend.cmd_args)
        path = "/sse" if backend.served_protocol == "sse" else "/mcp"
        if backend.remote_url is not None:
            self._slots = [_Slot("remote", URL(backend.remote_url))]
        elif backend.urls:
            self._slots = [_Slot(f"static-{i}", URL(url)) for i, url in enumerate(backend.urls)]
        else:
            host = backend.target_host
            self._slots = [
                _Slot(
                    f"local-{i}",
                    URL.build(scheme="http", host=host, port=_free_port(host), path=path),
                )
                for i in range(backend.local_replicas)
            ]
        if backend.stdio_isolation == "per-session":
            # One slot, whose bridge starts a child for each session: no child of its own.
            self._children = False
            slot = self._slots[0]
            slot.bridge = PerSessionBridge(
                slot.name,
                log,
                functools.partial(self._spawn, slot.name, True),
                metrics,
                max_sessions=backend.stdio_max_sessions,
                idle_timeout=backend.stdio_idle_timeout,
                max_body=config.listen.max_request_body,
                session_idle=config.sessions.ttl,
                telemetry=telemetry,
            )
        elif backend.transport == "stdio":
            # Each child's stdin and stdout are served over HTTP by a bridge of its own;
            # the slot's URL is the bridge's.
            for slot in self._slots:
                slot.bridge = StdioBridge(
                    slot.name,
                    log,
                    max_body=config.listen.max_request_body,
                    session_idle=config.sessions.ttl,
                    telemetry=telemetry,
                )
        self._by_name = {slot.name: slot for slot in self._slots}
        self._changed = asyncio.Event()

    # ------------------------------------------------------------------ protocol

    def ready_backends(self) -> Sequence[Backend]:
        return [slot.as_backend() for slot in self._slots if slot.ready]

    def get(self, name: str) -> Backend | None:
        slot = self._by_name.get(name)
        return slot.as_backend() if slot is not None else None

    def describe(self) -> str:
        ready = sum(slot.ready for slot in self._slots)
        return f"{ready} of {len(self._slots)} backends ready"

    async def start(self) -> None:
        for slot in self._slots:
            if slot.bridge is not None:
                await slot.bridge.start(self._config.backend.target_host, slot.url.port or 0)
            if self._children:
                self._tasks.spawn(f"child {slot.name}", functools.partial(self._supervise, slot))
            self._tasks.spawn(f"probe {slot.name}", functools.partial(self._probe, slot))
        deadline = time.monotonic() + self._config.backend.start_timeout
        while not any(slot.ready for slot in self._slots):
            if self._children and all(slot.exits for slot in self._slots):
                slot = self._slots[0]
                raise StartupError(
                    f"backend command {' '.join(self._config.backend.cmd_args)!r} exited before it "
                    f"served (exit code {slot.process.returncode if slot.process else '?'}); "
                    f"last output: {' | '.join(slot.output.lines) or '(none)'}"
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise StartupError(
                    f"no backend answered within {self._config.backend.start_timeout:g}s "
                    f"({', '.join(str(s.url.with_user(None)) for s in self._slots)})"
                )
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._changed.wait()

    async def close(self) -> None:
        await self._tasks.close()
        await asyncio.gather(*(self._stop_child(slot) for slot in self._slots))
        for slot in self._slots:
            if slot.bridge is not None:
                await slot.bridge.close()
        self._metrics.backends_ready.set(0)

    # ------------------------------------------------------------------ internals

    def _update(self, slot: _Slot, answering: bool) -> None:
        was = slot.ready
        slot.answering = answering
        if slot.ready != was:
            self._log.info(
                "backend ready" if slot.ready else "backend not ready",
                backend=slot.name,
                url=str(slot.url.with_user(None)),  # userinfo is a credential
            )
            self._metrics.backends_ready.set(sum(s.ready for s in self._slots))
            self._changed.set()

    async def _probe(self, slot: _Slot) -> None:
        root = slot.url.with_path("/").with_query(None)
        timeout = aiohttp.ClientTimeout(total=_PROBE_TIMEOUT)
        while True:
            try:
                async with self._client.get(root, timeout=timeout) as response:
                    await response.read()
                answering = True
            except (aiohttp.ClientError, OSError, TimeoutError):
                answering = False
            self._update(slot, answering)
            await asyncio.sleep(_PROBE_INTERVAL if slot.ready else _PROBE_INTERVAL_NOT_READY)

    async def _supervise(self, slot: _Slot) -> None:
        backoff = Backoff(first=_BACKOFF_FIRST, maximum=_BACKOFF_MAX, reset_after=_STABLE_AFTER)
        while True:
            started = time.monotonic()
            await self._run_child(slot)
            slot.exits += 1
            self._update(slot, False)
            code = slot.process.returncode if slot.process else None
            backoff.ran_for(time.monotonic() - started)
            delay = backoff.next_delay()
            self._log.warning(
                "backend process exited; restarting",
                backend=slot.name,
                exit_code=code,
                restart_in=round(delay, 3),
                last_output=list(slot.output.lines)[-3:],
            )
            self._changed.set()
            await asyncio.sleep(delay)

    async def _spawn(self, name: str, stdio: bool) -> asyncio.subprocess.Process:
        backend = self._config.backend
        env = child_environment(os.environ, backend.env_vars)
        env["DEMO_BACKEND_ID"] = name
        if stdio:
            env["MCP_TRANSPORT"] = "stdio"
        else:
            port = str(self._by_name[name].url.port)
            env.update(
                MCP_TRANSPORT=backend.transport,
                MCP_HOST=backend.target_host,
                MCP_PORT=port,
                PORT=port,
            )
        return await asyncio.create_subprocess_exec(
            *backend.cmd_args,
            stdin=asyncio.subprocess.PIPE if stdio else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE if stdio else asyncio.subprocess.STDOUT,
            env=env,
            start_new_session=True,
            limit=MAX_LINE,
        )

    async def _run_child(self, slot: _Slot) -> None:
        backend = self._config.backend
        port = slot.url.port
        stdio = slot.bridge is not None
        process = await self._spawn(slot.name, stdio)
        slot.process = process
        log = self._log.bind(backend=slot.name)
        log.info("backend process started", pid=process.pid, port=port, transport=backend.transport)
        # An HTTP server's stdout and stderr are only output; a stdio server's stdout is
        # the protocol and its stderr the output.
        output = process.stderr if stdio else process.stdout
        assert output is not None
        readers = [self._read_output(slot, output, log)]
        if isinstance(slot.bridge, StdioBridge):
            readers.append(slot.bridge.serve(ProcessChannel(process, log)))
        await asyncio.gather(*readers)
        await process.wait()

    async def _read_output(
        self, slot: _Slot, stream: asyncio.StreamReader, log: structlog.stdlib.BoundLogger
    ) -> None:
        while True:
            try:
                raw = await stream.readline()
            except ValueError:  # a line over the limit; asyncio dropped it
                continue
            if not raw:
                return
            slot.output.add(raw, log)

    async def _stop_child(self, slot: _Slot) -> None:
        if slot.process is not None:
            await stop_process(slot.process, _STOP_GRACE)
