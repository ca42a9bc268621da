"""Held-sessions benchmark: what idle sessions and open listen streams cost one replica.

One proxyrunner replica (memory session store, streamable HTTP) in front of the canned
nginx backend of proxy_overhead.py is made to hold N idle sessions and M open
``GET /mcp`` listen streams. The runner reads the proxy's RSS before, after the sessions
and after the streams, then runs wrk on ``tools/call`` while they are held, and again on
a fresh replica that holds nothing.

    .venv/bin/python benchmarks/held_sessions.py
    .venv/bin/python benchmarks/held_sessions.py --sessions 2000 --streams 200 --duration 3

See benchmarks/README.md for how to read the output.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
from proxy_overhead import (
    BASE_HEADERS,
    CHECK_CALL_BODY,
    CLK_TCK,
    INITIALIZE_BODY,
    LOAD_CORE,
    PROTOCOL_VERSION,
    PROXY_CORE,
    READY_TIMEOUT_S,
    BenchError,
    Managed,
    Processes,
    TargetSkipped,
    check_prerequisites,
    environment,
    free_port,
    http,
    open_session,
    proc_group_cpu_ticks,
    proxyrunner_available,
    proxyrunner_command,
    run_wrk,
    taskset,
    uninterruptible,
    wait_until,
)

# Run as a script, this directory is on sys.path: share the process handling, wrk driver
# and session check with proxy_overhead.py instead of copying them.
from proxy_overhead import nginx_config as canned_nginx_config

SESSION_TARGET_KB = 2.0
STREAM_TARGET_KB = 20.0
RPS_TARGET = 0.90
# Few enough that creating the sessions looks like many clients arriving over a handful
# of front-end connections, not like a load test of initialize.
CREATE_CONNECTIONS = 8
STREAM_OPEN_CONCURRENCY = 64
SETTLE_S = 1.0
WARMUP_S = 1
# SSE response head of the stream holder: chunked, so nginx and the proxy treat it as an
# open-ended stream; nothing follows until the client goes away, as on a quiet server.
HOLD_HEAD = (
    b"HTTP/1.1 200 OK\r\n"
    b"Content-Type: text/event-stream\r\n"
    b"Cache-Control: no-cache\r\n"
    b"Transfer-Encoding: chunked\r\n"
    b"\r\n"
)


# --------------------------------------------------------------------------- backend


def nginx_config(workdir: Path, port: int, hold_port: int, connections: int) -> str:
    """The canned backend of proxy_overhead.py, plus GET /mcp passed unbuffered to the
    stream holder: nginx cannot keep a response open by itself without trickling bytes,
    and a trickle would keep every held stream busy in the proxy."""
    return canned_nginx_config(workdir, port, connections=connections, listen_upstream=hold_port)


class StreamHolder:
    """Answers every request with an SSE head and then stays silent until the peer closes."""

    def __init__(self) -> None:
        self.open = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, backlog=4096)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open += 1
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(HOLD_HEAD)
            await writer.drain()
            while await reader.read(4096):
                pass
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self.open -= 1
            writer.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            # Held connections are closed by their peers; don't wait on them here.


# --------------------------------------------------------------------------- measuring


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise BenchError(f"no VmRSS for pid {pid}")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def nofile_limit(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise BenchError(f"no open-files limit for pid {pid}")


def raise_own_nofile(needed: int) -> int:
    """The runner holds both ends of every stream it opens (client and holder)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        soft = min(hard, needed)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    if soft < needed:
        raise BenchError(f"needs {needed} open files, the hard limit is {hard}: lower --streams")
    return soft


async def create_sessions(url: str, count: int) -> list[str]:
    """Raw initialize POSTs (no notifications/initialized): sessions as an idle client
    leaves them. Returns the Mcp-Session-Ids."""
    ids: list[str] = []
    failures: list[str] = []
    connector = aiohttp.TCPConnector(limit=CREATE_CONNECTIONS)
    async with aiohttp.ClientSession(connector=connector) as client:

        async def worker(n: int) -> None:
            for _ in range(n):
                async with client.post(url, data=INITIALIZE_BODY, headers=BASE_HEADERS) as r:
                    await r.read()
                    sid = r.headers.get("Mcp-Session-Id")
                    if r.status != 200 or not sid:
                        failures.append(f"HTTP {r.status}")
                        return
                    ids.append(sid)

        share, extra = divmod(count, CREATE_CONNECTIONS)
        await asyncio.gather(
            *(worker(share + (1 if i < extra else 0)) for i in range(CREATE_CONNECTIONS))
        )
    if failures:
        raise BenchError(f"initialize failed after {len(ids)} sessions: {failures[0]}")
    return ids


