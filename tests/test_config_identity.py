"""Reading ``oidc_config``, ``token_exchange_config`` and their secrets: ToolHive's JSON
as its Go encoder writes it loads unchanged, secrets never come from the RunConfig, and
what would weaken the resource server is refused by name."""

from __future__ import annotations

from typing import Any

import pytest

from proxyrunner.config.environment import secrets_from_env
from proxyrunner.config.table import parse_config
from proxyrunner.errors import ConfigError

BACKEND = {"name": "demo", "remote_url": "http://127.0.0.1:9/mcp"}
# What ToolHive's encoding/json writes for auth.TokenValidatorConfig: every field, Go
# names, no omitempty.
TOOLHIVE_OIDC = {
    "Issuer": "https://idp.example.com",
    "Audience": "mcp-server",
    "JWKSURL": "",
    "ClientID": "",
    "ClientSecret": "",
    "CACertPath": "",
    "AuthTokenFile": "",
    "AllowPrivateIP": False,
    "InsecureAllowHTTP": False,
    "IntrospectionURL": "",
    "ResourceURL": "https://mcp.example.com/mcp",
    "Scopes": ["openid"],
}
# As ToolHive's operator writes token_exchange_config (secret left empty, from the env).
TOOLHIVE_EXCHANGE = {
    "token_url": "https://oauth.example.com/token",
    "client_id": "my-client-id",
    "client_secret": "",
    "audience": "backend-api",
    "scopes": ["admin", "user"],
    "subject_token_type": "urn:ietf:params:oauth:token-type:access_token",
    "header_strategy": "replace",
}


def load(**fields: Any) -> Any:
    config, unknown = parse_config({**BACKEND, **fields})
    assert unknown == ()
    return config


def refusal(**fields: Any) -> str:
    with pytest.raises(ConfigError) as caught:
        load(**fields)
    return str(caught.value)


def test_toolhive_oidc_config_as_go_writes_it_loads_unchanged() -> None:
    oidc = load(oidc_config=TOOLHIVE_OIDC).identity.oidc
    assert oidc.issuer == "https://idp.example.com"
    assert oidc.expected_audience == "mcp-server"
    assert oidc.resource_url == "https://mcp.example.com/mcp"
    assert oidc.scopes == ("openid",)


def test_a_client_secret_value_in_the_runconfig_is_refused_without_echoing_it() -> None:
    message = refusal(oidc_config={**TOOLHIVE_OIDC, "ClientSecret": "hunter2"})
    assert "oidc_config.ClientSecret" in message
    assert "THV_OIDC_CLIENT_SECRET" in message
    assert "hunter2" not in message
    message = refusal(
        oidc_config=TOOLHIVE_OIDC,
        token_exchange_config={**TOOLHIVE_EXCHANGE, "client_secret": "hunter3"},
    )
    assert "token_exchange_config.client_secret" in message
    assert "hunter3" not in message


@pytest.mark.parametrize("field", ["Issuer", "JWKSURL", "IntrospectionURL"])
def test_plain_http_to_an_idp_off_loopback_is_refused_unless_allowed(field: str) -> None:
    oidc = {**TOOLHIVE_OIDC, field: "http://idp.example.com/x"}
    assert "plain http" in refusal(oidc_config=oidc)
    allowed = load(oidc_config={**oidc, "InsecureAllowHTTP": True}).identity.oidc
    assert allowed.insecure_allow_http
    loopback = {**TOOLHIVE_OIDC, field: "http://127.0.0.1:8080/x"}
    assert load(oidc_config=loopback).identity.oidc is not None


def test_toolhive_token_exchange_config_loads_with_the_header_it_names() -> None:
    exchange = load(
        oidc_config=TOOLHIVE_OIDC, token_exchange_config=TOOLHIVE_EXCHANGE
    ).identity.token_exchange
    assert exchange.header_name == "Authorization"
    assert exchange.scopes == ("admin", "user")
    custom = load(
        oidc_config=TOOLHIVE_OIDC,
        token_exchange_config={
            **TOOLHIVE_EXCHANGE,
            "header_strategy": "custom",
            "external_token_header_name": "X-Upstream-Token",
            "subject_token_type": "jwt",
        },
    ).identity.token_exchange
    assert custom.header_name == "X-Upstream-Token"
    assert custom.subject_token_type == "urn:ietf:params:oauth:token-type:jwt"


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"header_strategy": "custom"}, "external_token_header_name"),
        ({"header_strategy": "sideways"}, "header_strategy"),
        ({"subject_token_type": "saml2"}, "subject_token_type"),
        ({"external_token_header_name": "Bad Header"}, "header_name"),
        ({"audience": ""}, "audience"),
    ],
)
def test_an_unusable_token_exchange_config_is_refused_by_name(
    change: dict[str, str], named: str
) -> None:
    exchange = {**TOOLHIVE_EXCHANGE, **change}
    if "external_token_header_name" in change:
        exchange.pop("header_strategy")
    message = refusal(oidc_config=TOOLHIVE_OIDC, token_exchange_config=exchange)
    assert f"token_exchange_config.{named}" in message


def test_token_exchange_needs_oidc_config_and_excludes_backend_auth() -> None:
    assert "needs oidc_config" in refusal(token_exchange_config=TOOLHIVE_EXCHANGE)
    message = refusal(
        oidc_config=TOOLHIVE_OIDC,
        token_exchange_config=TOOLHIVE_EXCHANGE,
        backend_auth={"value_env": "KEY"},
    )
    assert "conflicts with token_exchange_config" in message


def test_secrets_come_from_thv_or_toolhive_variables_and_a_missing_one_is_named() -> None:
    config = load(oidc_config=TOOLHIVE_OIDC, token_exchange_config=TOOLHIVE_EXCHANGE)
    toolhive = secrets_from_env(
        {
            "TOOLHIVE_OIDC_CLIENT_SECRET": "oidc-th",
            "TOOLHIVE_TOKEN_EXCHANGE_CLIENT_SECRET": "exchange-th",
        },
        config,
    )
    assert (toolhive.oidc_client_secret, toolhive.token_exchange_client_secret) == (
        "oidc-th",
        "exchange-th",
    )
    ours = secrets_from_env(
        {
            "THV_TOKEN_EXCHANGE_CLIENT_SECRET": "exchange-thv",
            "TOOLHIVE_TOKEN_EXCHANGE_CLIENT_SECRET": "exchange-th",
        },
        config,
    )
    assert ours.token_exchange_client_secret == "exchange-thv"
    assert ours.oidc_client_secret is None  # optional: only introspection needs it
    with pytest.raises(ConfigError) as caught:
        secrets_from_env({}, config)
    assert "THV_TOKEN_EXCHANGE_CLIENT_SECRET" in str(caught.value)
    assert repr(toolhive).count("exchange-th") == 0
