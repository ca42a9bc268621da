"""Real processes for end-to-end tests: proxyrunner itself and demo MCP backends.

Every process started here carries a marker in its environment, so that the session-end
check in conftest.py can find (and fail on) anything a test left running, including
grandchildren orphaned by a SIGKILLed proxy.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from proxyrunner.durations import parse_duration

MARKER_ENV = "PROXYRUNNER_TEST_RUN"
# The README's default drain_timeout, and what a process may take past it to exit.
DEFAULT_DRAIN_TIMEOUT = 25.0
EXIT_MARGIN = 5.0
MARKER = os.environ.setdefault(MARKER_ENV, uuid.uuid4().hex)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(
    condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.02
) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


async def eventually(
    condition: Callable[[], bool],
    timeout: float,  # noqa: ASYNC109 - a polling deadline, not a cancel scope
    what: str,
    interval: float = 0.02,
) -> None:
    """``wait_until`` for async tests: the check runs in a thread, the loop stays free."""
    import asyncio

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await asyncio.to_thread(condition):
            return
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def http_status(url: str, timeout: float = 1.0) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - loopback
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def marked_processes() -> list[int]:
    """Pids of live processes started by this test run (children and orphans alike)."""
    needle = f"{MARKER_ENV}={MARKER}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                stat = (entry / "stat").read_text()
                if stat.rsplit(")", 1)[1].split()[0] != "Z":
                    found.append(int(entry.name))
        except OSError:
            continue
    return found


class Proc:
    """A started process with its log file; stopped (and reaped) by ``stop``/``kill``."""

    def __init__(self, args: list[str], log_path: Path, env: Mapping[str, str]) -> None:
        self.args = args
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.popen = subprocess.Popen(
            args,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env, MARKER_ENV: MARKER},
            start_new_session=True,
        )
        self.stop_requested = False
        """A SIGTERM or SIGINT was sent."""
        self.stop_timed_out = False
        """``stop`` had to SIGKILL the process."""

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def output_tail(self, lines: int = 40) -> str:
        return "\n".join(self.output().splitlines()[-lines:])

    def log_events(self) -> list[dict[str, Any]]:
        events = []
        for line in self.output().splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict):
                events.append(event)
        return events

    def signal(self, sig: int) -> None:
        if self.alive():
            self.popen.send_signal(sig)
            self.stop_requested |= sig in (signal.SIGTERM, signal.SIGINT)

    def wait(self, timeout: float) -> int:
        return self.popen.wait(timeout=timeout)

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM (unless the test sent one: a second would force the stop), wait, and
        SIGKILL the whole group if it does not end in time."""
        if self.alive():
            if not self.stop_requested:
                self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.stop_timed_out = True
                self._kill_group()
        self._log.close()
        return int(self.popen.wait())

    def kill(self) -> None:
        self._kill_group()

    def _kill_group(self) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(timeout=10)
        self._log.close()


class DemoBackend(Proc):
    """The SDK-built demo MCP server on its own port, reporting ``identity`` from whoami."""

    def __init__(
        self, tmp: Path, identity: str, transport: str = "streamable-http", **env: str
    ) -> None:
        self.identity = identity
        self.port = free_port()
        path = "/sse" if transport == "sse" else "/mcp"
        self.url = f"http://127.0.0.1:{self.port}{path}"
        super().__init__(
            [sys.executable, "-m", "proxyrunner.demo"],
            tmp / f"backend-{identity}.log",
            {
                "MCP_TRANSPORT": transport,
                "MCP_HOST": "127.0.0.1",
                "MCP_PORT": str(self.port),
                "DEMO_BACKEND_ID": identity,
                **env,
            },
        )

    def wait_ready(self, timeout: float = 30.0) -> DemoBackend:
        def answers() -> bool:
            if not self.alive():
                raise AssertionError(f"backend {self.identity} exited:\n{self.output()}")
            return http_status(f"http://127.0.0.1:{self.port}/") is not None

        wait_until(answers, timeout, f"backend {self.identity} to answer")
        return self


