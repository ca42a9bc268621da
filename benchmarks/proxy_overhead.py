"""Proxy-overhead benchmark: MCP ``tools/call`` through nothing, a naive proxy and proxyrunner.

Everything runs on 127.0.0.1. The proxy under test is pinned to CPU core 0; the load
generator (wrk), the canned backend (nginx) and redis are pinned to core 1, so the proxy
has a core of its own and its cost shows up as lost throughput and added latency.

    .venv/bin/python benchmarks/proxy_overhead.py
    .venv/bin/python benchmarks/proxy_overhead.py --duration 10 --store both
    .venv/bin/python benchmarks/proxy_overhead.py --revision 2026-07-28
    .venv/bin/python benchmarks/proxy_overhead.py --targets proxyrunner --auth both

See benchmarks/README.md for how to read the output.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import grp
import json
import os
import pwd
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any

from rounds import median_ratios, median_rows

HERE = Path(__file__).resolve().parent
LUA_SCRIPT = HERE / "mcp_call.lua"
NAIVE_PROXY = HERE / "naive_proxy.py"

PROXY_CORE = 0
LOAD_CORE = 1
PROTOCOL_VERSION = "2025-06-18"
MODERN_REVISION = "2026-07-28"
CANNED_SESSION_ID = "canned-backend-session"
CANNED_BODY = (
    '{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"ok"}],"isError":false}}'
)
INITIALIZE_BODY = json.dumps(
    {
        "jsonrpc": "2.0",
        "id": 0,
        "method": "initialize",
        "params": {
            "protocolVersion": PROTOCOL_VERSION,
            "capabilities": {},
            "clientInfo": {"name": "bench", "version": "1"},
        },
    },
    separators=(",", ":"),
)
INITIALIZED_BODY = '{"jsonrpc":"2.0","method":"notifications/initialized"}'
CHECK_CALL_BODY = (
    '{"jsonrpc":"2.0","id":"bench-check","method":"tools/call",'
    '"params":{"name":"echo","arguments":{"text":"ok"}}}'
)
BASE_HEADERS = {
    "Accept": "application/json, text/event-stream",
    "Content-Type": "application/json",
}
REQUIRED_TOOLS = {
    "wrk": "wrk",
    "nginx": "nginx-light",
    "taskset": "util-linux",
}
READY_TIMEOUT_S = 30.0
AUTH_MODES = ("none", "jwt")
# --telemetry: off (no telemetry_config); tracing on at 0% or 100% sampling; OTLP metrics
# alone (every request recorded in the two duration histograms).
TELEMETRY_MODES = {"off": None, "trace0": "0", "trace100": "1", "metrics": "metrics"}
JWT_KID = "bench-rs256"
JWT_LIFETIME_S = 3600
AS_METADATA_PATH = "/.well-known/oauth-authorization-server"
OIDC_DISCOVERY_PATH = "/.well-known/openid-configuration"
JWKS_PATH = "/jwks.json"
JWT_RPS_TARGET = 0.85
# Issue 11: tracing at 0% sampling within 2% of telemetry off, every request traced
# within 25%. (OTLP metrics alone have no target: their ratio is printed bare.)
TELEMETRY_TARGETS = {"trace0": 0.98, "trace100": 0.75}
CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(RuntimeError):
    """A failure that ends the run with a message (and cleanup)."""


class TargetSkipped(RuntimeError):
    """A target that cannot run here; the others still do."""


# --------------------------------------------------------------------------- processes


def _die_with_parent() -> None:
    """preexec_fn: SIGTERM the child if the runner dies without cleaning up (e.g. SIGKILL)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _process_group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class Managed:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path | None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, lines: int = 20) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])


class Processes:
    """Every child runs in its own process group; stop_all() kills each group."""

    def __init__(self, workdir: Path) -> None:
        self._workdir = workdir
        self._running: list[Managed] = []

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        log: bool = True,
    ) -> Managed:
        log_path = self._workdir / f"{name}.log" if log else None
        out: IO[bytes] | int = subprocess.DEVNULL
        if log_path is not None:
            out = log_path.open("ab")
        try:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                preexec_fn=_die_with_parent,  # single-threaded runner
            )
        finally:
            if not isinstance(out, int):
                out.close()
        managed = Managed(name, proc, log_path)
        self._running.append(managed)
        return managed

    def stop(self, managed: Managed, grace_s: float = 5.0) -> None:
        pgid = managed.proc.pid  # start_new_session: pgid == pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            if managed.proc.poll() is not None and not _process_group_alive(pgid):
                break
            time.sleep(0.05)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            managed.proc.wait(timeout=5)
        if managed in self._running:
            self._running.remove(managed)

    def stop_all(self) -> None:
        for managed in reversed(list(self._running)):
            self.stop(managed)


# --------------------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never use HTTP_PROXY


@dataclass
class HttpReply:
    status: int
    headers: dict[str, str]
    body: bytes


