"""RunConfig: what one proxyrunner process runs, loaded from JSON or YAML and validated.

Field names are snake_case and match ToolHive's RunConfig where upstream has them, so an
operator-rendered ConfigMap loads as is. The rule that matters here: constructing,
parsing and dumping a config have no side effects (no logging, no environment reads);
``apply_env_overrides`` is the one place the environment is consulted, and the caller
decides when to call it. Secrets never live in a RunConfig: the Redis password comes from
``THV_SESSION_REDIS_PASSWORD`` into a separate ``Secrets`` value.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import urlsplit

import yaml

from proxyrunner.durations import format_duration, parse_duration
from proxyrunner.errors import ConfigError

Transport = Literal["stdio", "sse", "streamable-http"]
ProxyMode = Literal["sse", "streamable-http"]
Runtime = Literal["local", "kubernetes"]

TRANSPORTS: Final = ("stdio", "sse", "streamable-http")
PROXY_MODES: Final = ("sse", "streamable-http")
RUNTIMES: Final = ("local", "kubernetes")

DEFAULT_SCHEMA_VERSION: Final = "v0.1.0"
DEFAULT_SESSION_CACHE_SIZE: Final = 1000
DEFAULT_FIELD_MANAGER: Final = "toolhive-container-manager"
DEFAULT_CONFIG_PATHS: Final = (
    Path("/etc/runconfig/runconfig.json"),
    Path("/etc/toolhive/runconfig.json"),
    Path("runconfig.json"),
)
GENERATION_ENV: Final = "THV_MCPSERVER_GENERATION"
REDIS_PASSWORD_ENV: Final = "THV_SESSION_REDIS_PASSWORD"  # noqa: S105 - a variable name

# DNS-1123 label: the name becomes a StatefulSet, Service and Redis key namespace.
_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# Fields that may also be given under "scaling_config" (upstream later nested them there).
_SCALING_FIELDS: Final = ("backend_replicas", "session_redis", "session_cache_size")


@dataclass(frozen=True, slots=True)
class SessionRedisConfig:
    """Where the shared session store lives. The password is never here (see Secrets)."""

    address: str
    """``host:port`` of the Redis server."""
    db: int = 0
    """Redis logical database number."""
    key_prefix: str = ""
    """Prefix of every key; normalized to end in ':'. Keys are
    ``<key_prefix><name>:session:<id>`` so servers sharing a prefix stay apart."""
    username: str | None = None
    """Redis ACL user name; None uses the default user."""
    tls: bool = False
    """Connect with TLS."""
    ca_file: str | None = None
    """CA bundle to verify the Redis server's certificate (implies tls)."""

    @property
    def host(self) -> str:
        return self.address.rsplit(":", 1)[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.address.rsplit(":", 1)[1])


