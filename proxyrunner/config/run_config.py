"""RunConfig: the concerns of one proxy process together, and the rules that join them.

Each concern validates itself; what needs more than one concern is decided here and
only here (today: the drain delay a proxy needs depends on where it listens and what
runs its backend).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Final

from proxyrunner.config.concerns import (
    LOAD_BALANCER_DRAIN_DELAY,
    BackendConfig,
    DrainConfig,
    KubernetesConfig,
    ListenConfig,
    SessionsConfig,
)
from proxyrunner.config.limits import LimitsConfig
from proxyrunner.config.oidc import IdentityConfig
from proxyrunner.config.policy import PolicyConfig
from proxyrunner.config.problems import Problems, show
from proxyrunner.errors import ConfigError
from proxyrunner.hosts import is_loopback

if TYPE_CHECKING:  # at run time a cycle: run_config -> telemetry -> fields -> environment
    from proxyrunner.config.telemetry import TelemetryConfig

DEFAULT_SCHEMA_VERSION: Final = "v0.1.0"

# DNS-1123 label: the name becomes a StatefulSet, Service and Redis key namespace.
_NAME_RE: Final = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


@dataclass(frozen=True, slots=True)
class RunConfig:
    """The validated configuration of one proxy process, by concern."""

    name: str
    """MCP server name, a DNS-1123 label (``name``): names the StatefulSet, the Services
    and the Redis key space."""
    backend: BackendConfig
    """The MCP server behind the proxy. Required: there is no proxy without one."""
    listen: ListenConfig = field(default_factory=ListenConfig)
    sessions: SessionsConfig = field(default_factory=SessionsConfig)
    drain: DrainConfig = field(default_factory=DrainConfig)
    kubernetes: KubernetesConfig = field(default_factory=KubernetesConfig)
    identity: IdentityConfig = field(default_factory=IdentityConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    telemetry: TelemetryConfig | None = None
    """``telemetry_config``: OpenTelemetry traces and metrics over OTLP/HTTP; None is off
    (the OTEL_* variables can still turn it on at startup: ``apply_env_overrides``)."""
    schema_version: str = DEFAULT_SCHEMA_VERSION
    """RunConfig schema version (``schema_version``), kept as given."""
    mcpserver_generation: int = 0
    """MCPServer ``metadata.generation`` (``mcpserver_generation``, or the environment's
    THV_MCPSERVER_GENERATION); 0 means unversioned: no apply gate."""

    def __post_init__(self) -> None:
        p = Problems()
        check_identity(p, self.name, self.mcpserver_generation)
        p.raise_if_any()
        drain = self.drain
        delay = default_drain_delay(self.listen, self.backend)
        if drain.default_delay != delay:
            drain = replace(drain)
            object.__setattr__(drain, "default_delay", delay)
            object.__setattr__(self, "drain", drain)


def check_identity(p: Problems, name: str, generation: int) -> None:
    """The rules of RunConfig's own fields."""
    if not name:
        p.add("name", "is required (the MCP server's name, a DNS-1123 label)")
    elif len(name) > 63 or not _NAME_RE.match(name):
        p.add(
            "name",
            "must be a DNS-1123 label (lowercase letters, digits, '-', at most 63), "
            f"got {show(name)}",
        )
    p.at_least("mcpserver_generation", generation, 0)


def default_drain_delay(listen: ListenConfig, backend: BackendConfig) -> float:
    """The drain delay when the RunConfig gives none. The delay exists so that load
    balancers drop the endpoint before the listener closes; a proxy on loopback with the
    local runtime (the embedded default, a developer's machine) has none in front of it,
    so waiting would only make Ctrl-C slow."""
    if backend.runtime == "local" and is_loopback(listen.host):
        return 0.0
    return LOAD_BALANCER_DRAIN_DELAY


CONCERNS: Final[Mapping[str, type[Any]]] = {
    "listen": ListenConfig,
    "backend": BackendConfig,
    "sessions": SessionsConfig,
    "drain": DrainConfig,
    "kubernetes": KubernetesConfig,
    "identity": IdentityConfig,
    "policy": PolicyConfig,
    "limits": LimitsConfig,
}
"""RunConfig's concerns by attribute name; RunConfig's own fields are the concern ""."""


def assemble(
    values: Mapping[str, Mapping[str, Any]], unparsed: Collection[str], p: Problems
) -> RunConfig | None:
    """Build a RunConfig from field values by concern, adding every problem to ``p``.

    A concern named in ``unparsed`` had a field that could not be read; it is not built,
    so that it cannot add problems that only follow from the missing value. Every other
    concern is built and reports its own problems, whatever the others do.
    """
    parts: dict[str, Any] = {}
    for name, concern in CONCERNS.items():
        if name in unparsed:
            continue
        try:
            parts[name] = concern(**values.get(name, {}))
        except ConfigError as exc:
            p.extend(exc)
    own = {"name": "", **values.get("", {})}  # a missing name is a problem RunConfig states
    if "" in unparsed:
        return None
    if len(parts) < len(CONCERNS):
        check_identity(p, own["name"], own.get("mcpserver_generation", 0))
        return None
    try:
        return RunConfig(**own, **parts)
    except ConfigError as exc:
        p.extend(exc)
        return None


def describe(config: RunConfig) -> dict[str, object]:
    """A short, secret-free summary for the startup log line."""
    return {
        "name": config.name,
        "runtime": config.backend.runtime,
        "transport": config.backend.transport,
        "listen": f"{config.listen.host}:{config.listen.port}",
        "mcpserver_generation": config.mcpserver_generation,
        "backend_replicas": config.backend.replicas,
        "session_store": "redis" if config.sessions.redis else "memory",
        "session_cache_size": config.sessions.cache_size,
        "authentication": "oauth" if config.identity.authenticated else "none",
        "authorization": "cedar" if config.policy.authorizes else "none",
        "audit": "on" if config.policy.audits else "off",
        "telemetry": config.telemetry.summary() if config.telemetry is not None else "off",
    }