def http(
    method: str, url: str, body: str | None = None, headers: dict[str, str] | None = None
) -> HttpReply:
    data = body.encode() if body is not None else None
    if not url.startswith("http://127.0.0.1:"):
        raise BenchError(f"refusing non-loopback URL {url}")
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})  # noqa: S310
    try:
        with _OPENER.open(req, timeout=5) as resp:
            headers_out = {k.lower(): v for k, v in resp.headers.items()}
            return HttpReply(resp.status, headers_out, resp.read())
    except urllib.error.HTTPError as err:
        return HttpReply(err.code, {k.lower(): v for k, v in err.headers.items()}, err.read())


def wait_until(what: str, check: Any, managed: Managed | None, timeout_s: float) -> None:
    """Poll check() (truthy = ready) until timeout_s; fail early if the process exited."""
    deadline = time.monotonic() + timeout_s
    last_error = ""
    while time.monotonic() < deadline:
        if managed is not None and managed.proc.poll() is not None:
            raise BenchError(
                f"{what}: process exited with code {managed.proc.returncode}\n{managed.log_tail()}"
            )
        try:
            if check():
                return
        except (OSError, urllib.error.URLError) as err:
            last_error = str(err)
        time.sleep(0.1)
    tail = managed.log_tail() if managed is not None else ""
    raise BenchError(f"{what}: not ready after {timeout_s:.0f}s ({last_error})\n{tail}")


def proc_group_cpu_ticks(pgid: int) -> int:
    """utime+stime (clock ticks) of every live process in the process group."""
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            raw = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rfind(")") + 2 :].split()
        # fields[0] is field 3 (state): pgrp is field 5, utime 14, stime 15.
        if int(fields[2]) == pgid:
            total += int(fields[11]) + int(fields[12])
    return total


def taskset(core: int, argv: Sequence[str]) -> list[str]:
    return ["taskset", "-c", str(core), *argv]


def check_prerequisites(need_redis: bool) -> dict[str, str]:
    tools = dict(REQUIRED_TOOLS)
    if need_redis:
        tools["redis-server"] = "redis-server"
    found: dict[str, str] = {}
    missing: list[str] = []
    for tool, package in tools.items():
        path = shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin")
        if path is None:
            missing.append(package)
        else:
            found[tool] = path
    if missing:
        raise BenchError(
            "missing tools; install them with:\n"
            f"    apt-get update && apt-get install -y {' '.join(sorted(set(missing)))}"
        )
    cores = os.sched_getaffinity(0)
    if not {PROXY_CORE, LOAD_CORE} <= cores:
        raise BenchError(
            f"needs CPU cores {PROXY_CORE} and {LOAD_CORE} (allowed here: {sorted(cores)})"
        )
    return found


# --------------------------------------------------------------------------- tokens


class TokenIssuer:
    """A stand-in authorization server for ``--auth jwt``: an RS256 key made at start-up,
    whose JWKS and RFC 8414 metadata nginx serves as static files next to the canned
    backend, and which signs the access tokens wrk sends."""

    def __init__(self) -> None:
        try:
            from joserfc import jwt
            from joserfc.errors import JoseError
            from joserfc.jwk import KeySet, RSAKey
        except ImportError as err:
            raise BenchError(
                "--auth jwt needs joserfc; run the benchmark with the project's .venv/bin/python"
            ) from err
        self._jwt = jwt
        self._key_set = KeySet
        self._jose_error = JoseError
        self.key = RSAKey.generate_key(
            2048, parameters={"kid": JWT_KID, "use": "sig", "alg": "RS256"}
        )
        self.issuer = ""  # nginx's base URL, once its port is known

    def jwks(self) -> dict[str, Any]:
        return {"keys": [self.key.as_dict(private=False)]}

    def metadata(self) -> dict[str, Any]:
        """RFC 8414 authorization-server metadata (also served as OpenID discovery)."""
        return {
            "issuer": self.issuer,
            "jwks_uri": self.issuer + JWKS_PATH,
            "token_endpoint": self.issuer + "/token",
            "response_types_supported": ["code"],
            "grant_types_supported": ["client_credentials"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "subject_types_supported": ["public"],
        }

    def write_static(self, workdir: Path, base_url: str) -> dict[str, Path]:
        """Write the JWKS and the metadata; return {URL path: file} for nginx."""
        self.issuer = base_url
        jwks_file = workdir / "jwks.json"
        meta_file = workdir / "oauth-authorization-server.json"
        jwks_file.write_text(json.dumps(self.jwks()))
        meta_file.write_text(json.dumps(self.metadata()))
        return {AS_METADATA_PATH: meta_file, OIDC_DISCOVERY_PATH: meta_file, JWKS_PATH: jwks_file}

    def sign(self, audience: str) -> str:
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "aud": audience,
            "sub": "bench-client",
            "iat": now,
            "exp": now + JWT_LIFETIME_S,
        }
        header = {"alg": "RS256", "typ": "JWT", "kid": JWT_KID}
        token: str = self._jwt.encode(header, claims, self.key)
        return token

    def check_served(self) -> None:
        """Fetch the metadata and JWKS from nginx, as a resource server would, and verify a
        freshly signed token against the served keys (signature, iss, aud, exp)."""
        meta_reply = http("GET", self.issuer + AS_METADATA_PATH)
        if meta_reply.status != 200:
            raise BenchError(f"nginx: {AS_METADATA_PATH} -> HTTP {meta_reply.status}")
        meta = json.loads(meta_reply.body)
        if meta.get("issuer") != self.issuer or not meta.get("jwks_uri"):
            raise BenchError(f"nginx: bad {AS_METADATA_PATH}: {meta}")
        jwks_reply = http("GET", meta["jwks_uri"])
        if jwks_reply.status != 200:
            raise BenchError(f"nginx: {meta['jwks_uri']} -> HTTP {jwks_reply.status}")
        audience = "http://127.0.0.1:1/mcp"
        keys = self._key_set.import_key_set(json.loads(jwks_reply.body))
        try:
            token = self._jwt.decode(self.sign(audience), keys, algorithms=["RS256"])
            self._jwt.JWTClaimsRegistry(
                iss={"essential": True, "value": self.issuer},
                aud={"essential": True, "value": audience},
                exp={"essential": True},
            ).validate(token.claims)
        except self._jose_error as err:
            raise BenchError(f"token does not verify against the served JWKS: {err!r}") from err


