"""The embedded default as a newcomer runs it (``./scripts/demo``): Ctrl-C ends it at once.
A proxy on loopback with the local runtime has no load balancer to wait for, so its
drain delay is 0 unless the RunConfig sets one."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import pytest

from tests.procs import Proc, free_port, http_status, wait_until

# Far below the 5 s drain delay a proxy behind a load balancer waits.
PROMPT_EXIT_SECONDS = 2.5


@pytest.mark.timeout(90)
def test_ctrl_c_on_the_embedded_default_exits_0_at_once_without_a_drain_delay(
    tmp_path: Path,
) -> None:
    port = free_port()
    proc = Proc(
        [sys.executable, "-m", "proxyrunner", "run", "--embedded", "--port", str(port),
         "--log-format", "json"],
        tmp_path / "embedded.log",
        {},
    )  # fmt: skip
    try:

        def ready() -> bool:
            if not proc.alive():
                raise AssertionError(f"proxy exited with {proc.popen.poll()}:\n{proc.output()}")
            return http_status(f"http://127.0.0.1:{port}/readyz") == 200

        wait_until(ready, 60, "the embedded default to become ready")
        signalled = time.monotonic()
        proc.signal(signal.SIGINT)
        code = proc.wait(timeout=15)
        took = time.monotonic() - signalled
    finally:
        proc.stop()
    assert code == 0, proc.output()
    assert took < PROMPT_EXIT_SECONDS, f"exit took {took:.2f}s"
    (draining,) = [e for e in proc.log_events() if e.get("event") == "draining"]
    assert draining["drain_delay"] == 0
    (drained,) = [e for e in proc.log_events() if e.get("event") == "drained"]
    assert drained["cancelled"] == 0
