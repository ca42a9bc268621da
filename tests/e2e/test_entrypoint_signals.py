"""The image's entrypoint handles SIGTERM as PID 1 would in a container.

No Docker engine runs here, so the test does what the container runtime does: it starts
the Dockerfile's exec-form ENTRYPOINT as PID 1 of a fresh PID namespace (``unshare``), and
signals it. A PID 1 ignores any signal it has no handler for, so this fails if the daemon
relies on default signal dispositions or sits behind a shell.

A PID namespace takes root, or an unprivileged user namespace around it. Where neither is
available the test skips on a developer machine and fails in CI.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import StartBackend
from tests.helpers import prerequisite_missing
from tests.procs import MARKER, MARKER_ENV, free_port, http_status, wait_until

REPO = Path(__file__).resolve().parents[2]


def entrypoint() -> list[str]:
    text = (REPO / "Dockerfile").read_text()
    match = re.search(r"^ENTRYPOINT\s+(\[.*\])\s*$", text, re.MULTILINE)
    assert match, "the Dockerfile has an exec-form ENTRYPOINT"
    args = json.loads(match.group(1))
    assert isinstance(args, list)
    return [str(a) for a in args]


PID_NAMESPACE = ["unshare", "--pid", "--fork", "--mount-proc"]
# Without root: the same inside a new user namespace, where we are root.
PID_NAMESPACE_UNPRIVILEGED = ["unshare", "--user", "--map-root-user", *PID_NAMESPACE[1:]]
NO_PID_NAMESPACE = (
    "cannot start a PID namespace: unshare --pid needs root, or unprivileged user "
    "namespaces (sysctl kernel.unprivileged_userns_clone=1; on Ubuntu 24.04 also "
    "kernel.apparmor_restrict_unprivileged_userns=0)"
)


def pid_namespace_command() -> list[str] | None:
    """The unshare command line that starts a fresh PID namespace here, if one does."""
    for command in (PID_NAMESPACE, PID_NAMESPACE_UNPRIVILEGED):
        probe = subprocess.run([*command, "true"], capture_output=True, check=False)
        if probe.returncode == 0:
            return command
    return None


@pytest.mark.timeout(60)
def test_entrypoint_as_pid_1_drains_on_sigterm_and_exits_0(
    start_backend: StartBackend, tmp_path: Path
) -> None:
    if shutil.which("unshare") is None:
        prerequisite_missing("unshare (util-linux) is not installed")
    unshare = pid_namespace_command()
    if unshare is None:
        prerequisite_missing(NO_PID_NAMESPACE)
    command = entrypoint()
    assert command[:2] == ["proxyrunner", "run"]
    backend = start_backend("alpha")
    port = free_port()
    config = tmp_path / "runconfig.json"
    config.write_text(
        json.dumps(
            {
                "name": "demo",
                "remote_url": backend.url,
                "host": "127.0.0.1",
                "port": port,
                "drain_delay": "0.5s",
                "drain_timeout": "5s",
            }
        )
    )
    binary = str(Path(sys.executable).parent / command[0])
    log = (tmp_path / "pid1.log").open("wb")
    # unshare forks: our child becomes PID 1 of the new namespace, as in a container.
    process = subprocess.Popen(
        [
            *unshare,
            binary,
            *command[1:],
            "--config",
            str(config),
            "--log-format",
            "json",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, MARKER_ENV: MARKER},
        start_new_session=True,
    )
    try:
        wait_until(lambda: http_status(f"http://127.0.0.1:{port}/readyz") == 200, 30, "ready")
        pid1 = _namespace_init(process.pid)
        assert _status_field(pid1, "NSpid").split()[-1] == "1", "runs as PID 1"
        os.kill(pid1, signal.SIGTERM)
        wait_until(lambda: http_status(f"http://127.0.0.1:{port}/readyz") == 503, 5, "drain")
        started = time.monotonic()
        assert process.wait(timeout=15) == 0
        assert time.monotonic() - started < 5 + 1
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()
    events = [json.loads(line) for line in (tmp_path / "pid1.log").read_text().splitlines()]
    assert any(event.get("event") == "drained" for event in events)


def _namespace_init(unshare_pid: int) -> int:
    """The pid (in our namespace) of the unshare child that is PID 1 of its namespace."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        children = Path(f"/proc/{unshare_pid}/task/{unshare_pid}/children").read_text().split()
        if children:
            return int(children[0])
        time.sleep(0.02)
    raise AssertionError("unshare did not start its child")


def _status_field(pid: int, name: str) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{name}:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no {name} in /proc/{pid}/status")