# --------------------------------------------------------------------------- services


def nginx_config(
    workdir: Path,
    port: int,
    static: dict[str, Path] | None = None,
    *,
    connections: int = 1024,
    listen_upstream: int | None = None,
) -> str:
    """The canned backend: POST /mcp answers a fixed tools/call result. ``static`` adds
    GET-only JSON files; ``listen_upstream`` passes GET /mcp (listen streams) unbuffered
    to that loopback port; ``connections`` sizes nginx for that many at once."""
    user_line = ""
    if os.geteuid() == 0:
        # As root, nginx would switch its worker to "nobody": keep the current user instead.
        user = pwd.getpwuid(os.geteuid()).pw_name
        group = grp.getgrgid(os.getegid()).gr_name
        user_line = f"user {user} {group};"
    body = CANNED_BODY.replace("'", "\\'")
    static_locations = "".join(
        f"""
        location = {path} {{
            limit_except GET {{ deny all; }}
            default_type application/json;
            alias {file};
        }}"""
        for path, file in (static or {}).items()
    )
    rlimit = ""
    if connections != 1024:
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        rlimit = f"\nworker_rlimit_nofile {min(hard, 2 * connections + 256)};"
    methods = "limit_except POST { deny all; }"
    listen_location = ""
    if listen_upstream is not None:
        methods = (
            "error_page 418 = @listen;\n            if ($request_method = GET) { return 418; }"
        )
        listen_location = f"""
        location @listen {{
            proxy_pass http://127.0.0.1:{listen_upstream};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_read_timeout 3600s;
        }}"""
    return f"""
{user_line}
daemon off;
worker_processes 1;{rlimit}
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log warn;
events {{ worker_connections {connections}; }}
http {{
    access_log off;
    server_tokens off;
    client_body_temp_path {workdir}/nginx-body;
    proxy_temp_path {workdir}/nginx-proxy;
    fastcgi_temp_path {workdir}/nginx-fastcgi;
    uwsgi_temp_path {workdir}/nginx-uwsgi;
    scgi_temp_path {workdir}/nginx-scgi;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    server {{
        listen 127.0.0.1:{port};
        location = /mcp {{
            {methods}
            default_type application/json;
            add_header Mcp-Session-Id {CANNED_SESSION_ID} always;
            return 200 '{body}';
        }}{listen_location}{static_locations}
        location / {{ return 404; }}
    }}
}}
"""


def start_nginx(
    procs: Processes, nginx: str, workdir: Path, issuer: TokenIssuer | None = None
) -> tuple[Managed, str]:
    """The canned backend; with an issuer, nginx also serves its JWKS and metadata."""
    port = free_port()
    static = issuer.write_static(workdir, f"http://127.0.0.1:{port}") if issuer else None
    conf = workdir / "nginx.conf"
    conf.write_text(nginx_config(workdir, port, static))
    argv = [nginx, "-p", str(workdir), "-e", str(workdir / "nginx-error.log"), "-c", str(conf)]
    managed = procs.start("nginx", taskset(LOAD_CORE, argv))
    url = f"http://127.0.0.1:{port}/mcp"
    wait_until(
        "nginx", lambda: http("POST", url, CHECK_CALL_BODY, BASE_HEADERS).status == 200, managed, 10
    )
    if issuer is not None:
        issuer.check_served()
    return managed, url


def start_redis(procs: Processes, redis_server: str, workdir: Path) -> tuple[Managed, int, str]:
    port = free_port()
    password = secrets.token_hex(16)
    conf = workdir / "redis.conf"
    # A config file (mode 0600) keeps the password off the process list.
    conf.write_text(
        f"bind 127.0.0.1\nport {port}\nrequirepass {password}\nsave ''\nappendonly no\n"
        f"dir {workdir}\nlogfile {workdir}/redis.log\ndaemonize no\n"
    )
    conf.chmod(0o600)
    managed = procs.start("redis", taskset(LOAD_CORE, [redis_server, str(conf)]))

    def ping() -> bool:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(f"AUTH {password}\r\nPING\r\n".encode())
            reply = b""
            deadline = time.monotonic() + 1
            while b"+PONG" not in reply and time.monotonic() < deadline:
                chunk = sock.recv(256)
                if not chunk:
                    break
                reply += chunk
            return b"+PONG" in reply

    wait_until("redis-server", ping, managed, 10)
    return managed, port, password


