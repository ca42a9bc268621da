"""The open-files limit a replica runs with: container runtimes often start processes with
a soft limit of 1024 under a much higher hard one."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

from tests.conftest import StartBackend, StartProxy

# Started as a container runtime would: soft 256 under hard 4096.
LOWERED = """
import json, resource
resource.setrlimit(resource.RLIMIT_NOFILE, (256, 4096))
from proxyrunner.app import raise_open_file_limit
before_after = raise_open_file_limit()
print(json.dumps([before_after, resource.getrlimit(resource.RLIMIT_NOFILE)]))
"""


def test_the_soft_open_files_limit_is_raised_to_the_hard_one() -> None:
    out = subprocess.run(
        [sys.executable, "-c", LOWERED], capture_output=True, text=True, check=True, timeout=30
    )
    (before, after), (soft, hard) = json.loads(out.stdout)
    assert (before, after) == (256, 4096)
    assert (soft, hard) == (4096, 4096)


def test_a_proxy_started_under_a_low_soft_limit_runs_with_the_hard_one(
    start_backend: StartBackend, start_proxy: StartProxy
) -> None:
    backend = start_backend("alpha")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowered = min(1024, hard // 2)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowered, hard))  # inherited by the child
    try:
        proxy = start_proxy({"name": "demo", "remote_url": backend.url})
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    limits = Path(f"/proc/{proxy.pid}/limits").read_text()
    running = next(line.split()[3] for line in limits.splitlines() if "open files" in line)
    assert int(running) == hard > lowered
    starting = [e for e in proxy.log_events() if e.get("event") == "starting"]
    assert starting[0]["open_files_limit"] == hard
