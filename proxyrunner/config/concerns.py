"""The RunConfig's concerns: where the proxy listens, its backend, sessions, drain and the
Kubernetes workload. Each is a frozen value object that validates itself on construction.

The rule that matters here: a problem names the JSON field (``backend_urls``, not
``urls``), so an error reads the same whether the value came from a file or from code.
A concern holds what the RunConfig says; values derived from it (the effective cache
size, the effective drain delay) are properties. Durations are in seconds.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, Literal

from proxyrunner.config.problems import Problems, show
from proxyrunner.durations import format_duration

Transport = Literal["stdio", "sse", "streamable-http"]
ProxyMode = Literal["sse", "streamable-http"]
Runtime = Literal["local", "kubernetes"]
StdioIsolation = Literal["shared", "per-session"]

TRANSPORTS: Final = ("stdio", "sse", "streamable-http")
PROXY_MODES: Final = ("sse", "streamable-http")
RUNTIMES: Final = ("local", "kubernetes")
STDIO_ISOLATIONS: Final = ("shared", "per-session")

DEFAULT_SESSION_CACHE_SIZE: Final = 1000
DEFAULT_FIELD_MANAGER: Final = "toolhive-container-manager"
LOAD_BALANCER_DRAIN_DELAY: Final = 5.0
_INT32_MAX: Final = 2**31 - 1


@dataclass(frozen=True, slots=True)
class ListenConfig:
    """Where the proxy takes client connections, and what it accepts on them."""

    host: str = "127.0.0.1"
    """Listen address (``host``). Loopback by default, so a proxy started by hand is not
    reachable from the network; ``0.0.0.0`` in a container."""
    port: int = 8080
    """Listen port (``port``); 0 takes any free port, which the ``listening`` line logs."""
    allowed_hosts: tuple[str, ...] = ()
    """Host names (no port) clients may address the proxy by (``allowed_hosts``), besides
    loopback names when it listens on loopback: DNS-rebinding protection. Setting any
    turns the check on for other listeners; ``"*"`` turns it off."""
    max_request_body: int = 8 * 1024 * 1024
    """Largest request body accepted, in bytes (``max_request_body``; 8 MiB), 413 beyond:
    bounds the memory one request can hold."""
    trust_proxy_headers: bool = False
    """Whether the client is a proxy whose ``X-Forwarded-*`` and ``Forwarded`` headers
    backends may believe (``trust_proxy_headers``, ToolHive's name; off). Off, the proxy
    sets ``X-Forwarded-For/Proto/Host`` from the connection itself and drops
    ``Forwarded``: a client could otherwise claim any address, scheme or host."""

    def __post_init__(self) -> None:
        p = Problems()
        if p.at_least("port", self.port, 0) and self.port > 65535:
            p.add("port", f"must be between 0 and 65535, got {self.port}")
        if p.at_least("max_request_body", self.max_request_body, 0) and not self.max_request_body:
            p.add("max_request_body", "must be > 0")
        p.raise_if_any()


@dataclass(frozen=True, slots=True)
class BackendConfig:
    """The MCP server behind the proxy: what it speaks, where it runs, how long it may take.

    The local runtime needs exactly one source: ``remote_url``, ``backend_urls`` or
    ``cmd_args`` (child processes); the kubernetes runtime deploys ``image`` itself.
    """

    transport: Transport = "streamable-http"
    """What the backend speaks (``transport``)."""
    proxy_mode: ProxyMode = "streamable-http"
    """What clients see when the backend speaks stdio (``proxy_mode``): ``/mcp``, or the
    legacy ``/sse`` + ``/messages``."""
    runtime: Runtime = "local"
    """``local``: child processes or URLs reachable from here; ``kubernetes``: a
    StatefulSet the proxy applies (``runtime``)."""
    cmd_args: tuple[str, ...] = ()
    """Local: the command the child processes run; kubernetes: the container's args
    (``cmd_args``)."""
    stdio_isolation: StdioIsolation = "shared"
    """How sessions share a stdio server (``stdio_isolation``): ``shared``, one process
    (per replica) multiplexed for every session; ``per-session``, a process of its own
    for each session (local runtime), for servers that keep per-client state or tenants
    who must not share one."""
    stdio_max_sessions: int = 32
    """``per-session``: the most processes that run at once (``stdio_max_sessions``; 32);
    an ``initialize`` past it gets 503 with ``Retry-After``."""
    stdio_idle_timeout: float = 600.0
    """``per-session``: a session's process is stopped after this long without a request
    or an open stream (``stdio_idle_timeout``; 10 min)."""
    env_vars: Mapping[str, str] = field(default_factory=dict)
    """Environment of the backend (``env_vars``). Values may be secrets: never logged."""
    env_secrets: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    """Kubernetes: backend environment variables read from Secrets (``env_secrets``,
    ``{"ENV": {"name": secret, "key": key}}``), rendered as ``valueFrom.secretKeyRef`` so
    the values never appear in the StatefulSet. The local runtime refuses it."""
    image: str | None = None
    """Backend container image (``image``); required by the kubernetes runtime."""
    target_host: str = "127.0.0.1"
    """Host the local runtime's child processes listen on (``target_host``)."""
    target_port: int | None = None
    """Port the MCP server listens on in its pod (``target_port``); None: 8080."""
    remote_url: str | None = None
    """Local: one existing MCP endpoint, as its full URL (``remote_url``)."""
    urls: tuple[str, ...] = ()
    """Local: a static list of MCP endpoint URLs to spread sessions over (``backend_urls``)."""
    replicas: int | None = None
    """Backend replicas (``backend_replicas``). Kubernetes: the StatefulSet's count, where
    None leaves it to an HPA or kubectl and an explicit 0 is kept; local with
    ``cmd_args``: child processes (None: one)."""
    start_timeout: float = 60.0
    """How long backends may take to answer at startup before the proxy gives up with
    exit code 3 (``backend_start_timeout``; 60 s): a server installing packages is slow."""
    timeout: float = 300.0
    """How long a backend may take to send response headers before the client gets 504
    (``backend_timeout``; 5 min): long tool calls stream, they do not hold headers back."""

    def __post_init__(self) -> None:
        p = Problems()
        p.one_of("transport", self.transport, TRANSPORTS)
        p.one_of("proxy_mode", self.proxy_mode, PROXY_MODES)
        p.one_of("runtime", self.runtime, RUNTIMES)
        port = self.target_port
        if port is not None and p.at_least("target_port", port, 0) and not 0 < port <= 65535:
            p.add("target_port", f"must be between 1 and 65535, got {port}")
        replicas = self.replicas
        if (
            replicas is not None
            and p.at_least("backend_replicas", replicas, 0)
            and (replicas > _INT32_MAX)
        ):
            p.add("backend_replicas", f"must fit in an int32, got {replicas}")
        p.one_of("stdio_isolation", self.stdio_isolation, STDIO_ISOLATIONS)
        p.at_least("stdio_max_sessions", self.stdio_max_sessions, 1)
        p.positive("stdio_idle_timeout", self.stdio_idle_timeout)
        p.not_negative("backend_start_timeout", self.start_timeout)
        p.not_negative("backend_timeout", self.timeout)
        for env in sorted(set(self.env_secrets) & set(self.env_vars)):
            p.add(f"env_secrets.{env}", "is also set in env_vars; set it in one of them")
        if self.env_secrets and self.runtime != "kubernetes":
            p.add(
                "env_secrets",
                "needs the kubernetes runtime (Secrets are read by the kubelet); "
                "the local runtime takes literal env_vars only",
            )
        if not p.items:  # the rules between fields assume each field is sound
            self._check_sources(p)
        p.raise_if_any()

    def _check_sources(self, p: Problems) -> None:
        if self.remote_url is not None:
            p.url("remote_url", self.remote_url)
        for i, url in enumerate(self.urls):
            p.url(f"backend_urls[{i}]", url)
        if self.runtime == "kubernetes":
            if not self.image:
                p.add("image", "is required by the kubernetes runtime")
            if self.remote_url is not None or self.urls:
                p.add(
                    "runtime", "kubernetes deploys its own backend; remove remote_url/backend_urls"
                )
            if self.stdio_isolation == "per-session":
                p.add(
                    "stdio_isolation",
                    "per-session needs the local runtime for now; the kubernetes runtime "
                    "serves stdio shared",
                )
            return
        given = [
            name
            for name, present in (
                ("remote_url", self.remote_url is not None),
                ("backend_urls", bool(self.urls)),
                ("cmd_args", bool(self.cmd_args)),
            )
            if present
        ]
        if not given:
            p.add(
                "runtime",
                "the local runtime needs one of remote_url, backend_urls or cmd_args "
                "to know where the MCP server is",
            )
        elif len(given) > 1:
            p.add(given[1], f"cannot be combined with {given[0]}; choose one backend source")
        if self.stdio_isolation == "per-session":
            self._check_per_session(p)
        if self.transport == "stdio" and not self.cmd_args:
            p.add("transport", "stdio needs cmd_args: the command that runs the server")
        if self.cmd_args and self.replicas == 0:
            p.add("backend_replicas", "0 would start no backend process for cmd_args")
        if self.remote_url is not None and self.replicas not in (None, 1):
            p.add("backend_replicas", "does not apply to a single remote_url")

    def _check_per_session(self, p: Problems) -> None:
        if self.transport != "stdio":
            p.add("stdio_isolation", "per-session applies to transport stdio only")
        elif self.proxy_mode != "streamable-http":
            p.add("stdio_isolation", "per-session needs proxy_mode streamable-http for now")
        if self.replicas not in (None, 1):
            p.add(
                "backend_replicas",
                "does not apply with stdio_isolation per-session (one process per session, "
                "up to stdio_max_sessions)",
            )

    @property
    def served_protocol(self) -> ProxyMode:
        """What clients see, and what the data path speaks to its backends: a stdio
        server is bridged to ``proxy_mode``; an HTTP server is served as what it is."""
        if self.transport == "stdio":
            return self.proxy_mode
        return self.transport

    @property
    def local_replicas(self) -> int:
        """Child processes the local runtime starts for ``cmd_args``."""
        return 1 if self.replicas is None else self.replicas


@dataclass(frozen=True, slots=True)
class SessionRedisConfig:
    """Where the shared session store lives (``session_redis``). The password is never
    here: it comes from the environment into ``Secrets``."""

    address: str
    """``host:port`` of the Redis server (IPv6 in brackets)."""
    db: int = 0
    """Redis logical database number."""
    key_prefix: str = ""
    """Prefix of every key, normalized to end in ':'. Keys are
    ``<key_prefix><name>:session:<id>``, so servers sharing a prefix stay apart."""
    username: str | None = None
    """Redis ACL user name; None (or empty) uses the default user."""
    tls: bool = False
    """Connect with TLS; implied by ``ca_file``."""
    ca_file: str | None = None
    """CA bundle that verifies the Redis server's certificate."""

    def __post_init__(self) -> None:
        p = Problems()
        host, sep, port = self.address.rpartition(":")
        if not self.address:
            p.add("session_redis.address", "is required (host:port)")
        elif not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            p.add("session_redis.address", f"must be host:port, got {show(self.address)}")
        p.at_least("session_redis.db", self.db, 0)
        p.raise_if_any()
        if self.key_prefix and not self.key_prefix.endswith(":"):
            object.__setattr__(self, "key_prefix", self.key_prefix + ":")
        if self.username == "":
            object.__setattr__(self, "username", None)
        if self.ca_file is not None and not self.tls:
            object.__setattr__(self, "tls", True)

    @property
    def host(self) -> str:
        return self.address.rsplit(":", 1)[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.address.rsplit(":", 1)[1])


@dataclass(frozen=True, slots=True)
class SessionsConfig:
    """How sessions are kept: in memory, or shared by every replica through Redis."""

    redis: SessionRedisConfig | None = None
    """The shared store (``session_redis``); None keeps sessions in this process only."""
    configured_cache_size: int = 0
    """LRU size as the RunConfig gives it (``session_cache_size``); 0 means the default.
    Use ``cache_size``."""
    ttl: float = 7200.0
    """Idle sessions expire after this long (``session_ttl``; 2 h)."""
    local_max_age: float = 15.0
    """How long a replica trusts its cached copy of a shared session before reading it
    again (``session_local_max_age``; 15 s): bounds how stale a copy can be when an
    invalidation message is lost."""
    touch_interval: float = 60.0
    """A session's shared TTL is refreshed at most once per this interval
    (``session_touch_interval``; 60 s): one pipelined EXPIRE batch, not one per request."""

    def __post_init__(self) -> None:
        p = Problems()
        p.at_least("session_cache_size", self.configured_cache_size, 0)
        p.positive("session_ttl", self.ttl)
        p.positive("session_touch_interval", self.touch_interval)
        p.positive("session_local_max_age", self.local_max_age)
        if self.touch_interval >= self.ttl:
            p.add(
                "session_touch_interval",
                f"must be shorter than session_ttl ({format_duration(self.ttl)}), "
                f"got {format_duration(self.touch_interval)}",
            )
        p.raise_if_any()

    @property
    def cache_size(self) -> int:
        """Sessions held in the per-process LRU: 1000 unless the RunConfig says more."""
        return self.configured_cache_size or DEFAULT_SESSION_CACHE_SIZE


@dataclass(frozen=True, slots=True)
class DrainConfig:
    """The graceful drain after SIGTERM or SIGINT (``app.py`` has the sequence)."""

    configured_delay: float | None = None
    """The delay as the RunConfig gives it (``drain_delay``); None when it says nothing.
    Use ``delay``."""
    timeout: float = 25.0
    """Everything ends within this (``drain_timeout``; 25 s): keep it under the pod's
    terminationGracePeriodSeconds (30 s by default) so the kubelet never kills us."""
    default_delay: float = field(default=LOAD_BALANCER_DRAIN_DELAY, init=False)
    """The delay when none is configured: 5 s, long enough for load balancers to drop
    the endpoint once readiness fails. Derived by RunConfig from where the proxy
    listens (0 on loopback with the local runtime: no load balancer to wait for)."""

    def __post_init__(self) -> None:
        p = Problems()
        if self.configured_delay is not None:
            p.not_negative("drain_delay", self.configured_delay)
        p.positive("drain_timeout", self.timeout)
        p.raise_if_any()

    @property
    def delay(self) -> float:
        """Seconds everything is still served after the signal, new connections included."""
        return self.default_delay if self.configured_delay is None else self.configured_delay


@dataclass(frozen=True, slots=True)
class KubernetesConfig:
    """The backend workload the kubernetes runtime applies (unused by the local runtime)."""

    namespace: str | None = None
    """Namespace of the StatefulSet and Services (``namespace``); None (or empty): the
    proxy pod's own, read at startup."""
    field_manager: str = DEFAULT_FIELD_MANAGER
    """Server-side apply field manager (``field_manager``); ToolHive's, so that either
    may take over the workload. Empty means this default."""
    pod_template_patch: str | None = None
    """A JSON object merged into the backend pod template, as a string
    (``k8s_pod_template_patch``, which may also be given inline)."""
    statefulset_ready_timeout: float = 300.0
    """Bounded wait for a ready backend pod at startup (``statefulset_ready_timeout``;
    5 min): image pulls take a while."""

    def __post_init__(self) -> None:
        p = Problems()
        if self.pod_template_patch is not None and not _is_json_object(self.pod_template_patch):
            p.add("k8s_pod_template_patch", "must be a JSON object (as a string or inline)")
        p.not_negative("statefulset_ready_timeout", self.statefulset_ready_timeout)
        p.raise_if_any()
        if self.namespace == "":
            object.__setattr__(self, "namespace", None)
        if not self.field_manager:
            object.__setattr__(self, "field_manager", DEFAULT_FIELD_MANAGER)


def _is_json_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except (ValueError, RecursionError):
        return False