async def open_streams(
    client: aiohttp.ClientSession, url: str, session_ids: Sequence[str]
) -> list[aiohttp.ClientResponse]:
    """One GET listen stream per session, each on its own connection, left unread."""
    gate = asyncio.Semaphore(STREAM_OPEN_CONCURRENCY)
    headers = {
        "Accept": "text/event-stream",
        "MCP-Protocol-Version": PROTOCOL_VERSION,
    }

    async def one(sid: str) -> aiohttp.ClientResponse:
        async with gate:
            r = await client.get(url, headers=headers | {"Mcp-Session-Id": sid})
            if r.status != 200 or not r.content_type.startswith("text/event-stream"):
                body = await r.read()
                r.release()
                raise BenchError(f"GET /mcp -> HTTP {r.status} {r.content_type}: {body[:200]!r}")
            return r

    return list(await asyncio.gather(*(one(sid) for sid in session_ids)))


@dataclass
class Throughput:
    replica: str
    connections: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    proxy_cpu_us_per_req: float | None


async def measure_wrk(
    wrk: str, url: str, session_id: str, proxy: Managed, replica: str, args: argparse.Namespace
) -> Throughput:
    # In a thread: the event loop keeps serving the held streams' holder side meanwhile.
    await asyncio.to_thread(
        run_wrk, wrk, url, args.connections, WARMUP_S, session_id, PROTOCOL_VERSION
    )
    before = proc_group_cpu_ticks(proxy.pid)
    result, _wall = await asyncio.to_thread(
        run_wrk, wrk, url, args.connections, args.duration, session_id, PROTOCOL_VERSION
    )
    ticks = proc_group_cpu_ticks(proxy.pid) - before
    cpu = ticks / CLK_TCK / result.requests * 1e6 if result.requests else None
    row = Throughput(
        replica=replica,
        connections=args.connections,
        rps=result.rps,
        p50_ms=result.p50_us / 1000,
        p99_ms=result.p99_us / 1000,
        errors=result.error_count,
        proxy_cpu_us_per_req=cpu,
    )
    detail = f" errors={ {k: v for k, v in result.errors.items() if v} }" if row.errors else ""
    print(
        f"  [{replica}] c={row.connections} {row.rps:9.0f} req/s  p50 {row.p50_ms:.3f} ms  "
        f"p99 {row.p99_ms:.3f} ms  proxy CPU "
        f"{'-' if cpu is None else f'{cpu:.1f}'} us/req{detail}"
    )
    return row


# --------------------------------------------------------------------------- main


def start_proxy(
    procs: Processes, cmd: list[str], workdir: Path, name: str, backend_url: str, cache: int
) -> tuple[Managed, str]:
    port = free_port()
    config: dict[str, Any] = {
        "name": "bench",
        "transport": "streamable-http",
        "host": "127.0.0.1",
        "port": port,
        "remote_url": backend_url,
        # The memory store evicts past this bound: it must fit every held session.
        "session_cache_size": cache,
    }
    config_path = workdir / f"proxyrunner-{name}.json"
    config_path.write_text(json.dumps(config, indent=2))
    env = dict(os.environ)
    env.pop("THV_SESSION_REDIS_PASSWORD", None)
    argv = [*cmd, "run", "--config", str(config_path), "--log-level", "warning"]
    proxy = procs.start(f"proxyrunner-{name}", taskset(PROXY_CORE, argv), env=env)
    base = f"http://127.0.0.1:{port}"
    wait_until(
        f"proxyrunner[{name}]",
        lambda: http("GET", f"{base}/readyz").status == 200,
        proxy,
        READY_TIMEOUT_S,
    )
    return proxy, f"{base}/mcp"


def kb(value: float) -> str:
    return f"{value:,.2f} KB"


def verdict(value: float, target: float, below_is_good: bool) -> str:
    ok = value < target if below_is_good else value >= target
    return "" if ok else "  BELOW TARGET"


