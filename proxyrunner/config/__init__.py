"""RunConfig: what one proxyrunner process runs, by concern, loaded from JSON or YAML.

``RunConfig`` holds one frozen, self-validating value object per concern: ``listen``,
``backend``, ``sessions``, ``drain``, ``kubernetes`` (``concerns.py``); the rules that
join concerns are in ``run_config.py``. One field table (``table.py``) maps the flat
ToolHive JSON layout, and upstream's ``scaling_config`` one, onto those attributes and
back. Constructing, parsing and dumping a config have no side effects; the environment
and files beyond the RunConfig are read by ``environment.py``, called once by the CLI.
"""

from proxyrunner.config.concerns import (
    DEFAULT_FIELD_MANAGER,
    DEFAULT_SESSION_CACHE_SIZE,
    LOAD_BALANCER_DRAIN_DELAY,
    PROXY_MODES,
    RUNTIMES,
    TRANSPORTS,
    BackendConfig,
    DrainConfig,
    KubernetesConfig,
    ListenConfig,
    ProxyMode,
    Runtime,
    SessionRedisConfig,
    SessionsConfig,
    Transport,
)
from proxyrunner.config.environment import (
    GENERATION_ENV,
    POD_ADDRESS_MAP_ENV,
    POD_NAMESPACE_ENV,
    REDIS_PASSWORD_ENV,
    Secrets,
    apply_env_overrides,
    pod_address_map,
    pod_namespace,
    secrets_from_env,
)
from proxyrunner.config.files import (
    DEFAULT_CONFIG_PATHS,
    LoadedConfig,
    decode_document,
    find_config_file,
    load_config_file,
    load_config_text,
)
from proxyrunner.config.limits import LimitsConfig
from proxyrunner.config.run_config import (
    DEFAULT_SCHEMA_VERSION,
    RunConfig,
    default_drain_delay,
    describe,
)
from proxyrunner.config.table import FIELDS, dump_config, dump_json, dump_yaml, parse_config

__all__ = [
    "DEFAULT_CONFIG_PATHS",
    "DEFAULT_FIELD_MANAGER",
    "DEFAULT_SCHEMA_VERSION",
    "DEFAULT_SESSION_CACHE_SIZE",
    "FIELDS",
    "GENERATION_ENV",
    "LOAD_BALANCER_DRAIN_DELAY",
    "POD_ADDRESS_MAP_ENV",
    "POD_NAMESPACE_ENV",
    "PROXY_MODES",
    "REDIS_PASSWORD_ENV",
    "RUNTIMES",
    "TRANSPORTS",
    "BackendConfig",
    "DrainConfig",
    "KubernetesConfig",
    "LimitsConfig",
    "ListenConfig",
    "LoadedConfig",
    "ProxyMode",
    "RunConfig",
    "Runtime",
    "Secrets",
    "SessionRedisConfig",
    "SessionsConfig",
    "Transport",
    "apply_env_overrides",
    "decode_document",
    "default_drain_delay",
    "describe",
    "dump_config",
    "dump_json",
    "dump_yaml",
    "find_config_file",
    "load_config_file",
    "load_config_text",
    "parse_config",
    "pod_address_map",
    "pod_namespace",
    "secrets_from_env",
]
