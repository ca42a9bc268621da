"""CPU instructions proxyrunner executes per proxied ``tools/call``, counted by callgrind.

Wall-clock throughput on a shared 2-core machine moves by several percent from run to
run, which hides the difference a code change makes. Instructions counted by
``valgrind --tool=callgrind`` do not depend on what else the machine does: the same
code, inputs and environment give the same count to within a few hundredths of a
percent. So this is the benchmark that says whether a change made the hot path cheaper
or dearer; ``proxy_overhead.py`` says how fast it is.

It runs a canned backend (one fixed JSON-RPC answer with ``Mcp-Session-Id``), proxyrunner
under callgrind in front of it (sessions in memory), initializes one session, warms up,
zeroes the counters, sends ``--requests`` calls over ``--connections`` connections, and
prints the instructions per request. ``--tree DIR`` (repeatable) measures the package in
another checkout (e.g. a ``git worktree`` of an older commit) in the same run::

    .venv/bin/python benchmarks/instructions_per_request.py --tree . --tree ../old-checkout

``--telemetry`` (repeatable: ``off``, ``trace100``, ``metrics``) measures with tracing
at 100% sampling or OTLP metrics on, exporting to a canned collector in this process
that takes every export with a 200: what the proxy's threads execute for telemetry,
encoding and export included, counted like the rest::

    .venv/bin/python benchmarks/instructions_per_request.py --telemetry off --telemetry trace100

Needs valgrind (``apt-get install valgrind``); takes about a minute per tree and mode.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import aiohttp

BODY = b'{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"ok"}]}}'
ANSWER = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
    b"Mcp-Session-Id: canned-backend-session\r\nContent-Length: %d\r\n\r\n" % len(BODY)
) + BODY
HEADERS = {
    "Accept": "application/json, text/event-stream",
    "Content-Type": "application/json",
    "MCP-Protocol-Version": "2025-06-18",
}
INIT = {
    "jsonrpc": "2.0",
    "id": 0,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "instructions", "version": "1"},
    },
}
CALL = json.dumps(
    {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "echo"}}
).encode()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def canned_backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            match = re.search(rb"(?i)content-length:\s*(\d+)", head)
            if match:
                await reader.readexactly(int(match.group(1)))
            writer.write(ANSWER)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


COLLECTOR_ANSWER = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n"
)
TELEMETRY: dict[str, dict[str, object] | None] = {
    "off": None,
    "trace100": {"tracingEnabled": True, "metricsEnabled": False, "samplingRate": 1},
    "metrics": {"tracingEnabled": False, "metricsEnabled": True, "metricExportInterval": 1},
}


async def canned_collector(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Takes any OTLP/HTTP export with a 200 and an empty body (an empty export
    response is a valid one)."""
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            match = re.search(rb"(?i)content-length:\s*(\d+)", head)
            if match:
                await reader.readexactly(int(match.group(1)))
            writer.write(COLLECTOR_ANSWER)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def send_calls(url: str, session_id: str, count: int, connections: int) -> None:
    left = count
    headers = {**HEADERS, "Mcp-Session-Id": session_id}
    async with aiohttp.ClientSession() as http:

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                async with http.post(url, data=CALL, headers=headers) as response:
                    if response.status != 200:
                        raise RuntimeError(f"tools/call answered {response.status}")
                    await response.read()

        await asyncio.gather(*(worker() for _ in range(connections)))


async def initialize(url: str) -> str:
    async with aiohttp.ClientSession() as http, http.post(url, json=INIT, headers=HEADERS) as r:
        await r.read()
        if r.status != 200:
            raise RuntimeError(f"initialize answered {r.status}")
        return r.headers["Mcp-Session-Id"]


def wait_ready(base: str, proxy: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proxy.poll() is not None:
            raise RuntimeError(f"proxyrunner exited with {proxy.returncode}")
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(f"{base}/readyz", timeout=1) as response,  # noqa: S310
        ):
            if response.status == 200:
                return
        time.sleep(0.5)
    raise RuntimeError(f"proxyrunner not ready within {timeout:g}s under valgrind")


