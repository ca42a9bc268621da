"""``oidc_config``, ``token_exchange_config`` and ``backend_auth``: the proxy as an OAuth 2.1
resource server, and the credentials it sends its backend instead of the client's token.

ToolHive writes ``oidc_config`` with its Go field names (``Issuer``, ``JWKSURL``,
``IntrospectionURL``, ``ResourceURL``, ...), and its API with snake_case; both load here,
with any capitalisation, as Go's decoder reads them. Client secrets never live in a
RunConfig: a secret in one is refused by name (without echoing it), and the secret comes
from an environment variable or a mounted file (``environment.py`` reads them once).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

from proxyrunner.config.problems import Problems, show
from proxyrunner.errors import ConfigError
from proxyrunner.hosts import is_loopback

OIDC_CLIENT_SECRET_ENV: Final = "THV_OIDC_CLIENT_SECRET"  # noqa: S105 - a variable name
TOKEN_EXCHANGE_CLIENT_SECRET_ENV: Final = "THV_TOKEN_EXCHANGE_CLIENT_SECRET"  # noqa: S105
TOKEN_TYPE_ACCESS: Final = "urn:ietf:params:oauth:token-type:access_token"  # noqa: S105


@dataclass(frozen=True, slots=True)
class OIDCConfig:
    """How access tokens are validated, and what the protected-resource metadata says."""

    issuer: str
    """The authorization server's issuer: tokens' ``iss`` must equal it; its metadata
    (RFC 8414 / OpenID discovery) gives the JWKS and introspection URLs when not set."""
    audience: str = ""
    """The ``aud`` tokens must carry; defaults to ``resource_url`` (RFC 8707: a token is
    for one resource)."""
    jwks_url: str = ""
    """Where the signing keys are; discovered from the issuer when empty."""
    introspection_url: str = ""
    """RFC 7662 endpoint for opaque tokens; discovered from the issuer when empty and
    a client id is set."""
    client_id: str = ""
    """The proxy's own client at the IdP, for introspection (its secret from
    THV_OIDC_CLIENT_SECRET or ``client_secret_file``)."""
    client_secret_file: str = ""
    """A file holding the client secret (a mounted Secret), instead of the variable."""
    resource_url: str = ""
    """This resource's canonical URL (RFC 9728 ``resource``), e.g.
    ``https://mcp.example.com/mcp``. Required: behind a load balancer the proxy cannot
    know its public URL, and client headers must never decide it."""
    scopes: tuple[str, ...] = ()
    """``scopes_supported`` in the protected-resource metadata."""
    required_scopes: tuple[str, ...] = ()
    """Scopes every MCP request needs; fewer get 403 ``insufficient_scope``."""
    ca_cert_path: str = ""
    """CA bundle for TLS to the IdP (ToolHive's ``CACertPath``)."""
    allow_private_ip: bool = False
    """ToolHive's ``AllowPrivateIP``; accepted for compatibility. The proxy reaches the
    IdP wherever its URL points (in a cluster that is usually a private address)."""
    insecure_allow_http: bool = False
    """ToolHive's ``InsecureAllowHTTP``: allow ``http://`` IdP URLs on hosts other than
    loopback. Off, such a URL is a config error: keys and tokens would travel in clear."""

    def __post_init__(self) -> None:
        p = Problems()
        path = "oidc_config"
        if not self.issuer:
            p.add(f"{path}.issuer", "is required (the authorization server's issuer URL)")
        else:
            p.url(f"{path}.issuer", self.issuer)
        if not self.resource_url:
            p.add(
                f"{path}.resource_url",
                "is required: the public URL of this MCP endpoint (RFC 9728 resource), "
                "e.g. https://mcp.example.com/mcp",
            )
        else:
            p.url(f"{path}.resource_url", self.resource_url)
        for name in ("issuer", "jwks_url", "introspection_url"):
            value = getattr(self, name)
            if not value:
                continue
            if name != "issuer":
                p.url(f"{path}.{name}", value)
            if not self.insecure_allow_http and _clear_text_off_host(value):
                p.add(
                    f"{path}.{name}",
                    f"{show(value)} is plain http to another host; use https, "
                    "or set insecure_allow_http",
                )
        p.raise_if_any()

    @property
    def expected_audience(self) -> str:
        return self.audience or self.resource_url


def _clear_text_off_host(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme == "http" and not is_loopback(parts.hostname or "")


# ToolHive's short names for the subject token type, as its exchange normalises them.
_TOKEN_TYPES: Final = {
    "access_token": TOKEN_TYPE_ACCESS,
    "id_token": "urn:ietf:params:oauth:token-type:id_token",
    "jwt": "urn:ietf:params:oauth:token-type:jwt",
}


@dataclass(frozen=True, slots=True)
class TokenExchangeConfig:
    """RFC 8693 token exchange: the client's token traded at the IdP for one whose
    audience is the backend, sent to the backend in ``header_name``."""

    token_url: str
    client_id: str
    audience: str
    scopes: tuple[str, ...] = ()
    subject_token_type: str = TOKEN_TYPE_ACCESS
    client_secret_file: str = ""
    header_name: str = "Authorization"
    """The header that carries ``Bearer <token>`` to the backend (ToolHive's
    ``external_token_header_name`` with ``header_strategy: custom``)."""

    def __post_init__(self) -> None:
        p = Problems()
        path = "token_exchange_config"
        full = _TOKEN_TYPES.get(self.subject_token_type, self.subject_token_type)
        object.__setattr__(self, "subject_token_type", full or TOKEN_TYPE_ACCESS)
        if self.subject_token_type not in _TOKEN_TYPES.values():
            p.add(
                f"{path}.subject_token_type",
                f"must be one of {', '.join(sorted(_TOKEN_TYPES))} (or their URNs), "
                f"got {show(self.subject_token_type)}",
            )
        if not self.header_name or any(c in self.header_name for c in ":\r\n "):
            p.add(f"{path}.header_name", f"must be a header name, got {show(self.header_name)}")
        if not self.token_url:
            p.add(f"{path}.token_url", "is required")
        else:
            p.url(f"{path}.token_url", self.token_url)
        if not self.client_id:
            p.add(f"{path}.client_id", "is required")
        if not self.audience:
            p.add(f"{path}.audience", "is required (the backend's audience)")
        p.raise_if_any()


@dataclass(frozen=True, slots=True)
class BackendAuthConfig:
    """A fixed credential for the backend: ``header`` with the value of an environment
    variable or of a mounted file (never the value itself)."""

    header: str = "Authorization"
    value_env: str = ""
    value_file: str = ""

    def __post_init__(self) -> None:
        p = Problems()
        if bool(self.value_env) == bool(self.value_file):
            p.add("backend_auth", "needs exactly one of value_env and value_file")
        if not self.header or any(c in self.header for c in ":\r\n "):
            p.add("backend_auth.header", f"must be a header name, got {show(self.header)}")
        p.raise_if_any()


# ------------------------------------------------------------------------- reading

_OIDC_NAMES: Final = {
    "issuer": "issuer",
    "audience": "audience",
    "jwksurl": "jwks_url",
    "jwks_url": "jwks_url",
    "introspectionurl": "introspection_url",
    "introspection_url": "introspection_url",
    "clientid": "client_id",
    "client_id": "client_id",
    "client_secret_file": "client_secret_file",
    "resourceurl": "resource_url",
    "resource_url": "resource_url",
    "scopes": "scopes",
    "required_scopes": "required_scopes",
    "cacertpath": "ca_cert_path",
    "ca_cert_path": "ca_cert_path",
    "allowprivateip": "allow_private_ip",
    "allow_private_ip": "allow_private_ip",
    "insecureallowhttp": "insecure_allow_http",
    "insecure_allow_http": "insecure_allow_http",
}
_EXCHANGE_NAMES: Final = {
    "token_url": "token_url",
    "tokenurl": "token_url",
    "client_id": "client_id",
    "clientid": "client_id",
    "audience": "audience",
    "scopes": "scopes",
    "subject_token_type": "subject_token_type",
    "subjecttokentype": "subject_token_type",
    "client_secret_file": "client_secret_file",
    "external_token_header_name": "header_name",
    "externaltokenheadername": "header_name",
    "header_name": "header_name",
}
_BACKEND_AUTH_NAMES: Final = {
    "header": "header",
    "value_env": "value_env",
    "value_file": "value_file",
}
_STRATEGY_KEYS: Final = frozenset({"header_strategy", "headerstrategy"})
_LISTS: Final = frozenset({"scopes", "required_scopes"})
_BOOLS: Final = frozenset({"allow_private_ip", "insecure_allow_http"})
# ToolHive fields the proxy reads differently: refused by name, with what to do instead.
_REFUSED: Final = {
    "clientsecret": "a client secret never goes in the RunConfig; set {env} or client_secret_file",
    "client_secret": "a client secret never goes in the RunConfig; set {env} or client_secret_file",
    "authtokenfile": "is not supported: the proxy authenticates to the IdP only as a client",
    "auth_token_file": "is not supported: the proxy authenticates to the IdP only as a client",
}


def _read_object(
    value: object, path: str, names: Mapping[str, str], secret_env: str
) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{path}: must be an object, got {show(value)}")
    p = Problems()
    out: dict[str, Any] = {}
    for key, item in value.items():
        lowered = str(key).lower()
        if lowered in _REFUSED:
            # Go's encoder writes every field, so ToolHive's own output carries these
            # empty: only a value is refused, and never echoed (it may be the secret).
            if item not in (None, ""):
                p.add(f"{path}.{key}", _REFUSED[lowered].format(env=secret_env))
            continue
        attribute = names.get(lowered)
        if attribute is None:
            p.add(f"{path}.{key}", "is not a known field")
            continue
        if item is None:
            continue
        if attribute in _LISTS:
            if not isinstance(item, list) or not all(isinstance(s, str) for s in item):
                p.add(f"{path}.{key}", f"must be a list of strings, got {show(item)}")
                continue
            item = tuple(item)
        elif attribute in _BOOLS:
            if not isinstance(item, bool):
                p.add(f"{path}.{key}", f"must be true or false, got {show(item)}")
                continue
        elif not isinstance(item, str):
            p.add(f"{path}.{key}", f"must be a string, got {show(item)}")
            continue
        out[attribute] = item
    p.raise_if_any()
    return out


def read_oidc(value: object, path: str) -> OIDCConfig:
    fields = _read_object(value, path, _OIDC_NAMES, OIDC_CLIENT_SECRET_ENV)
    return OIDCConfig(**{"issuer": "", **fields})


def read_token_exchange(value: object, path: str) -> TokenExchangeConfig:
    strategy: object = None
    if isinstance(value, Mapping):
        strategy = next((v for k, v in value.items() if str(k).lower() in _STRATEGY_KEYS), None)
        value = {k: v for k, v in value.items() if str(k).lower() not in _STRATEGY_KEYS}
    fields = _read_object(value, path, _EXCHANGE_NAMES, TOKEN_EXCHANGE_CLIENT_SECRET_ENV)
    # ToolHive's header_strategy: "replace" (its default) puts the token in Authorization,
    # "custom" in external_token_header_name. Without one, a header name means custom.
    if strategy == "custom" and not fields.get("header_name"):
        raise ConfigError(f"{path}.external_token_header_name: header_strategy custom needs it")
    if strategy == "replace":
        fields.pop("header_name", None)
    elif strategy not in (None, "", "custom"):
        raise ConfigError(
            f"{path}.header_strategy: must be replace or custom, got {show(strategy)}"
        )
    return TokenExchangeConfig(**{"token_url": "", "client_id": "", "audience": "", **fields})


def read_backend_auth(value: object, path: str) -> BackendAuthConfig:
    return BackendAuthConfig(**_read_object(value, path, _BACKEND_AUTH_NAMES, ""))


def write_dataclass(value: Any) -> dict[str, Any]:
    """The fields that differ from their defaults, in our snake_case names."""
    out: dict[str, Any] = {}
    for name in value.__dataclass_fields__:
        item = getattr(value, name)
        default = value.__dataclass_fields__[name].default
        if item != default:
            out[name] = list(item) if isinstance(item, tuple) else item
    return out


@dataclass(frozen=True, slots=True)
class IdentityConfig:
    """Who may use the endpoint, and what the backend gets instead of the client's token.
    Everything absent: the endpoint is unauthenticated (the embedded default)."""

    oidc: OIDCConfig | None = None
    token_exchange: TokenExchangeConfig | None = None
    backend_auth: BackendAuthConfig | None = None

    def __post_init__(self) -> None:
        p = Problems()
        if self.token_exchange is not None and self.oidc is None:
            p.add(
                "token_exchange_config",
                "needs oidc_config: the exchange trades the client's validated token",
            )
        if self.token_exchange is not None and self.backend_auth is not None:
            p.add("backend_auth", "conflicts with token_exchange_config; choose one")
        p.raise_if_any()

    @property
    def authenticated(self) -> bool:
        return self.oidc is not None
