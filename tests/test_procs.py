"""The harness's own promises (tests/procs.py): a test proxy starts without a drain delay
unless given one, and one that exits with anything but the code its test expects is
reported, with its log tail, when the fixture stops it."""

from __future__ import annotations

from pathlib import Path

from tests.procs import Proxy, free_port


def unreachable_backend(tmp_path: Path, **config: str) -> Proxy:
    """A proxy that gives up at startup (exit 3): no backend answers."""
    url = f"http://127.0.0.1:{free_port()}/mcp"
    return Proxy(
        tmp_path, {"name": "demo", "remote_url": url, "backend_start_timeout": "0.5s", **config}
    )


def test_a_proxy_that_exits_with_an_unexpected_code_is_reported_with_its_log_tail(
    tmp_path: Path,
) -> None:
    proxy = unreachable_backend(tmp_path)
    assert proxy.wait(timeout=30) == 3
    message = proxy.finish()
    assert message is not None
    assert "exited with 3, expected exit code 0" in message
    assert "no backend answered within 0.5s" in message


def test_a_proxy_that_exits_with_the_code_its_test_named_is_not_reported(tmp_path: Path) -> None:
    proxy = unreachable_backend(tmp_path)
    assert "no backend answered" in proxy.exits_with(3)
    assert proxy.finish() is None


def test_a_test_proxy_has_no_drain_delay_unless_its_config_gives_one(tmp_path: Path) -> None:
    default = unreachable_backend(tmp_path)
    explicit = unreachable_backend(tmp_path, drain_delay="2s")
    for proxy in (default, explicit):
        proxy.exits_with(3)
        proxy.finish()
    assert default.config["drain_delay"] == "0s"
    assert explicit.config["drain_delay"] == "2s"