async def run(args: argparse.Namespace) -> int:
    tools = check_prerequisites(need_redis=False)
    os.sched_setaffinity(0, {LOAD_CORE})
    own_limit = raise_own_nofile(2 * args.streams + 256)
    env_info = environment(tools)
    print("held-sessions benchmark: " + ", ".join(f"{k}={v}" for k, v in env_info.items()))
    print(
        f"proxy on core {PROXY_CORE}; wrk + nginx + runner on core {LOAD_CORE}; "
        f"{args.sessions} idle sessions, {args.streams} listen streams; wrk "
        f"{args.duration}s at {args.connections} connections after {WARMUP_S}s warm-up"
    )
    cmd = proxyrunner_command(args.proxyrunner)
    try:
        version = proxyrunner_available(cmd)
    except TargetSkipped as err:
        raise BenchError(str(err)) from err

    cache = args.sessions + 1000
    workdir = Path(tempfile.mkdtemp(prefix="held-sessions-"))
    procs = Processes(workdir)
    holder = StreamHolder()
    streams: list[aiohttp.ClientResponse] = []
    results: dict[str, Any] = {}
    rows: list[Throughput] = []
    stream_client: aiohttp.ClientSession | None = None
    try:
        hold_port = await holder.start()
        nginx_port = free_port()
        conf = workdir / "nginx.conf"
        conf.write_text(nginx_config(workdir, nginx_port, hold_port, 2 * args.streams + 1024))
        nginx_argv = [tools["nginx"], "-p", str(workdir), "-e", str(workdir / "nginx-error.log")]
        nginx = procs.start("nginx", taskset(LOAD_CORE, [*nginx_argv, "-c", str(conf)]))
        backend_url = f"http://127.0.0.1:{nginx_port}/mcp"
        await asyncio.to_thread(
            wait_until,
            "nginx",
            lambda: http("POST", backend_url, CHECK_CALL_BODY, BASE_HEADERS).status == 200,
            nginx,
            10,
        )

        # ---------------------------------------------------------- held replica
        proxy, url = start_proxy(procs, cmd, workdir, "held", backend_url, cache)
        proxy_limit = nofile_limit(proxy.pid)
        needed = 2 * args.streams + 2 * args.connections + 64
        print(f"\n[held] proxy pid {proxy.pid}, open-files limit {proxy_limit} (needs ~{needed})")
        if proxy_limit < needed:
            raise BenchError(
                f"the proxy may open only {proxy_limit} files; {args.streams} streams need "
                f"~{needed}: raise the hard limit (ulimit -Hn) or lower --streams"
            )
        wrk_session = await asyncio.to_thread(open_session, url, "proxyrunner[held]")
        await asyncio.sleep(SETTLE_S)
        rss_before = rss_kb(proxy.pid)
        print(f"  {'RSS before':<28} {rss_before:>9,} KB")

        started = time.monotonic()
        ids = await create_sessions(url, args.sessions)
        took = time.monotonic() - started
        await asyncio.sleep(SETTLE_S)
        rss_sessions = rss_kb(proxy.pid)
        per_session = (rss_sessions - rss_before) / args.sessions if args.sessions else 0.0
        print(
            f"  {f'RSS after {args.sessions:,} sessions':<28} {rss_sessions:>9,} KB  "
            f"({took:.1f}s to create, {args.sessions / took:,.0f}/s)"
        )

        if args.streams > len(ids):
            raise BenchError("--streams must not exceed --sessions: one stream per session")
        stream_client = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
        )
        started = time.monotonic()
        streams = await open_streams(stream_client, url, ids[: args.streams])
        took = time.monotonic() - started
        await asyncio.sleep(SETTLE_S)
        rss_streams = rss_kb(proxy.pid)
        per_stream = (rss_streams - rss_sessions) / args.streams if args.streams else 0.0
        fds = open_fds(proxy.pid)
        print(
            f"  {f'RSS after {args.streams:,} streams':<28} {rss_streams:>9,} KB  "
            f"({took:.1f}s to open; holder sees {holder.open}; proxy has {fds} fds open)"
        )
        if holder.open < args.streams:
            raise BenchError(f"only {holder.open} of {args.streams} streams reached the backend")

        rows.append(await measure_wrk(tools["wrk"], url, wrk_session, proxy, "held", args))
        still_open = sum(1 for r in streams if not r.closed)
        if still_open < args.streams or holder.open < args.streams:
            raise BenchError(
                f"streams closed during the load: {still_open} client side, "
                f"{holder.open} backend side, of {args.streams}"
            )
        rss_after_load = rss_kb(proxy.pid)
        for r in streams:
            r.close()
        streams = []
        await stream_client.close()
        stream_client = None
        procs.stop(proxy)

        # ---------------------------------------------------------- idle replica
        proxy, url = start_proxy(procs, cmd, workdir, "idle", backend_url, cache)
        wrk_session = await asyncio.to_thread(open_session, url, "proxyrunner[idle]")
        print(f"\n[idle] proxy pid {proxy.pid}, RSS {rss_kb(proxy.pid):,} KB")
        rows.append(await measure_wrk(tools["wrk"], url, wrk_session, proxy, "idle", args))
        procs.stop(proxy)
        results = {
            "rss_before_kb": rss_before,
            "rss_after_sessions_kb": rss_sessions,
            "rss_after_streams_kb": rss_streams,
            "rss_after_load_kb": rss_after_load,
            "kb_per_idle_session": per_session,
            "kb_per_open_stream": per_stream,
            "proxy_fds_with_streams": fds,
            "proxy_open_files_limit": proxy_limit,
            "runner_open_files_limit": own_limit,
        }
    finally:
        with uninterruptible():
            for r in streams:
                r.close()
            if stream_client is not None:
                await stream_client.close()
            await holder.stop()
            procs.stop_all()
            if args.keep_tmp:
                print(f"\nconfigs and logs kept in {workdir}")
            else:
                shutil.rmtree(workdir, ignore_errors=True)

    held, idle = rows
    ratio = held.rps / idle.rps if idle.rps else 0.0
    print()
    print(
        f"  RSS per idle session   {kb(results['kb_per_idle_session']):>12}  "
        f"(target < {SESSION_TARGET_KB:g} KB)"
        + verdict(results["kb_per_idle_session"], SESSION_TARGET_KB, True)
    )
    print(
        f"  RSS per open stream    {kb(results['kb_per_open_stream']):>12}  "
        f"(target < {STREAM_TARGET_KB:g} KB)"
        + verdict(results["kb_per_open_stream"], STREAM_TARGET_KB, True)
    )
    print(f"  req/s held             {held.rps:>12,.0f}")
    print(f"  req/s idle replica     {idle.rps:>12,.0f}")
    print(
        f"  held/idle rps@{args.connections:<8} {ratio:>12.3f}  (target >= {RPS_TARGET:.2f})"
        + verdict(ratio, RPS_TARGET, False)
    )
    summary = {
        "benchmark": "held_sessions",
        "sessions": args.sessions,
        "streams": args.streams,
        "duration_s": args.duration,
        "connections": args.connections,
        "environment": env_info | {"proxyrunner": version},
        "memory": results,
        "throughput": [asdict(r) for r in rows],
        "ratios": {f"held/idle rps@{args.connections}": ratio},
    }
    print(json.dumps(summary, separators=(",", ":")))
    return 1 if any(r.errors for r in rows) else 0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="RSS per idle session and per open listen stream, and tools/call "
        "throughput while they are held, against an idle replica."
    )
    parser.add_argument("--sessions", type=int, default=10_000, help="idle sessions to hold")
    parser.add_argument("--streams", type=int, default=1_000, help="GET listen streams to hold")
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections")
    parser.add_argument("--proxyrunner", help="proxyrunner executable (default: the venv's)")
    parser.add_argument("--keep-tmp", action="store_true", help="keep configs and logs")
    args = parser.parse_args(argv)
    if args.sessions < 1 or not 0 <= args.streams <= args.sessions:
        parser.error("--sessions must be >= 1 and --streams 0..--sessions")
    if not 1 <= args.duration <= 600 or args.connections < 1:
        parser.error("--duration must be 1..600 and --connections >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    import signal

    from proxy_overhead import _raise_exit

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_exit)
    signal.signal(signal.SIGHUP, _raise_exit)
    args = parse_args(argv)
    try:
        return asyncio.run(run(args))
    except BenchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; everything started was stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