@dataclass(frozen=True, slots=True)
class Secrets:
    """Secret values from the environment. Kept apart from RunConfig so that dumping,
    logging or printing a config can never reveal them."""

    redis_password: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class RunConfig:
    """The validated configuration of one proxy process. Durations are in seconds."""

    name: str
    """MCP server name (DNS-1123 label): names the StatefulSet, Services and key space."""
    schema_version: str = DEFAULT_SCHEMA_VERSION
    transport: Transport = "streamable-http"
    """What the backend speaks."""
    proxy_mode: ProxyMode = "streamable-http"
    """What clients see when the backend speaks stdio."""
    runtime: Runtime = "local"
    """``local``: child processes or URLs on this machine; ``kubernetes``: a StatefulSet."""
    host: str = "127.0.0.1"
    """Address the proxy listens on (0.0.0.0 in a container)."""
    port: int = 8080
    target_host: str = "127.0.0.1"
    """Host the local runtime's child processes listen on."""
    target_port: int | None = None
    """Port the MCP server listens on inside its pod (kubernetes runtime)."""
    image: str | None = None
    cmd_args: tuple[str, ...] = ()
    env_vars: Mapping[str, str] = field(default_factory=dict)
    remote_url: str | None = None
    """Proxy one existing MCP endpoint, given as its full URL."""
    backend_urls: tuple[str, ...] = ()
    """A static list of MCP endpoint URLs to spread sessions over."""
    allowed_hosts: tuple[str, ...] = ()
    """Host names (no port) clients may address the proxy by, besides loopback when it
    listens on loopback; setting any turns DNS-rebinding protection on; "*" turns it off."""
    mcpserver_generation: int = 0
    """MCPServer metadata.generation; 0 means unversioned (no apply gate)."""
    backend_replicas: int | None = None
    """Backend replica count; None leaves replicas to an HPA or kubectl."""
    session_redis: SessionRedisConfig | None = None
    session_cache_size: int = 0
    """LRU size; 0 means the default (1000). Use ``cache_size`` for the effective value."""
    session_ttl: float = 7200.0
    """Idle sessions expire after this long."""
    session_local_max_age: float = 15.0
    """How long a replica trusts its cached copy of a shared session before re-reading it."""
    session_touch_interval: float = 60.0
    """A session's shared TTL is refreshed at most once per this interval."""
    drain_delay: float = 5.0
    """After SIGTERM, keep serving this long so load balancers drop the endpoint first."""
    drain_timeout: float = 25.0
    """Everything ends within this; keep it under terminationGracePeriodSeconds."""
    backend_start_timeout: float = 60.0
    """How long a backend may take to answer at startup before the proxy gives up (exit 3)."""
    backend_timeout: float = 300.0
    """How long a backend may take to send response headers before the client gets 504."""
    max_request_body: int = 8 * 1024 * 1024
    """Largest request body accepted, in bytes (413 beyond)."""
    k8s_pod_template_patch: str | None = None
    """A JSON strategic-merge-style patch applied to the backend pod template."""
    namespace: str | None = None
    """Namespace of the backend workload; default: the pod's own namespace."""
    field_manager: str = DEFAULT_FIELD_MANAGER
    """Server-side apply field manager for the backend workload."""
    statefulset_ready_timeout: float = 300.0

    @property
    def cache_size(self) -> int:
        return self.session_cache_size or DEFAULT_SESSION_CACHE_SIZE

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
        return 1 if self.backend_replicas is None else self.backend_replicas


@dataclass(frozen=True, slots=True)
class LoadedConfig:
    config: RunConfig
    source: str
    unknown_fields: tuple[str, ...]


# --------------------------------------------------------------------------- parsing

_DURATION_FIELDS: Final = (
    "session_ttl",
    "session_local_max_age",
    "session_touch_interval",
    "drain_delay",
    "drain_timeout",
    "backend_start_timeout",
    "backend_timeout",
    "statefulset_ready_timeout",
)
_KNOWN_FIELDS: Final = frozenset(f.name for f in fields(RunConfig)) | {"scaling_config"}