class Proxy(Proc):
    """``proxyrunner run`` with a RunConfig written to a file; JSON logs at debug.

    A config without ``drain_delay`` gets ``0s``: the delay is for load balancers, and a
    test without one would only wait it out at every stop. Stopped by ``finish``, a proxy
    must exit with ``expected_exit`` (0 unless the test said otherwise with
    ``expect_exit``, or killed it).
    """

    def __init__(
        self,
        tmp: Path,
        config: Mapping[str, Any],
        env: Mapping[str, str] | None = None,
        label: str = "proxy",
        extra_args: list[str] | None = None,
    ) -> None:
        self.port = int(config.get("port") or free_port())
        self.config = {"host": "127.0.0.1", "drain_delay": "0s", **config, "port": self.port}
        if "cmd_args" in config:
            # Children get a minimal environment, not the proxy's: the marker that finds
            # the processes a test left behind must reach them as configured env_vars.
            env_vars = {MARKER_ENV: MARKER, **config.get("env_vars", {})}
            self.config["env_vars"] = env_vars
        self.base = f"http://127.0.0.1:{self.port}"
        self.url = f"{self.base}/mcp"
        self.drain_timeout = parse_duration(config.get("drain_timeout", DEFAULT_DRAIN_TIMEOUT))
        self.expected_exit = 0
        self._failure_reported = False
        self.backends: list[DemoBackend] = []
        """The demo backends the ``demo_proxy`` fixture started for this proxy."""
        config_path = tmp / f"{label}-{self.port}.json"
        config_path.write_text(json.dumps(self.config))
        super().__init__(
            [
                sys.executable,
                "-m",
                "proxyrunner",
                "run",
                "--config",
                str(config_path),
                "--log-format",
                "json",
                "--log-level",
                "debug",
                *(extra_args or []),
            ],
            tmp / f"{label}-{self.port}.log",
            dict(env or {}),
        )

    def expect_exit(self, code: int) -> Proxy:
        """Mark the exit code this test expects instead of 0."""
        self.expected_exit = code
        return self

    def exits_with(self, code: int, timeout: float = 30.0) -> str:
        """Wait for the proxy to exit on its own, with ``code``; returns its output."""
        self.expect_exit(code)
        try:
            assert self.wait(timeout) == code, self.output_tail()
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running after {timeout}s:\n{self.output_tail()}") from None
        return self.output()

    def kill(self) -> None:
        """SIGKILL, on the test's request: then that is the exit the test expects."""
        self.expected_exit = -signal.SIGKILL
        super().kill()

    def finish(self) -> str | None:
        """Stop (SIGTERM) unless exited already, allowing the drain its drain_timeout; a
        failure message naming the exit code and the log tail if it is not the expected
        one (or the drain overran), else None."""
        timeout = self.drain_timeout + EXIT_MARGIN
        code = self.stop(timeout)
        if self._failure_reported or (code == self.expected_exit and not self.stop_timed_out):
            return None
        if self.stop_timed_out:
            how = f"did not exit within its drain_timeout ({self.drain_timeout:g}s) of SIGTERM"
        elif code < 0:
            how = f"was killed by {signal.Signals(-code).name}"
        else:
            how = f"exited with {code}"
        return (
            f"proxy on port {self.port} {how}, expected exit code {self.expected_exit}; "
            f"log tail:\n{self.output_tail()}"
        )

    def wait_ready(self, timeout: float = 30.0) -> Proxy:
        def ready() -> bool:
            if not self.alive():
                self._failure_reported = True
                raise AssertionError(f"proxy exited with {self.popen.poll()}:\n{self.output()}")
            return http_status(f"{self.base}/readyz") == 200

        wait_until(ready, timeout, "the proxy to become ready")
        return self
