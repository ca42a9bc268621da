"""An MCPServer's ``oidcConfig``, ``authzConfig`` and ``audit`` read into the RunConfig's
identity and policy settings, the Secrets the proxy's env takes, and the ConfigMaps its
pod mounts: pure, no I/O.

The rule that matters here: a spec that asks for authentication or authorization in a
form proxyrunner cannot render is refused (the ``InvalidSpec`` condition, nothing
applied), never served without it. An MCPServer whose author wrote ``oidcConfig`` must
not come up as an open endpoint.

Shapes follow ToolHive's CRD (``cmd/thv-operator/api/v1alpha1``): ``oidcConfig`` of type
``inline`` (``issuer``, ``audience``, ``jwksUrl``, ``introspectionUrl``, ``clientId``,
``clientSecretRef``, ``caBundleRef``, ``scopes``, ``insecureAllowHTTP``, the two
``*AllowPrivateIP``) with ``resourceUrl`` beside it; ``authzConfig`` of type ``inline``
(``policies``, ``entitiesJson``) or ``configMap`` (``name``, ``key``: a file in
ToolHive's authz format); ``audit.enabled``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from proxyrunner.authz.cedar import CedarAuthorizer
from proxyrunner.config.audit import AuditConfig
from proxyrunner.config.authz import AuthzConfig, read_authz_config
from proxyrunner.config.oidc import OIDC_CLIENT_SECRET_ENV, IdentityConfig, OIDCConfig
from proxyrunner.config.policy import PolicyConfig
from proxyrunner.errors import ConfigError

CA_DIR: Final = "/etc/proxyrunner/ca"
AUTHZ_DIR: Final = "/etc/proxyrunner/authz"
# The spec fields this module acts on; the operator reports none of them as ignored.
RENDERED_FIELDS: Final = ("oidcConfig", "authzConfig", "audit")
# Fields that restrict who may do what, which this operator cannot render: identity that
# names other resources (ToolHive's MCPOIDCConfig, MCPExternalAuthConfig, its embedded
# auth server), tool filtering and rate limits. Ignoring one would serve the endpoint with
# less protection than its author asked for, so each is refused.
REFUSED_FIELDS: Final = {
    "oidcConfigRef": "give the settings inline (oidcConfig.type inline)",
    "externalAuthConfigRef": "token exchange through MCPExternalAuthConfig is not rendered",
    "authServerRef": "this proxy has no embedded authorization server",
    "tools": "tool filtering is not rendered; restrict tools with authzConfig policies",
    "toolConfigRef": "tool filtering is not rendered; restrict tools with authzConfig policies",
    "rateLimiting": "rate limits are not rendered",
}


@dataclass(frozen=True, slots=True)
class SecretKey:
    name: str
    key: str


@dataclass(frozen=True, slots=True)
class Mount:
    """A ConfigMap the proxy pod mounts read-only at ``path``."""

    volume: str
    config_map: str
    path: str


@dataclass(frozen=True, slots=True)
class ServerIdentity:
    identity: IdentityConfig
    policy: PolicyConfig
    secret_env: tuple[tuple[str, SecretKey], ...] = ()
    """(variable, Secret key) pairs for the proxy container's env."""
    mounts: tuple[Mount, ...] = ()


def read_identity(spec: Mapping[str, Any], default_resource_url: str) -> ServerIdentity:
    """The identity settings of ``spec``; raises ConfigError naming the spec field that
    cannot be rendered. ``default_resource_url`` is the proxy Service's in-cluster URL,
    ToolHive's default when ``resourceUrl`` is not given."""
    for name, instead in REFUSED_FIELDS.items():
        if spec.get(name):
            raise ConfigError(
                f"spec.{name}: is not supported by this operator ({instead}); refused so "
                "that the endpoint is never served without it"
            )
    secrets: list[tuple[str, SecretKey]] = []
    mounts: list[Mount] = []
    oidc = _oidc(spec.get("oidcConfig"), default_resource_url, secrets, mounts)
    policy = PolicyConfig(
        authz=_inline_authz(spec.get("authzConfig")),
        authz_path=_mounted_authz(spec.get("authzConfig"), mounts),
        audit=AuditConfig() if (spec.get("audit") or {}).get("enabled") else None,
    )
    return ServerIdentity(IdentityConfig(oidc=oidc), policy, tuple(secrets), tuple(mounts))


def _oidc(
    value: Any, resource_url: str, secrets: list[tuple[str, SecretKey]], mounts: list[Mount]
) -> OIDCConfig | None:
    if not value:
        return None
    kind = value.get("type") or "kubernetes"
    if kind != "inline":
        raise ConfigError(
            f"spec.oidcConfig.type: {kind!r} is not supported by this operator; "
            "use type inline with the issuer's settings"
        )
    inline: Mapping[str, Any] = value.get("inline") or {}
    if inline.get("jwksAuthTokenPath"):
        raise ConfigError(
            "spec.oidcConfig.inline.jwksAuthTokenPath: is not supported: the proxy fetches "
            "keys without a bearer token"
        )
    if ref := inline.get("clientSecretRef"):
        secrets.append((OIDC_CLIENT_SECRET_ENV, SecretKey(str(ref["name"]), str(ref["key"]))))
    ca_path = ""
    if ca := (inline.get("caBundleRef") or {}).get("configMapRef"):
        key = str(ca.get("key") or "ca.crt")
        mounts.append(Mount("oidc-ca", str(ca["name"]), CA_DIR))
        ca_path = f"{CA_DIR}/{key}"
    try:
        return OIDCConfig(
            issuer=str(inline.get("issuer") or ""),
            audience=str(inline.get("audience") or ""),
            jwks_url=str(inline.get("jwksUrl") or ""),
            introspection_url=str(inline.get("introspectionUrl") or ""),
            client_id=str(inline.get("clientId") or ""),
            resource_url=str(value.get("resourceUrl") or value.get("resourceURL") or resource_url),
            scopes=tuple(str(s) for s in inline.get("scopes") or ("openid",)),
            ca_cert_path=ca_path,
            allow_private_ip=bool(
                inline.get("jwksAllowPrivateIP") or inline.get("protectedResourceAllowPrivateIP")
            ),
            insecure_allow_http=bool(inline.get("insecureAllowHTTP")),
        )
    except ConfigError as exc:
        raise ConfigError(f"spec.oidcConfig: {exc}") from None


def _inline_authz(value: Any) -> AuthzConfig | None:
    if not value or (value.get("type") or "configMap") != "inline":
        return None
    inline: Mapping[str, Any] = value.get("inline") or {}
    cedar = {
        "policies": list(inline.get("policies") or ()),
        "entities_json": inline.get("entitiesJson") or "[]",
    }
    try:
        config = read_authz_config({"version": "1.0", "type": "cedarv1", "cedar": cedar}, "authz")
        # Parsed here as the proxy will parse them: a bad policy is the MCPServer's
        # InvalidSpec, not a proxy pod that exits 2 in a crash loop.
        CedarAuthorizer.from_config(config, server_name="")
    except ConfigError as exc:
        raise ConfigError(f"spec.authzConfig.inline: {exc}") from None
    return config


def _mounted_authz(value: Any, mounts: list[Mount]) -> str:
    if not value or (value.get("type") or "configMap") != "configMap":
        return ""
    ref: Mapping[str, Any] = value.get("configMap") or {}
    if not ref.get("name"):
        raise ConfigError("spec.authzConfig.configMap.name: is required by type configMap")
    mounts.append(Mount("authz", str(ref["name"]), AUTHZ_DIR))
    return f"{AUTHZ_DIR}/{ref.get('key') or 'authz.json'}"