class _Problems:
    """Collects every problem so that one run reports all of them, not the first."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, path: str, message: str) -> None:
        self.items.append(f"{path}: {message}")


def _show(value: object) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _get_int(
    raw: Mapping[str, Any], key: str, path: str, p: _Problems, minimum: int | None = 0
) -> int | None:
    if key not in raw or raw[key] is None:
        return None
    value = raw[key]
    if isinstance(value, bool) or not isinstance(value, int):
        p.add(path, f"must be an integer, got {_show(value)}")
        return None
    if minimum is not None and value < minimum:
        p.add(path, f"must be >= {minimum}, got {value}")
        return None
    return value


def _get_str(raw: Mapping[str, Any], key: str, path: str, p: _Problems) -> str | None:
    if key not in raw or raw[key] is None:
        return None
    value = raw[key]
    if not isinstance(value, str):
        p.add(path, f"must be a string, got {_show(value)}")
        return None
    return value


def _get_choice(
    raw: Mapping[str, Any], key: str, choices: Sequence[str], p: _Problems
) -> str | None:
    value = _get_str(raw, key, key, p)
    if value is not None and value not in choices:
        p.add(key, f"must be one of {', '.join(choices)}; got {_show(value)}")
        return None
    return value


def _get_str_list(raw: Mapping[str, Any], key: str, p: _Problems) -> tuple[str, ...] | None:
    if key not in raw or raw[key] is None:
        return None
    value = raw[key]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        p.add(key, f"must be a list of strings, got {_show(value)}")
        return None
    return tuple(value)


def _check_url(url: str, path: str, p: _Problems) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        p.add(path, f"must be a full http(s) URL like http://host:port/mcp, got {_show(url)}")


def _parse_session_redis(value: object, path: str, p: _Problems) -> SessionRedisConfig | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        p.add(path, f"must be an object with address, db and key_prefix, got {_show(value)}")
        return None
    # Refuse before anything else and never echo the value: a password in a ConfigMap is
    # readable by everyone who can read the namespace.
    for key in value:
        if "password" in str(key).lower():
            p.add(
                f"{path}.{key}",
                "a password never goes in the RunConfig; "
                f"set the {REDIS_PASSWORD_ENV} environment variable instead",
            )
            return None
    address = _get_str(value, "address", f"{path}.address", p)
    if not address:
        p.add(f"{path}.address", "is required (host:port)")
        return None
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        p.add(f"{path}.address", f"must be host:port, got {_show(address)}")
        return None
    db = _get_int(value, "db", f"{path}.db", p)
    prefix = _get_str(value, "key_prefix", f"{path}.key_prefix", p) or ""
    if prefix and not prefix.endswith(":"):
        prefix += ":"
    username = _get_str(value, "username", f"{path}.username", p)
    tls = value.get("tls", False)
    if not isinstance(tls, bool):
        p.add(f"{path}.tls", f"must be true or false, got {_show(tls)}")
        tls = False
    ca_file = _get_str(value, "ca_file", f"{path}.ca_file", p)
    return SessionRedisConfig(
        address=address,
        db=db or 0,
        key_prefix=prefix,
        username=username or None,
        tls=tls or ca_file is not None,
        ca_file=ca_file,
    )


def _merge_scaling_layout(raw: Mapping[str, Any], p: _Problems) -> dict[str, Any]:
    """Fold ``scaling_config.{field}`` into the top level; equal values in both are fine."""
    merged = dict(raw)
    nested = raw.get("scaling_config")
    if nested is None:
        return merged
    if not isinstance(nested, Mapping):
        p.add("scaling_config", f"must be an object, got {_show(nested)}")
        return merged
    for key, value in nested.items():
        if key not in _SCALING_FIELDS:
            continue  # unknown nested fields are ignored like unknown top-level ones
        if key in raw and raw[key] is not None and raw[key] != value:
            p.add(
                key,
                f"conflicts with scaling_config.{key} ({_show(raw[key])} vs {_show(value)}); "
                "set it in one place",
            )
        else:
            merged[key] = value
    return merged


def parse_config(data: object) -> tuple[RunConfig, tuple[str, ...]]:
    """Validate a decoded RunConfig document. Returns the config and the unknown fields.

    Raises ConfigError listing every problem found.
    """
    p = _Problems()
    if not isinstance(data, Mapping):
        raise ConfigError(f"the document must be an object of fields, got {_show(data)}")
    raw = _merge_scaling_layout(data, p)
    unknown = tuple(sorted(str(k) for k in raw if k not in _KNOWN_FIELDS))
    kwargs: dict[str, Any] = {}

    name = _get_str(raw, "name", "name", p)
    if not name:
        if "name" not in raw or name == "":
            p.add("name", "is required (the MCP server's name, a DNS-1123 label)")
    elif len(name) > 63 or not _NAME_RE.match(name):
        p.add(
            "name",
            f"must be a DNS-1123 label (lowercase letters, digits, '-', at most 63), "
            f"got {_show(name)}",
        )
    kwargs["name"] = name or ""

    for key in ("schema_version", "host", "target_host", "image", "remote_url", "namespace"):
        value = _get_str(raw, key, key, p)
        if value is not None:
            kwargs[key] = value
    field_manager = _get_str(raw, "field_manager", "field_manager", p)
    if field_manager:
        kwargs["field_manager"] = field_manager
    for key, choices in (
        ("transport", TRANSPORTS),
        ("proxy_mode", PROXY_MODES),
        ("runtime", RUNTIMES),
    ):
        choice = _get_choice(raw, key, choices, p)
        if choice is not None:
            kwargs[key] = choice

    port = _get_int(raw, "port", "port", p)
    if port is not None:
        if port > 65535:
            p.add("port", f"must be between 0 and 65535, got {port}")
        kwargs["port"] = port
    target_port = _get_int(raw, "target_port", "target_port", p)
    if target_port is not None:
        if not 0 < target_port <= 65535:
            p.add("target_port", f"must be between 1 and 65535, got {target_port}")
        kwargs["target_port"] = target_port or None

    for key in ("mcpserver_generation", "session_cache_size", "max_request_body"):
        number = _get_int(raw, key, key, p)
        if number is not None:
            kwargs[key] = number
    if kwargs.get("max_request_body") == 0:
        p.add("max_request_body", "must be > 0")
    replicas = _get_int(raw, "backend_replicas", "backend_replicas", p)
    if replicas is not None:
        if replicas > 2**31 - 1:
            p.add("backend_replicas", f"must fit in an int32, got {replicas}")
        kwargs["backend_replicas"] = replicas

    for key in ("cmd_args", "backend_urls", "allowed_hosts"):
        items = _get_str_list(raw, key, p)
        if items is not None:
            kwargs[key] = items
    env_vars = raw.get("env_vars")
    if env_vars is not None:
        if not isinstance(env_vars, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in env_vars.items()
        ):
            # Values may be secrets: name the field, never the content.
            p.add("env_vars", "must be an object mapping names to string values")
        else:
            kwargs["env_vars"] = dict(env_vars)

    for key in _DURATION_FIELDS:
        if key in raw and raw[key] is not None:
            try:
                kwargs[key] = parse_duration(raw[key])
            except ValueError as exc:
                p.add(key, f"{exc} (got {_show(raw[key])})")

    patch = raw.get("k8s_pod_template_patch")
    if patch is not None:
        if isinstance(patch, Mapping):
            patch = json.dumps(patch, sort_keys=True)
        if not isinstance(patch, str):
            p.add("k8s_pod_template_patch", "must be a JSON object or a JSON string")
        else:
            try:
                if not isinstance(json.loads(patch), dict):
                    raise ValueError
                kwargs["k8s_pod_template_patch"] = patch
            except ValueError:
                p.add("k8s_pod_template_patch", "must be a JSON object (as a string or inline)")

    redis = _parse_session_redis(raw.get("session_redis"), "session_redis", p)
    if redis is not None:
        kwargs["session_redis"] = redis

    if p.items:
        raise ConfigError(p.items)
    config = RunConfig(**kwargs)
    _check_semantics(config, p)
    if p.items:
        raise ConfigError(p.items)
    return config, unknown


def _check_semantics(c: RunConfig, p: _Problems) -> None:
    """Rules between fields, checked once every field parsed."""
    if c.remote_url is not None:
        _check_url(c.remote_url, "remote_url", p)
    for i, url in enumerate(c.backend_urls):
        _check_url(url, f"backend_urls[{i}]", p)
    for key in ("session_ttl", "session_touch_interval", "session_local_max_age", "drain_timeout"):
        if getattr(c, key) <= 0:
            p.add(key, "must be greater than zero")
    if c.session_touch_interval >= c.session_ttl:
        p.add(
            "session_touch_interval",
            f"must be shorter than session_ttl ({format_duration(c.session_ttl)}), "
            f"got {format_duration(c.session_touch_interval)}",
        )
    if c.runtime == "local":
        sources = [
            key
            for key, present in (
                ("remote_url", c.remote_url is not None),
                ("backend_urls", bool(c.backend_urls)),
                ("cmd_args", bool(c.cmd_args)),
            )
            if present
        ]
        if not sources:
            p.add(
                "runtime",
                "the local runtime needs one of remote_url, backend_urls or cmd_args "
                "to know where the MCP server is",
            )
        elif len(sources) > 1:
            p.add(sources[1], f"cannot be combined with {sources[0]}; choose one backend source")
        if c.transport == "stdio" and not c.cmd_args:
            p.add("transport", "stdio needs cmd_args: the command that runs the server")
        if c.cmd_args and c.backend_replicas == 0:
            p.add("backend_replicas", "0 would start no backend process for cmd_args")
        if c.remote_url is not None and c.backend_replicas not in (None, 1):
            p.add("backend_replicas", "does not apply to a single remote_url")
    else:
        if not c.image:
            p.add("image", "is required by the kubernetes runtime")
        if c.remote_url is not None or c.backend_urls:
            p.add("runtime", "kubernetes deploys its own backend; remove remote_url/backend_urls")


# ------------------------------------------------------------------ files and env


def decode_document(text: str) -> object:
    """JSON or YAML text to Python data. JSON is tried first: it is what the operator writes.
    Errors do not name the source: the caller prefixes it."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    except RecursionError as exc:
        raise ConfigError("nested too deeply to parse") from exc
    try:
        return yaml.safe_load(text)
    except RecursionError as exc:
        raise ConfigError("nested too deeply to parse") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"not valid JSON or YAML{where}") from exc