def proxyrunner_target(store: str, auth: str, telemetry: str = "off") -> str:
    tags = (
        [store] + ([auth] if auth != "none" else []) + ([telemetry] if telemetry != "off" else [])
    )
    return f"proxyrunner[{','.join(tags)}]"


def start_collector(workdir: Path) -> Any:
    """Jaeger (the test suite's launcher), pinned to the load core: the collector the
    traced runs export to."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.trace_backend import TraceBackend, find_jaeger

    binary = find_jaeger()
    if binary is None:
        raise BenchError("--telemetry trace*: Jaeger is not built (run scripts/trace-test-env)")
    return TraceBackend(binary, workdir / "jaeger").start()


def proxyrunner_command(explicit: str | None) -> list[str]:
    if explicit:
        return [explicit]
    script = Path(sys.executable).parent / "proxyrunner"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "proxyrunner"]


def proxyrunner_available(cmd: list[str]) -> str:
    """The version string, or raise TargetSkipped saying why not."""
    try:
        out = subprocess.run(
            [*cmd, "--version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        raise TargetSkipped(f"`{' '.join(cmd)} --version` failed: {err}") from err
    if out.returncode != 0:
        last = (out.stderr.strip() or out.stdout.strip()).splitlines()[-1:] or ["no output"]
        raise TargetSkipped(
            f"`{' '.join(cmd)} --version` exited {out.returncode}: {last[0]} "
            "(proxyrunner not built yet?)"
        )
    return out.stdout.strip() or out.stderr.strip()


# --------------------------------------------------------------------------- measuring


@dataclass
class WrkResult:
    requests: int
    duration_us: int
    bytes: int
    p50_us: float
    p90_us: float
    p99_us: float
    mean_us: float
    max_us: float
    errors: dict[str, int]

    @property
    def rps(self) -> float:
        return self.requests / (self.duration_us / 1e6) if self.duration_us else 0.0

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


def run_wrk(
    wrk: str,
    url: str,
    connections: int,
    duration_s: int,
    session_id: str,
    revision: str,
    authorization: str = "",
) -> tuple[WrkResult, float]:
    """Run wrk pinned to the load core; return its result and the wall time it took."""
    env = dict(os.environ)
    env["MCP_SESSION_ID"] = session_id
    env["MCP_PROTOCOL_VERSION"] = revision
    env["MCP_AUTHORIZATION"] = authorization
    argv = taskset(
        LOAD_CORE,
        [
            wrk,
            "-t1",
            f"-c{connections}",
            f"-d{duration_s}s",
            "--timeout",
            "5s",
            "-s",
            str(LUA_SCRIPT),
            url,
        ],
    )
    started = time.monotonic()
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        start_new_session=True,
        preexec_fn=_die_with_parent,
    )
    try:
        out, err = proc.communicate(timeout=duration_s + 30)
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    wall = time.monotonic() - started
    for line in out.decode(errors="replace").splitlines():
        if line.startswith("MCPBENCH "):
            data = json.loads(line.removeprefix("MCPBENCH "))
            return WrkResult(**data), wall
    raise BenchError(
        f"wrk printed no MCPBENCH line (exit {proc.returncode}):\n"
        f"{out.decode(errors='replace')}\n{err.decode(errors='replace')}"
    )


@dataclass
class Row:
    target: str
    connections: int
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    requests: int
    errors: int
    proxy_cpu_us_per_req: float | None
    proxy_cpu_percent: float | None
    backend_cpu_us_per_req: float | None
    error_detail: dict[str, int] = field(default_factory=dict)
    round: int = 0
    """Which of the ``--rounds`` this is (1, 2, ...); 0 for a target measured once."""


def measure(
    *,
    target: str,
    wrk: str,
    url: str,
    session_id: str,
    revision: str,
    connections: int,
    duration_s: int,
    warmup_s: int,
    proxy: Managed | None,
    backend: Managed,
    authorization: str = "",
) -> Row:
    if warmup_s > 0:
        run_wrk(wrk, url, connections, warmup_s, session_id, revision, authorization)
    proxy_before = proc_group_cpu_ticks(proxy.pid) if proxy else 0
    backend_before = proc_group_cpu_ticks(backend.pid)
    result, wall = run_wrk(wrk, url, connections, duration_s, session_id, revision, authorization)
    proxy_ticks = proc_group_cpu_ticks(proxy.pid) - proxy_before if proxy else 0
    backend_ticks = proc_group_cpu_ticks(backend.pid) - backend_before

    def per_request(ticks: int) -> float | None:
        if not result.requests:
            return None
        return ticks / CLK_TCK / result.requests * 1e6

    return Row(
        target=target,
        connections=connections,
        rps=result.rps,
        p50_ms=result.p50_us / 1000,
        p90_ms=result.p90_us / 1000,
        p99_ms=result.p99_us / 1000,
        requests=result.requests,
        errors=result.error_count,
        proxy_cpu_us_per_req=per_request(proxy_ticks) if proxy else None,
        proxy_cpu_percent=(proxy_ticks / CLK_TCK / wall * 100) if proxy and wall else None,
        backend_cpu_us_per_req=per_request(backend_ticks),
        error_detail={k: v for k, v in result.errors.items() if v},
    )


def auth_headers(authorization: str) -> dict[str, str]:
    return {"Authorization": authorization} if authorization else {}


def open_session(url: str, target: str, authorization: str = "") -> str:
    """initialize through the target; return the Mcp-Session-Id it hands out."""
    reply = http("POST", url, INITIALIZE_BODY, BASE_HEADERS | auth_headers(authorization))
    if reply.status != 200:
        raise BenchError(f"{target}: initialize -> HTTP {reply.status}: {reply.body[:300]!r}")
    session_id = reply.headers.get("mcp-session-id", "")
    if not session_id:
        raise BenchError(f"{target}: initialize response has no Mcp-Session-Id header")
    headers = {
        **BASE_HEADERS,
        **auth_headers(authorization),
        "Mcp-Session-Id": session_id,
        "MCP-Protocol-Version": PROTOCOL_VERSION,
    }
    note = http("POST", url, INITIALIZED_BODY, headers)
    if note.status >= 300:
        print(f"  note: {target}: notifications/initialized -> HTTP {note.status}")
    check = http("POST", url, CHECK_CALL_BODY, headers)
    if check.status != 200 or b'"result"' not in check.body:
        raise BenchError(f"{target}: tools/call check -> HTTP {check.status}: {check.body[:300]!r}")
    return session_id


def check_stateless(url: str, target: str, authorization: str = "") -> str:
    """2026-07-28 has no sessions: check that one call with the revision's headers and
    envelope gets a result; the load then runs without a session id."""
    body = json.dumps(
        {
            "jsonrpc": "2.0",
            "id": "bench-check",
            "method": "tools/call",
            "params": {
                "name": "echo",
                "arguments": {"text": "ok"},
                "_meta": {
                    "io.modelcontextprotocol/protocolVersion": MODERN_REVISION,
                    "io.modelcontextprotocol/clientCapabilities": {},
                },
            },
        },
        separators=(",", ":"),
    )
    headers = {
        **BASE_HEADERS,
        **auth_headers(authorization),
        "MCP-Protocol-Version": MODERN_REVISION,
        "Mcp-Method": "tools/call",
        "Mcp-Name": "echo",
    }
    check = http("POST", url, body, headers)
    if check.status != 200 or b'"result"' not in check.body:
        raise BenchError(f"{target}: tools/call check -> HTTP {check.status}: {check.body[:300]!r}")
    return ""


# --------------------------------------------------------------------------- report


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(rows: list[Row]) -> None:
    width = max([22, *(len(r.target) for r in rows)])
    header = (
        f"{'target':<{width}} {'conns':>5} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'errors':>6} {'proxy CPU us/req':>16} {'proxy CPU %':>11} {'backend us/req':>14}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r.target:<{width}} {r.connections:>5} {r.rps:>10.0f} {r.p50_ms:>8.3f} "
            f"{r.p99_ms:>8.3f} {r.errors:>6} {fmt(r.proxy_cpu_us_per_req, '.1f'):>16} "
            f"{fmt(r.proxy_cpu_percent, '.0f'):>11} {fmt(r.backend_cpu_us_per_req, '.1f'):>14}"
        )


def compute_ratios(rows: list[Row], connections: list[int]) -> dict[str, float]:
    high = 32 if 32 in connections else max(connections)
    low = 1 if 1 in connections else min(connections)
    by_key = {(r.target, r.connections): r for r in rows}
    targets = list(dict.fromkeys(r.target for r in rows))
    ratios: dict[str, float] = {}
    direct_hi = by_key.get(("direct", high))
    naive_hi = by_key.get(("naive", high))
    direct_lo = by_key.get(("direct", low))
    for target in targets:
        hi = by_key.get((target, high))
        lo = by_key.get((target, low))
        if target.startswith("proxyrunner") and hi is not None:
            if direct_hi is not None and direct_hi.rps:
                ratios[f"{target}/direct rps@{high}"] = hi.rps / direct_hi.rps
            if naive_hi is not None and naive_hi.rps:
                ratios[f"{target}/naive rps@{high}"] = hi.rps / naive_hi.rps
        if target != "direct" and lo is not None and direct_lo is not None:
            ratios[f"{target} p50 added ms@{low}"] = lo.p50_ms - direct_lo.p50_ms
    for conns in (low, high):
        mem = by_key.get(("proxyrunner[memory]", conns))
        red = by_key.get(("proxyrunner[redis]", conns))
        if mem is not None and red is not None and mem.rps:
            ratios[f"redis/memory rps@{conns}"] = red.rps / mem.rps
    for store in ("memory", "redis"):
        none_lo = by_key.get((proxyrunner_target(store, "none"), low))
        jwt_lo = by_key.get((proxyrunner_target(store, "jwt"), low))
        for conns in (low, high):
            none = by_key.get((proxyrunner_target(store, "none"), conns))
            jwt = by_key.get((proxyrunner_target(store, "jwt"), conns))
            if none is not None and jwt is not None and none.rps:
                ratios[f"jwt/none[{store}] rps@{conns}"] = jwt.rps / none.rps
        if none_lo is not None and jwt_lo is not None:
            ratios[f"jwt-none[{store}] p50 added ms@{low}"] = jwt_lo.p50_ms - none_lo.p50_ms
        for auth in AUTH_MODES:
            for conns in (low, high):
                off = by_key.get((proxyrunner_target(store, auth), conns))
                for mode in [m for m in TELEMETRY_MODES if m != "off"]:
                    on = by_key.get((proxyrunner_target(store, auth, mode), conns))
                    if off is not None and on is not None and off.rps:
                        ratios[f"{mode}/off[{store},{auth}] rps@{conns}"] = on.rps / off.rps
    return ratios


def print_ratios(
    ratios: dict[str, float], high: int = 32, spreads: dict[str, tuple[float, float]] | None = None
) -> None:
    if not ratios:
        return
    spreads = spreads or {}
    print()
    width = max(len(k) for k in ratios)
    for key, value in ratios.items():
        if "added" in key:
            print(f"  {key:<{width}}  {value:+.3f} ms")
        else:
            note = ""
            if key.startswith("redis/memory"):
                note = "  (target >= 0.90)" + ("" if value >= 0.90 else "  BELOW TARGET")
            elif key.startswith("jwt/none") and key.endswith(f"@{high}"):
                note = f"  (target >= {JWT_RPS_TARGET:.2f})" + (
                    "" if value >= JWT_RPS_TARGET else "  BELOW TARGET"
                )
            elif key.split("/")[0] in TELEMETRY_TARGETS and key.endswith(f"@{high}"):
                target = TELEMETRY_TARGETS[key.split("/")[0]]
                note = f"  (target >= {target:.2f})" + ("" if value >= target else "  BELOW TARGET")
            if key in spreads:
                low, top = spreads[key]
                note = f"  [{low:.3f} .. {top:.3f}]" + note
            print(f"  {key:<{width}}  {value:.3f}{note}")


def environment(tools: dict[str, str]) -> dict[str, str]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info = {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "kernel": os.uname().release,
        "python": sys.version.split()[0],
    }
    with contextlib.suppress(ImportError):
        import aiohttp

        info["aiohttp"] = aiohttp.__version__
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run([tools["nginx"], "-v"], capture_output=True, text=True, timeout=10)
        info["nginx"] = out.stderr.strip().removeprefix("nginx version: ")
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run([tools["wrk"], "-v"], capture_output=True, text=True, timeout=10)
        info["wrk"] = (out.stdout + out.stderr).split("Copyright")[0].strip()
    return info


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Measure MCP tools/call throughput and latency: direct vs naive vs proxyrunner."
    )
    parser.add_argument("--duration", type=int, default=10, help="seconds per measured run")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of warm-up before each")
    parser.add_argument("--connections", default="1,32", help="comma-separated, e.g. 1,32")
    parser.add_argument("--targets", default="direct,naive,proxyrunner")
    parser.add_argument("--store", choices=("memory", "redis", "both"), default="memory")
    parser.add_argument(
        "--auth",
        choices=(*AUTH_MODES, "both"),
        default="none",
        help="proxyrunner without authentication (default), as an OAuth resource server "
        "validating an RS256 JWT on every request (jwt), or both, one after the other",
    )
    parser.add_argument(
        "--telemetry",
        default="off",
        help="comma-separated proxyrunner telemetry modes: off (default), trace0 (tracing "
        "on, 0%% sampled), trace100 (every request traced), metrics (OTLP metrics only); "
        "the exports go to a real Jaeger (scripts/trace-test-env) on the load core",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="measure every proxyrunner variant this many times, interleaved (A B A B), and "
        "report medians and each ratio's median and spread: for noisy machines",
    )
    parser.add_argument("--proxyrunner", help="proxyrunner executable (default: the venv's)")
    parser.add_argument("--keep-tmp", action="store_true", help="keep configs and logs")
    parser.add_argument(
        "--revision",
        choices=(PROTOCOL_VERSION, MODERN_REVISION),
        default=PROTOCOL_VERSION,
        help=f"MCP revision of the load: {PROTOCOL_VERSION} in a session (default), or "
        f"{MODERN_REVISION} without sessions, with its standard headers",
    )
    args = parser.parse_args(argv)
    try:
        args.connections = [int(c) for c in args.connections.split(",") if c.strip()]
    except ValueError:
        parser.error("--connections: comma-separated integers")
    if not args.connections or min(args.connections) < 1:
        parser.error("--connections: at least one positive integer")
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = set(args.targets) - {"direct", "naive", "proxyrunner"}
    if unknown:
        parser.error(f"--targets: unknown {sorted(unknown)}")
    if not 1 <= args.duration <= 600 or not 0 <= args.warmup <= 60:
        parser.error("--duration must be 1..600 and --warmup 0..60")
    if not 1 <= args.rounds <= 50:
        parser.error("--rounds must be 1..50")
    return args


def _raise_exit(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def uninterruptible() -> Iterator[None]:
    """Ignore Ctrl-C while cleaning up, so a second Ctrl-C cannot leave processes behind."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def run(args: argparse.Namespace) -> int:
    stores = ["memory", "redis"] if args.store == "both" else [args.store]
    auths = list(AUTH_MODES) if args.auth == "both" else [args.auth]
    telemetries = [t.strip() for t in args.telemetry.split(",") if t.strip()]
    for mode in telemetries:
        if mode not in TELEMETRY_MODES:
            raise SystemExit(f"--telemetry: unknown mode {mode!r} ({', '.join(TELEMETRY_MODES)})")
    want_proxyrunner = "proxyrunner" in args.targets
    tools = check_prerequisites(need_redis=want_proxyrunner and "redis" in stores)
    # The runner itself only waits on wrk: keep it off the proxy's core.
    os.sched_setaffinity(0, {LOAD_CORE})

    env_info = environment(tools)
    print("proxy-overhead benchmark: " + ", ".join(f"{k}={v}" for k, v in env_info.items()))
    print(
        f"proxy on core {PROXY_CORE}; wrk + nginx + redis on core {LOAD_CORE}; "
        f"{args.duration}s per run after {args.warmup}s warm-up; connections {args.connections}; "
        f"MCP {args.revision}"
        + ("" if auths == ["none"] else f"; proxyrunner auth {'+'.join(auths)}")
    )
    # Made before nginx starts: nginx serves its JWKS and metadata as static files.
    issuer = TokenIssuer() if "jwt" in auths else None

    rows: list[Row] = []
    collector: Any = None
    skipped: dict[str, str] = {}
    failed: dict[str, str] = {}
    versions: dict[str, str] = {}
    workdir = Path(tempfile.mkdtemp(prefix="proxy-overhead-"))
    procs = Processes(workdir)
    try:
        nginx, direct_url = start_nginx(procs, tools["nginx"], workdir, issuer)
        if issuer is not None:
            print(
                f"issuer {issuer.issuer}: RFC 8414 metadata and JWKS (RS256, kid {JWT_KID}) "
                "served by nginx; a token signed here verifies against them"
            )

        def bench(
            target: str, url: str, proxy: Managed | None, authorization: str = "", round_no: int = 0
        ) -> None:
            # The first authenticated call fetches the keys: the load runs with them cached.
            how = ", Bearer JWT" if authorization else ""
            if args.revision == MODERN_REVISION:
                session_id = check_stateless(url, target, authorization)
                print(f"\n[{target}] {MODERN_REVISION}, no session{how}")
            else:
                session_id = open_session(url, target, authorization)
                print(f"\n[{target}] session id {session_id!r}{how}")
            if target.startswith("proxyrunner") and session_id == CANNED_SESSION_ID:
                print(f"  warning: {target} passed the backend's session id through")
            for conns in args.connections:
                row = measure(
                    target=target,
                    wrk=tools["wrk"],
                    url=url,
                    session_id=session_id,
                    revision=args.revision,
                    connections=conns,
                    duration_s=args.duration,
                    warmup_s=args.warmup,
                    proxy=proxy,
                    backend=nginx,
                    authorization=authorization,
                )
                row.round = round_no
                rows.append(row)
                detail = f" errors={row.error_detail}" if row.errors else ""
                print(
                    f"  c={conns:<3} {row.rps:9.0f} req/s  p50 {row.p50_ms:.3f} ms  "
                    f"p99 {row.p99_ms:.3f} ms  proxy CPU "
                    f"{fmt(row.proxy_cpu_us_per_req, '.1f')} us/req{detail}"
                )

        if "direct" in args.targets:
            bench("direct", direct_url, None)

        if "naive" in args.targets:
            port = free_port()
            argv = [
                sys.executable,
                str(NAIVE_PROXY),
                "--port",
                str(port),
                "--upstream",
                direct_url.removesuffix("/mcp"),
            ]
            naive = procs.start("naive", taskset(PROXY_CORE, argv))
            url = f"http://127.0.0.1:{port}/mcp"
            wait_until(
                "naive proxy",
                lambda: http("POST", url, CHECK_CALL_BODY, BASE_HEADERS).status == 200,
                naive,
                READY_TIMEOUT_S,
            )
            bench("naive", url, naive)
            procs.stop(naive)

        if want_proxyrunner:
            cmd = proxyrunner_command(args.proxyrunner)
            try:
                versions["proxyrunner"] = proxyrunner_available(cmd)
            except TargetSkipped as err:
                for store in stores:
                    for auth in auths:
                        for mode in telemetries:
                            skipped[proxyrunner_target(store, auth, mode)] = str(err)
                print(f"\n[proxyrunner] SKIPPED: {err}")
                cmd = []
            redis: tuple[Managed, int, str] | None = None
            if cmd and any(TELEMETRY_MODES[m] is not None for m in telemetries):
                collector = start_collector(workdir)
                os.sched_setaffinity(collector.proc.pid, {LOAD_CORE})
            # Round by round, every variant once: A B A B, not A A B B (see rounds.py).
            runs = [
                (r, s, a, t)
                for r in range(1, args.rounds + 1)
                for s in stores
                for a in auths
                for t in telemetries
            ]
            for round_no, store, auth, mode in runs if cmd else []:
                if args.rounds > 1 and (store, auth, mode) == runs[0][1:]:
                    print(f"\n--- round {round_no} of {args.rounds}")
                target = proxyrunner_target(store, auth, mode)
                name = target.removeprefix("proxyrunner[").removesuffix("]").replace(",", "-")
                port = free_port()
                base = f"http://127.0.0.1:{port}"
                config: dict[str, Any] = {
                    "name": "bench",
                    "transport": "streamable-http",
                    "host": "127.0.0.1",
                    "port": port,
                    "remote_url": direct_url,
                }
                rate = TELEMETRY_MODES[mode]
                if rate is not None and collector is not None:
                    config["telemetry_config"] = {
                        "endpoint": collector.otlp_http_endpoint,
                        "insecure": True,
                        "tracingEnabled": rate != "metrics",
                        "metricsEnabled": rate == "metrics",
                        "samplingRate": "0" if rate == "metrics" else rate,
                    }
                authorization = ""
                if auth == "jwt" and issuer is not None:
                    # No jwks_url: the proxy discovers it from the issuer's RFC 8414 metadata.
                    config["oidc_config"] = {"issuer": issuer.issuer, "resource_url": f"{base}/mcp"}
                    authorization = "Bearer " + issuer.sign(f"{base}/mcp")
                env = dict(os.environ)
                env.pop("THV_SESSION_REDIS_PASSWORD", None)
                if store == "redis":
                    if redis is None:
                        redis = start_redis(procs, tools["redis-server"], workdir)
                    config["session_redis"] = {
                        "address": f"127.0.0.1:{redis[1]}",
                        "db": 0,
                        "key_prefix": "bench:",
                    }
                    env["THV_SESSION_REDIS_PASSWORD"] = redis[2]
                config_path = workdir / f"proxyrunner-{name}.json"
                config_path.write_text(json.dumps(config, indent=2))
                argv = [*cmd, "run", "--config", str(config_path), "--log-level", "warning"]
                runner = procs.start(f"proxyrunner-{name}", taskset(PROXY_CORE, argv), env=env)
                try:
                    wait_until(
                        target,
                        lambda base=base: http("GET", f"{base}/readyz").status == 200,
                        runner,
                        READY_TIMEOUT_S,
                    )
                    bench(
                        target,
                        f"{base}/mcp",
                        runner,
                        authorization,
                        round_no if args.rounds > 1 else 0,
                    )
                except BenchError as err:
                    failed[target] = str(err).splitlines()[0].removeprefix(f"{target}: ")
                    print(f"\n[{target}] FAILED: {err}")
                finally:
                    procs.stop(runner)
    finally:
        with uninterruptible():
            procs.stop_all()
            if collector is not None:
                collector.stop()
            if args.keep_tmp:
                print(f"\nconfigs and logs kept in {workdir}")
            else:
                shutil.rmtree(workdir, ignore_errors=True)

    print()
    print_table(rows)
    high = 32 if 32 in args.connections else max(args.connections)
    spreads: dict[str, tuple[float, float]] = {}
    if args.rounds > 1:
        once = [r for r in rows if r.round == 0]
        by_round = [[r for r in rows if r.round == n] for n in range(1, args.rounds + 1)]
        print(f"\nmedian of {args.rounds} interleaved rounds:")
        print_table(once + median_rows([r for r in rows if r.round]))
        # Each round's proxyrunner rows beside the rows measured once (direct, naive).
        ratios, spreads = median_ratios(
            [compute_ratios([*once, *rs], args.connections) for rs in by_round]
        )
    else:
        ratios = compute_ratios(rows, args.connections)
    print_ratios(ratios, high, spreads)
    for target, why in skipped.items():
        print(f"  skipped {target}: {why}")
    for target, why in failed.items():
        print(f"  FAILED {target}: {why}")
    summary = {
        "benchmark": "proxy_overhead",
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "connections": args.connections,
        "revision": args.revision,
        "auth": args.auth,
        "environment": env_info | versions,
        "results": [asdict(r) for r in rows],
        "ratios": ratios,
        "rounds": args.rounds,
        "ratio_spreads": spreads,
        "skipped": skipped,
        "failed": failed,
    }
    print(json.dumps(summary, separators=(",", ":")))
    return 1 if failed or any(r.errors for r in rows) else 0


def main(argv: Sequence[str] | None = None) -> int:
    # Also when started in the background with SIGINT ignored: Ctrl-C/kill -INT must clean up.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_exit)
    signal.signal(signal.SIGHUP, _raise_exit)
    args = parse_args(argv)
    try:
        return run(args)
    except BenchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; everything started was stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
