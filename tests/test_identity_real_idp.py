"""proxyrunner.identity against a real authorization server (npm oidc-provider, through
tests/identity_provider.py): discovery, JWTs of three algorithms, a key rotation picked
up without restart, the IdP going down with cached keys still validating, opaque tokens
introspected, and RFC 8693 exchange."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from proxyrunner.identity.discovery import discover
from proxyrunner.identity.errors import InvalidToken, TokenExchangeFailed
from proxyrunner.identity.exchange import TokenExchanger
from proxyrunner.identity.introspection import Introspector
from proxyrunner.identity.jwt import JwtValidator
from proxyrunner.identity.keys import KeySet
from proxyrunner.identity.validator import TokenValidator
from tests.identity_fixtures import StartIdp
from tests.identity_provider import Client, IdentityProvider, Resource

pytestmark = pytest.mark.node

MCP = "http://127.0.0.1:9001/mcp"
DOWNSTREAM = "http://127.0.0.1:9002/mcp"
SCOPE = "mcp:tools mcp:read"


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        yield session


def jwt_validator(
    http: aiohttp.ClientSession, idp: IdentityProvider, **keyset: Any
) -> JwtValidator:
    return JwtValidator(KeySet(http, issuer=idp.issuer, **keyset), idp.issuer, MCP)


@pytest.mark.parametrize("alg", ["RS256", "ES256", "Ed25519"])
async def test_real_jwts_validate_through_discovery(
    start_idp: StartIdp,
    http: aiohttp.ClientSession,
    alg: Any,
) -> None:
    idp = await start_idp(resources={MCP: Resource(scope=SCOPE, alg=alg)})
    metadata = await discover(http, idp.issuer)
    assert metadata.jwks_uri == idp.jwks_uri
    assert metadata.introspection_endpoint == idp.introspection_endpoint
    validator = jwt_validator(http, idp)
    try:
        principal = await validator.validate(
            await idp.token("proxy-client", resource=MCP, scope="mcp:tools")
        )
        assert (principal.subject, principal.client_id) == ("proxy-client", "proxy-client")
        assert principal.scopes == {"mcp:tools"}
        other = await start_idp(resources={DOWNSTREAM: Resource(scope=SCOPE, alg=alg)})
        foreign = await other.token("proxy-client", resource=DOWNSTREAM)
        with pytest.raises(InvalidToken) as caught:
            await validator.validate(foreign)
        assert caught.value.reason in ("unknown_key", "bad_signature", "unsupported_alg")
    finally:
        await validator.keys.close()


async def test_rotation_is_followed_and_cached_keys_survive_the_idp_going_down(
    start_idp: StartIdp,
    http: aiohttp.ClientSession,
) -> None:
    idp = await start_idp(resources={MCP: Resource(scope=SCOPE)})
    validator = jwt_validator(http, idp, min_refresh_interval=0.0)
    try:
        before = await idp.token("proxy-client", resource=MCP)
        await validator.validate(before)
        new_kid = await idp.rotate_keys("RS256")
        after = await idp.token("proxy-client", resource=MCP)
        assert json.loads(_b64decode(after.split(".")[0]))["kid"] == new_kid
        assert (await validator.validate(after)).subject == "proxy-client"

        await idp.stop_temporarily()
        assert (await validator.validate(before)).subject == "proxy-client"
        assert (await validator.validate(after)).subject == "proxy-client"
        forged_kid = _with_unknown_kid(after)
        with pytest.raises(InvalidToken) as caught:
            await validator.validate(forged_kid)
        assert caught.value.reason == "idp_unavailable"
        ok, message = validator.keys.health()
        assert ok
        assert "last refresh failed: ClientConnectorError" in message
    finally:
        await validator.keys.close()


def _b64decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _with_unknown_kid(token: str) -> str:
    """The same token naming a kid the IdP never published (signature left as it is)."""
    header, payload, signature = token.split(".")
    decoded = json.loads(_b64decode(header))
    decoded["kid"] = "never-published"
    raw = base64.urlsafe_b64encode(json.dumps(decoded).encode()).rstrip(b"=").decode()
    return f"{raw}.{payload}.{signature}"


async def test_opaque_tokens_are_introspected_once_and_revocation_is_seen(
    start_idp: StartIdp,
    http: aiohttp.ClientSession,
) -> None:
    idp = await start_idp(resources={MCP: Resource(scope=SCOPE, format="opaque")})
    introspector = Introspector(
        http,
        idp.introspection_endpoint,
        "proxy-client",
        "proxy-client-secret",
        issuer=idp.issuer,
        audience=MCP,
        cache_ttl=0.5,
    )
    validator = TokenValidator(jwt_validator(http, idp), introspector)
    try:
        token = await idp.token("proxy-client", resource=MCP, scope=SCOPE)
        principal = await validator.validate(token)
        assert principal.subject == "proxy-client"
        assert principal.scopes == set(SCOPE.split())
        with pytest.raises(InvalidToken) as caught:
            await validator.validate("not-a-token-it-issued")
        assert caught.value.reason == "inactive"
        assert introspector.health()[0]
    finally:
        await validator.close()


async def test_token_exchange_against_the_real_idp(
    start_idp: StartIdp,
    http: aiohttp.ClientSession,
) -> None:
    idp = await start_idp(
        clients=[Client("agent", "agent-secret"), Client("proxy-client", "proxy-secret")],
        resources={
            MCP: Resource(scope=SCOPE),
            DOWNSTREAM: Resource(scope="mcp:tools", alg="ES256"),
        },
        token_exchange=True,
    )
    inbound = jwt_validator(http, idp)
    downstream = JwtValidator(KeySet(http, idp.jwks_uri), idp.issuer, DOWNSTREAM)
    exchanger = TokenExchanger(
        http, idp.token_endpoint, "proxy-client", "proxy-secret", DOWNSTREAM, ("mcp:tools",)
    )
    try:
        subject = await idp.token("agent", resource=MCP, scope=SCOPE)
        principal = await inbound.validate(subject)
        outbound = await exchanger.token_for(principal, subject)
        assert await exchanger.token_for(principal, subject) == outbound
        exchanged = await downstream.validate(outbound)
        assert exchanged.subject == "agent"
        assert exchanged.claims["act"] == {"sub": "proxy-client"}
        wrong = TokenExchanger(
            http, idp.token_endpoint, "proxy-client", "proxy-secret", "http://elsewhere/mcp"
        )
        with pytest.raises(TokenExchangeFailed) as caught:
            await wrong.token_for(principal, subject)
        assert (caught.value.error, caught.value.retryable) == ("invalid_target", False)
        await wrong.close()
    finally:
        await inbound.keys.close()
        await downstream.keys.close()
        await exchanger.close()