def load_config_file(path: Path) -> LoadedConfig:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: no such file") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read it ({exc.__class__.__name__})") from exc
    return load_config_text(text, str(path))


def load_config_text(text: str, source: str) -> LoadedConfig:
    try:
        config, unknown = parse_config(decode_document(text))
    except ConfigError as exc:
        raise ConfigError([f"{source}: {problem}" for problem in exc.problems]) from None
    return LoadedConfig(config=config, source=source, unknown_fields=unknown)


def find_config_file(candidates: Sequence[Path] = DEFAULT_CONFIG_PATHS) -> Path:
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    tried = ", ".join(str(c) for c in candidates)
    raise ConfigError(
        f"no RunConfig given and none found (tried {tried}); "
        "pass --config PATH or --configmap NAMESPACE/NAME"
    )


def apply_env_overrides(config: RunConfig, environ: Mapping[str, str]) -> RunConfig:
    """Apply THV_MCPSERVER_GENERATION. Raises ConfigError for a value that is not an int >= 0."""
    raw = environ.get(GENERATION_ENV)
    if raw is None or raw.strip() == "":
        return config
    text = raw.strip()
    if not text.isdigit():
        raise ConfigError(
            f"{GENERATION_ENV}: must be an integer >= 0 (overrides mcpserver_generation), "
            f"got {_show(raw)}"
        )
    return replace(config, mcpserver_generation=int(text))