def total_instructions(dump: Path) -> int:
    for line in dump.read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise RuntimeError(f"no instruction total in {dump}")


async def measure(
    tree: Path, work: Path, requests: int, connections: int, warmup: int, telemetry: str = "off"
) -> float:
    backend_port, proxy_port, collector_port = free_port(), free_port(), free_port()
    server = await asyncio.start_server(canned_backend, "127.0.0.1", backend_port)
    collector = await asyncio.start_server(canned_collector, "127.0.0.1", collector_port)
    config = work / f"config-{proxy_port}.json"
    settings: dict[str, object] = {
        "name": "instructions",
        "remote_url": f"http://127.0.0.1:{backend_port}/mcp",
        "host": "127.0.0.1",
        "port": proxy_port,
    }
    if (telemetry_config := TELEMETRY[telemetry]) is not None:
        settings["telemetry_config"] = {
            "endpoint": f"127.0.0.1:{collector_port}",
            "insecure": True,
            **telemetry_config,
        }
    config.write_text(json.dumps(settings))
    out = work / f"callgrind-{proxy_port}"
    env = {**os.environ, "PYTHONPATH": str(tree)}  # main() resolved it
    proxy = subprocess.Popen(  # noqa: ASYNC220 - a long-lived child, waited for below
        [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={out}",
            sys.executable,
            "-m",
            "proxyrunner",
            "run",
            "--config",
            str(config),
            "--log-level",
            "warning",
        ],
        cwd=work,  # not a checkout: the package comes from PYTHONPATH alone
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{proxy_port}"
    try:
        await asyncio.to_thread(wait_ready, base, proxy, 300)
        session_id = await initialize(f"{base}/mcp")
        await send_calls(f"{base}/mcp", session_id, warmup, connections)
        await callgrind_control("-z", proxy.pid)  # count from here
        await send_calls(f"{base}/mcp", session_id, requests, connections)
        await callgrind_control("-d", proxy.pid)  # dump what the measured requests cost
    finally:
        proxy.send_signal(signal.SIGTERM)
        await asyncio.to_thread(proxy.wait, 120)
        server.close()
        collector.close()
        await server.wait_closed()
        await collector.wait_closed()
    return await asyncio.to_thread(first_dump, work, proxy_port) / requests


def first_dump(work: Path, proxy_port: int) -> int:
    """Instructions in the first dump: the one ``-d`` wrote for the measured requests
    (the exit writes another, for the shutdown)."""
    dumps = sorted(work.glob(f"callgrind-{proxy_port}.*"), key=lambda p: p.stat().st_mtime)
    if not dumps:
        raise RuntimeError("callgrind wrote no dump for the measured requests")
    return total_instructions(dumps[0])


async def callgrind_control(option: str, pid: int) -> None:
    process = await asyncio.create_subprocess_exec(
        "callgrind_control", option, str(pid), stdout=asyncio.subprocess.DEVNULL
    )
    if await process.wait() != 0:
        raise RuntimeError(f"callgrind_control {option} failed")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", action="append", type=Path, help="checkout to measure")
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--telemetry", action="append", choices=sorted(TELEMETRY))
    args = parser.parse_args()
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        sys.stderr.write("needs valgrind: apt-get install valgrind\n")
        return 2
    trees = [tree.resolve() for tree in args.tree or [Path(__file__).parents[1]]]
    modes = args.telemetry or ["off"]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for tree in trees:
            for mode in modes:
                per_request = asyncio.run(
                    measure(tree, Path(tmp), args.requests, args.connections, args.warmup, mode)
                )
                name = str(tree) if len(modes) == 1 else f"{tree} [{mode}]"
                results[name] = per_request
                print(f"{name}: {per_request:,.0f} instructions per tools/call")
    if len(results) > 1:
        first_name, first = next(iter(results.items()))
        for name, value in list(results.items())[1:]:
            print(f"{name} / {first_name}: {value / first:.4f}")
    print(json.dumps({"benchmark": "instructions_per_request", "results": results}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
