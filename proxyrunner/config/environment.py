"""What a process takes from its environment and files besides the RunConfig.

The rule that matters here: these functions are the only readers of ``os.environ``-like
mappings and of the service-account file, and only ``cli`` calls them, once, at startup.
Everything below receives plain values (a namespace, an address map, ``Secrets``), so
constructing any part of the proxy has no side effects and tests pass values directly.
Secrets never live in a RunConfig: the Redis password goes into ``Secrets``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Final

from proxyrunner.config.oidc import OIDC_CLIENT_SECRET_ENV, TOKEN_EXCHANGE_CLIENT_SECRET_ENV
from proxyrunner.config.problems import show
from proxyrunner.config.run_config import RunConfig
from proxyrunner.errors import ConfigError

GENERATION_ENV: Final = "THV_MCPSERVER_GENERATION"
REDIS_PASSWORD_ENV: Final = "THV_SESSION_REDIS_PASSWORD"  # noqa: S105 - a variable name
# ToolHive's names for the same secrets, so its Deployments carry over.
_TOOLHIVE_OIDC_SECRET_ENV: Final = "TOOLHIVE_OIDC_CLIENT_SECRET"  # noqa: S105
_TOOLHIVE_EXCHANGE_SECRET_ENV: Final = "TOOLHIVE_TOKEN_EXCHANGE_CLIENT_SECRET"  # noqa: S105
POD_NAMESPACE_ENV: Final = "POD_NAMESPACE"
POD_ADDRESS_MAP_ENV: Final = "PROXYRUNNER_POD_ADDRESS_MAP"
SERVICE_ACCOUNT_NAMESPACE: Final = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


@dataclass(frozen=True, slots=True)
class Secrets:
    """Secret values from the environment. Kept apart from RunConfig so that dumping,
    logging or printing a config can never reveal them."""

    redis_password: str | None = field(default=None, repr=False)
    """From THV_SESSION_REDIS_PASSWORD; None (or empty) connects without AUTH."""
    oidc_client_secret: str | None = field(default=None, repr=False)
    """The proxy's client secret at the IdP (introspection): THV_OIDC_CLIENT_SECRET or
    ``oidc_config.client_secret_file``."""
    token_exchange_client_secret: str | None = field(default=None, repr=False)
    """THV_TOKEN_EXCHANGE_CLIENT_SECRET or ``token_exchange_config.client_secret_file``."""
    backend_auth_value: str | None = field(default=None, repr=False)
    """The header value ``backend_auth`` sends the backend."""


def apply_env_overrides(config: RunConfig, environ: Mapping[str, str]) -> RunConfig:
    """Apply THV_MCPSERVER_GENERATION and the OpenTelemetry variables (OTEL_*: they fill
    what ``telemetry_config`` leaves unset, ``config.telemetry_env.overlay_env``). Raises
    ConfigError naming the variable for a value that cannot be used."""
    # Imported here: telemetry -> fields -> environment would be a cycle at import time.
    from proxyrunner.config.telemetry_env import overlay_env

    telemetry = overlay_env(config.telemetry, environ, config.name)
    if telemetry != config.telemetry:
        config = replace(config, telemetry=telemetry)
    raw = environ.get(GENERATION_ENV)
    if raw is None or raw.strip() == "":
        return config
    text = raw.strip()
    if not text.isdigit():
        raise ConfigError(
            f"{GENERATION_ENV}: must be an integer >= 0 (overrides mcpserver_generation), "
            f"got {show(raw)}"
        )
    return replace(config, mcpserver_generation=int(text))


def secrets_from_env(environ: Mapping[str, str], config: RunConfig | None = None) -> Secrets:
    """The secrets the config asks for, from the environment and mounted files. Raises
    ConfigError naming the variable or file (never its content) when one is missing."""
    identity = config.identity if config is not None else None
    oidc = identity.oidc if identity is not None else None
    exchange = identity.token_exchange if identity is not None else None
    auth = identity.backend_auth if identity is not None else None
    return Secrets(
        redis_password=environ.get(REDIS_PASSWORD_ENV) or None,
        oidc_client_secret=(
            _secret(
                environ,
                (OIDC_CLIENT_SECRET_ENV, _TOOLHIVE_OIDC_SECRET_ENV),
                oidc.client_secret_file,
                required=False,
            )
            if oidc is not None
            else None
        ),
        token_exchange_client_secret=(
            _secret(
                environ,
                (TOKEN_EXCHANGE_CLIENT_SECRET_ENV, _TOOLHIVE_EXCHANGE_SECRET_ENV),
                exchange.client_secret_file,
            )
            if exchange is not None
            else None
        ),
        backend_auth_value=(
            _secret(environ, (auth.value_env,), auth.value_file) if auth is not None else None
        ),
    )


def _secret(
    environ: Mapping[str, str], names: tuple[str, ...], file: str, *, required: bool = True
) -> str | None:
    """The secret from ``file``, else from the first of ``names`` that is set."""
    if file:
        try:
            value = Path(file).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"{file}: cannot read the secret file ({exc.strerror})") from None
        if not value:
            raise ConfigError(f"{file}: the secret file is empty")
        return value
    value = next((v for v in (environ.get(n, "").strip() for n in names) if v), "")
    if not value and required:
        raise ConfigError(f"{names[0]}: the environment variable must hold the secret")
    return value or None


def pod_namespace(environ: Mapping[str, str], sa_file: Path = SERVICE_ACCOUNT_NAMESPACE) -> str:
    """The pod's own namespace: the service-account file, then $POD_NAMESPACE."""
    try:
        namespace = sa_file.read_text().strip()
        if namespace:
            return namespace
    except OSError:
        pass
    namespace = environ.get(POD_NAMESPACE_ENV, "").strip()
    if namespace:
        return namespace
    raise ConfigError(
        "namespace: not running in a pod and POD_NAMESPACE is not set; "
        "give --configmap NAMESPACE/NAME or set the RunConfig's namespace"
    )


def pod_address_map(environ: Mapping[str, str]) -> dict[str, str]:
    """$PROXYRUNNER_POD_ADDRESS_MAP names a JSON file mapping pod names to URLs: the hook
    for tests and local development, where pods have no reachable IP or kubelet."""
    path = environ.get(POD_ADDRESS_MAP_ENV)
    if not path:
        return {}
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"{POD_ADDRESS_MAP_ENV}: cannot read {path} ({exc.__class__.__name__})"
        ) from exc
    if not isinstance(doc, dict) or not all(isinstance(v, str) for v in doc.values()):
        raise ConfigError(f"{POD_ADDRESS_MAP_ENV}: {path} must map pod names to URLs")
    return {str(k): v for k, v in doc.items()}