def secrets_from_env(environ: Mapping[str, str]) -> Secrets:
    return Secrets(redis_password=environ.get(REDIS_PASSWORD_ENV) or None)


# --------------------------------------------------------------------------- dumping


def _omit(value: object) -> bool:
    return value is None or (value in ("", 0, (), {}) and not isinstance(value, bool))


def dump_config(config: RunConfig) -> dict[str, Any]:
    """A JSON-ready dict in the top-level layout, omitting absent and zero fields
    (omitempty) but keeping an explicit ``backend_replicas: 0``."""
    out: dict[str, Any] = {}
    for f in fields(config):
        value = getattr(config, f.name)
        if f.name == "backend_replicas":
            if value is not None:
                out[f.name] = value
            continue
        if f.name in _DURATION_FIELDS:
            out[f.name] = format_duration(value)
            continue
        if isinstance(value, SessionRedisConfig):
            out[f.name] = {
                k.name: getattr(value, k.name)
                for k in fields(value)
                if not _omit(getattr(value, k.name)) and getattr(value, k.name) is not False
            }
            out[f.name].setdefault("db", value.db)
            continue
        if _omit(value):
            continue
        if isinstance(value, tuple):
            value = list(value)
        elif isinstance(value, Mapping):
            value = dict(sorted(value.items()))
        out[f.name] = value
    return out


def dump_json(config: RunConfig) -> str:
    return json.dumps(dump_config(config), indent=2) + "\n"


def dump_yaml(config: RunConfig) -> str:
    return yaml.safe_dump(dump_config(config), sort_keys=False)


def describe(config: RunConfig) -> dict[str, object]:
    """A short, secret-free summary for the startup log line."""
    return {
        "name": config.name,
        "runtime": config.runtime,
        "transport": config.transport,
        "listen": f"{config.host}:{config.port}",
        "mcpserver_generation": config.mcpserver_generation,
        "backend_replicas": config.backend_replicas,
        "session_store": "redis" if config.session_redis else "memory",
        "session_cache_size": config.cache_size,
    }
