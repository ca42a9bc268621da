"""An MCPServer resource read into what the operator renders: pure, no I/O.

The rule that matters here: the RunConfig is built with the daemon's own types and
rendered by the daemon's own dumper (``proxyrunner.config.dump_json``), so the ConfigMap
is exactly what ``proxyrunner run`` parses, validated by the same rules. The password is
never part of it: only the Secret reference travels, into the Deployment's env.

Counts follow ToolHive: an absent ``replicas`` or ``backendReplicas`` stays absent (an HPA
or kubectl owns it); a stdio server is capped at 1 (one attach stream per backend pod,
one proxy per stream), and the cap is reported, not rejected.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from proxyrunner.config import (
    BackendConfig,
    KubernetesConfig,
    ListenConfig,
    RunConfig,
    SessionRedisConfig,
    SessionsConfig,
    dump_json,
)
from proxyrunner.errors import ConfigError
from proxyrunner.operator.identity import Mount, SecretKey, read_identity

__all__ = ["Mount", "SecretKey", "Server", "read_server"]

GROUP: Final = "toolhive.stacklok.dev"
VERSION: Final = "v1alpha1"
KIND: Final = "MCPServer"
PLURAL: Final = "mcpservers"
API_VERSION: Final = f"{GROUP}/{VERSION}"
DEFAULT_PORT: Final = 8080

# ToolHive fields accepted by the CRD that proxyrunner does not act on yet.
IGNORED_FIELDS: Final = (
    "volumes",
    "secrets",
    "serviceAccount",
    "permissionProfile",
    "podTemplateSpec",
    "resourceOverrides",
    "telemetry",
    "telemetryConfigRef",
    "groupRef",
    "endpointPrefix",
)


@dataclass(frozen=True, slots=True)
class Server:
    """One MCPServer as the operator acts on it."""

    name: str
    namespace: str
    uid: str
    generation: int
    run_config: RunConfig
    """The proxy's RunConfig; ``backend.replicas`` already capped for stdio."""
    proxy_port: int
    replicas: int | None
    """Proxy Deployment replicas as applied (capped for stdio); None: not ours."""
    requested_replicas: int | None
    requested_backend_replicas: int | None
    password: SecretKey | None
    secret_env: tuple[tuple[str, SecretKey], ...]
    """Identity secrets for the proxy's env: (variable, Secret key)."""
    mounts: tuple[Mount, ...]
    """ConfigMaps the proxy pod mounts (policies, the IdP's CA)."""
    ignored: tuple[str, ...]
    """ToolHive fields present in the spec that proxyrunner does not act on."""

    @property
    def stdio_capped(self) -> bool:
        if self.run_config.backend.transport != "stdio":
            return False
        return any((n or 0) > 1 for n in (self.requested_replicas, self.requested_backend_replicas))

    @property
    def shares_sessions(self) -> bool:
        return self.run_config.sessions.redis is not None

    def runconfig_json(self) -> str:
        return dump_json(self.run_config)


def _int(spec: Mapping[str, Any], *names: str) -> int | None:
    """The first of ``names`` present (ToolHive renamed port/targetPort to
    proxyPort/mcpPort; the newer name wins when both are given)."""
    for name in names:
        value = spec.get(name)
        if value is not None:
            return int(value)
    return None


def _cap(count: int | None, transport: str) -> int | None:
    if count is None or transport != "stdio":
        return count
    return min(count, 1)


def _redis(storage: Mapping[str, Any] | None) -> tuple[SessionRedisConfig | None, SecretKey | None]:
    if not storage or storage.get("provider") != "redis":
        return None, None
    redis = SessionRedisConfig(
        address=str(storage.get("address") or ""),
        db=int(storage.get("db") or 0),
        key_prefix=str(storage.get("keyPrefix") or ""),
    )
    ref = storage.get("passwordRef") or None
    password = SecretKey(str(ref["name"]), str(ref["key"])) if ref else None
    return redis, password


def read_server(resource: Mapping[str, Any]) -> Server:
    """The MCPServer ``resource`` (as the API returns it) read for rendering.

    Raises ConfigError naming the RunConfig field when the spec cannot make a valid
    RunConfig (the CRD schema rejects most such specs before they get here).
    """
    meta = resource.get("metadata") or {}
    spec: Mapping[str, Any] = resource.get("spec") or {}
    transport = str(spec.get("transport") or "stdio")
    requested = _int(spec, "replicas")
    requested_backend = _int(spec, "backendReplicas")
    redis, password = _redis(spec.get("sessionStorage"))
    proxy_port = _int(spec, "proxyPort", "port") or DEFAULT_PORT
    env = {str(e["name"]): str(e.get("value", "")) for e in spec.get("env") or []}
    resources = _resources(spec.get("resources"))
    # The backend StatefulSet is the proxy's to apply: the container's resources reach it
    # through the RunConfig's pod template patch, as in ToolHive.
    patch = (
        json.dumps({"spec": {"containers": [{"name": "mcp", "resources": resources}]}})
        if resources
        else None
    )
    name = str(meta.get("name") or "")
    namespace = str(meta.get("namespace") or "")
    identity = read_identity(spec, _service_url(name, namespace, proxy_port))
    try:
        config = RunConfig(
            name=name,
            backend=BackendConfig(
                transport=transport,  # type: ignore[arg-type] # validated by BackendConfig
                proxy_mode=str(spec.get("proxyMode") or "streamable-http"),  # type: ignore[arg-type]
                runtime="kubernetes",
                image=str(spec.get("image") or ""),
                cmd_args=tuple(str(a) for a in spec.get("args") or ()),
                env_vars=env,
                target_port=_int(spec, "mcpPort", "targetPort"),
                replicas=_cap(requested_backend, transport),
            ),
            listen=ListenConfig(host="0.0.0.0", port=proxy_port),
            sessions=SessionsConfig(redis=redis),
            kubernetes=KubernetesConfig(
                namespace=str(meta.get("namespace") or "") or None, pod_template_patch=patch
            ),
            mcpserver_generation=int(meta.get("generation") or 0),
            identity=identity.identity,
            policy=identity.policy,
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"spec: {exc}") from exc
    return Server(
        name=config.name,
        namespace=str(meta.get("namespace") or ""),
        uid=str(meta.get("uid") or ""),
        generation=config.mcpserver_generation,
        run_config=config,
        proxy_port=proxy_port,
        replicas=_cap(requested, transport),
        requested_replicas=requested,
        requested_backend_replicas=requested_backend,
        password=password,
        secret_env=identity.secret_env,
        mounts=identity.mounts,
        ignored=tuple(f for f in IGNORED_FIELDS if spec.get(f) not in (None, "", [], {})),
    )


def _service_url(name: str, namespace: str, port: int) -> str:
    """The proxy Service's in-cluster MCP URL (ToolHive's default resource URL)."""
    # The name children.proxy_service_name gives the Service (not imported: children
    # imports this module).
    return f"http://mcp-{name}-proxy.{namespace or 'default'}.svc.cluster.local:{port}/mcp"


def _resources(value: object) -> dict[str, dict[str, str]]:
    if not isinstance(value, Mapping):
        return {}
    out: dict[str, dict[str, str]] = {}
    for part in ("limits", "requests"):
        given = value.get(part) or {}
        kept = {k: str(given[k]) for k in ("cpu", "memory") if given.get(k)}
        if kept:
            out[part] = kept
    return out
