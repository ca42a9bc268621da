"""The real authorization server the OAuth tests run against (npm oidc-provider driven by
tests/identity_provider.py) gives what the proxy's resource server will rely on: tokens
that verify against the served JWKS with the right iss, aud and sub, introspection,
refusals, key rotation, three signing algorithms, token exchange, and the metadata the
MCP SDK client discovers."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from joserfc import jwt
from joserfc.jwk import KeySet
from mcp.client.auth.utils import build_oauth_authorization_server_metadata_discovery_urls
from mcp.shared.auth import OAuthMetadata

from tests.identity_fixtures import StartIdp
from tests.identity_provider import Client, IdentityProvider, Resource, TokenRequestRefused

pytestmark = pytest.mark.node

MCP = "http://127.0.0.1:9001/mcp"
DOWNSTREAM = "http://127.0.0.1:9002/mcp"
SCOPE = "mcp:tools mcp:read"


async def verified(idp: IdentityProvider, token: str, audience: str, alg: str = "RS256") -> Any:
    """The token's claims, verified as a resource server would: signature against the
    keys jwks_uri serves, iss, aud, exp, and a sub."""
    served: Any = await idp.served_jwks()
    keys = KeySet.import_key_set(served)
    decoded = jwt.decode(token, keys, algorithms=[alg])
    jwt.JWTClaimsRegistry(
        iss={"essential": True, "value": idp.issuer},
        aud={"essential": True, "value": audience},
        sub={"essential": True},
        exp={"essential": True},
        iat={"essential": True},
    ).validate(decoded.claims)
    return decoded


async def test_a_client_credentials_jwt_verifies_against_the_served_jwks(
    start_idp: StartIdp,
) -> None:
    idp = await start_idp(resources={MCP: Resource(scope=SCOPE)})
    token = await idp.token("proxy-client", resource=MCP, scope="mcp:tools")

    decoded = await verified(idp, token, MCP)
    assert decoded.header["kid"] == idp.current_kid("RS256")
    assert decoded.header["typ"] == "at+jwt"
    assert decoded.claims["sub"] == decoded.claims["client_id"] == "proxy-client"
    assert decoded.claims["aud"] == MCP
    assert decoded.claims["scope"] == "mcp:tools"
    assert decoded.claims["exp"] - decoded.claims["iat"] == 300


async def test_an_opaque_token_introspects_active_with_the_same_claims(
    start_idp: StartIdp,
) -> None:
    idp = await start_idp(resources={MCP: Resource(scope=SCOPE, format="opaque")})
    token = await idp.token("proxy-client", resource=MCP, scope=SCOPE)
    assert token.count(".") == 0, "an opaque token is not a JWT"

    answer = await idp.introspect(token)
    assert answer["active"] is True
    assert answer["iss"] == idp.issuer
    assert answer["aud"] == MCP
    assert answer["sub"] == answer["client_id"] == "proxy-client"
    assert set(answer["scope"].split()) == set(SCOPE.split())
    assert answer["exp"] > answer["iat"]

    await idp.revoke(token)
    assert await idp.introspect(token) == {"active": False}
    assert await idp.introspect("not-a-token-it-issued") == {"active": False}


async def test_its_own_jwts_introspect_too(start_idp: StartIdp) -> None:
    idp = await start_idp(resources={MCP: Resource(scope=SCOPE)})
    token = await idp.token("proxy-client", resource=MCP, scope="mcp:read")
    answer = await idp.introspect(token)
    assert answer["active"] is True
    assert (answer["iss"], answer["aud"], answer["sub"]) == (idp.issuer, MCP, "proxy-client")
    assert answer["scope"] == "mcp:read"
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    assert await idp.introspect(forged) == {"active": False}


async def test_wrong_secrets_scopes_and_resources_are_refused(
    start_idp: StartIdp,
) -> None:
    idp = await start_idp(
        clients=[Client("proxy-client", "right", scope="mcp:read")],
        resources={MCP: Resource(scope=SCOPE)},
    )
    with pytest.raises(TokenRequestRefused) as refused:
        await idp.token("proxy-client", "wrong", resource=MCP)
    assert (refused.value.status, refused.value.error) == (401, "invalid_client")
    with pytest.raises(TokenRequestRefused) as refused:
        await idp.token("nobody", "right", resource=MCP)
    assert refused.value.error == "invalid_client"
    with pytest.raises(TokenRequestRefused) as refused:
        await idp.token("proxy-client", resource=MCP, scope="mcp:tools")
    assert refused.value.error == "invalid_scope"
    with pytest.raises(TokenRequestRefused) as refused:
        await idp.token("proxy-client", resource="http://127.0.0.1:9/unknown")
    assert refused.value.error == "invalid_target"

    token = await idp.token("proxy-client", resource=MCP, scope="mcp:read")
    with pytest.raises(TokenRequestRefused) as refused:
        await idp.introspect(token, client_secret="wrong")
    assert refused.value.error == "invalid_client"


async def test_after_a_rotation_new_tokens_carry_the_new_kid(
    start_idp: StartIdp,
) -> None:
    idp = await start_idp(resources={MCP: Resource(scope=SCOPE)})
    port, issuer = idp.port, idp.issuer
    old_kid = idp.current_kid()
    before = await idp.token("proxy-client", resource=MCP)

    new_kid = await idp.rotate_keys("RS256")
    assert new_kid != old_kid
    assert (idp.port, idp.issuer) == (port, issuer)
    served = {key["kid"] for key in (await idp.served_jwks())["keys"]}
    assert {old_kid, new_kid} <= served
    after = await idp.token("proxy-client", resource=MCP)
    assert (await verified(idp, after, MCP)).header["kid"] == new_kid
    assert (await verified(idp, before, MCP)).header["kid"] == old_kid

    newest = await idp.rotate_keys("RS256", keep_old=False)
    served = {key["kid"] for key in (await idp.served_jwks())["keys"]}
    assert newest in served
    assert not {old_kid, new_kid} & served
    assert await idp.introspect(before) == {"active": False}


@pytest.mark.parametrize(
    "alg",
    [
        "ES256",
        "Ed25519",
        # The same signature under its pre-RFC 9864 name, which joserfc warns about.
        pytest.param("EdDSA", marks=pytest.mark.filterwarnings("ignore:EdDSA is deprecated")),
    ],
)
async def test_resources_can_take_es256_and_eddsa_tokens(
    start_idp: StartIdp,
    alg: Any,
) -> None:
    idp = await start_idp(resources={MCP: Resource(scope=SCOPE, alg=alg)})
    token = await idp.token("proxy-client", resource=MCP)
    decoded = await verified(idp, token, MCP, alg)
    assert decoded.header["alg"] == alg
    assert decoded.header["kid"] == idp.current_kid(alg)

    kid = await idp.rotate_keys(alg)
    token = await idp.token("proxy-client", resource=MCP)
    assert (await verified(idp, token, MCP, alg)).header["kid"] == kid


@pytest.mark.parametrize("subject_format", ["jwt", "opaque"])
async def test_token_exchange_keeps_the_subject_for_the_new_audience(
    start_idp: StartIdp,
    subject_format: Any,
) -> None:
    idp = await start_idp(
        clients=[Client("agent", "agent-secret"), Client("proxy-client", "proxy-secret")],
        resources={
            MCP: Resource(scope=SCOPE, format=subject_format),
            DOWNSTREAM: Resource(scope="mcp:tools", format="opaque", alg="ES256"),
        },
        token_exchange=True,
    )
    subject = await idp.token("agent", resource=MCP, scope=SCOPE)

    answer = await idp.exchange(subject, client_id="proxy-client", audience=DOWNSTREAM)
    assert answer["issued_token_type"] == "urn:ietf:params:oauth:token-type:access_token"
    assert answer["token_type"] == "Bearer"
    assert answer["expires_in"] == 300
    assert answer["scope"] == "mcp:tools"
    decoded = await verified(idp, answer["access_token"], DOWNSTREAM, "ES256")
    assert decoded.claims["sub"] == "agent"
    assert decoded.claims["client_id"] == "proxy-client"
    assert decoded.claims["act"] == {"sub": "proxy-client"}
    assert decoded.header["kid"] == idp.current_kid("ES256")

    # As a resource parameter, and narrowed by scope.
    again = await idp.exchange(
        subject, client_id="proxy-client", audience=MCP, scope="mcp:read", as_resource=True
    )
    claims = (await verified(idp, again["access_token"], MCP)).claims
    assert (claims["sub"], claims["scope"]) == ("agent", "mcp:read")

    with pytest.raises(TokenRequestRefused) as refused:
        await idp.exchange("forged", client_id="proxy-client", audience=DOWNSTREAM)
    assert refused.value.error == "invalid_grant"
    with pytest.raises(TokenRequestRefused) as refused:
        await idp.exchange(subject, client_id="proxy-client", audience="http://elsewhere/mcp")
    assert refused.value.error == "invalid_target"
    narrow = await idp.token("agent", resource=MCP, scope="mcp:read")
    with pytest.raises(TokenRequestRefused) as refused:
        await idp.exchange(narrow, client_id="proxy-client", audience=MCP, scope="mcp:tools")
    assert refused.value.error == "invalid_scope"


async def test_token_exchange_is_refused_when_not_offered(
    start_idp: StartIdp,
) -> None:
    idp = await start_idp(resources={MCP: Resource(scope=SCOPE)})
    subject = await idp.token("proxy-client", resource=MCP)
    with pytest.raises(TokenRequestRefused) as refused:
        await idp.exchange(subject, client_id="proxy-client", audience=MCP)
    assert refused.value.error == "unsupported_grant_type"


async def test_the_mcp_sdk_discovery_path_serves_the_metadata(
    start_idp: StartIdp,
) -> None:
    idp = await start_idp(resources={MCP: Resource(scope=SCOPE)}, token_exchange=True)
    urls = build_oauth_authorization_server_metadata_discovery_urls(idp.issuer, MCP)
    assert urls[0] == idp.metadata_url
    async with aiohttp.ClientSession() as http:
        for url in urls:
            async with http.get(url) as response:
                assert response.status == 200, url
                raw = await response.json()
            metadata = OAuthMetadata.model_validate(raw)
            assert raw["jwks_uri"] == idp.jwks_uri
            assert str(metadata.issuer).rstrip("/") == idp.issuer
            assert str(metadata.token_endpoint) == idp.token_endpoint
            assert str(metadata.introspection_endpoint) == idp.introspection_endpoint
            assert "client_credentials" in (metadata.grant_types_supported or [])
            assert "urn:ietf:params:oauth:grant-type:token-exchange" in (
                metadata.grant_types_supported or []
            )


async def test_the_idp_can_go_down_and_come_back_on_the_same_port(
    start_idp: StartIdp,
) -> None:
    idp = await start_idp(resources={MCP: Resource(scope=SCOPE)})
    kid = idp.current_kid()
    await idp.stop_temporarily()
    assert not idp.running
    with pytest.raises(aiohttp.ClientConnectionError):
        await idp.token("proxy-client", resource=MCP)

    await idp.start()
    token = await idp.token("proxy-client", resource=MCP)
    assert (await verified(idp, token, MCP)).header["kid"] == kid
