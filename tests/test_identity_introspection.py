"""Introspection (RFC 7662), discovery (RFC 8414) and token exchange (RFC 8693) of
proxyrunner.identity, against the counting local issuer of tests/fake_issuer.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest

import tests.fake_issuer
from proxyrunner.identity.discovery import discover, metadata_urls
from proxyrunner.identity.errors import DiscoveryFailed, InvalidToken, TokenExchangeFailed
from proxyrunner.identity.exchange import TokenExchanger
from proxyrunner.identity.introspection import Introspector
from proxyrunner.identity.jwt import JwtValidator
from proxyrunner.identity.keys import KeySet
from proxyrunner.identity.validator import TokenValidator
from proxyrunner.principal import Principal
from tests.fake_issuer import AUDIENCE, Clock, FakeIssuer, new_key, sign


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        yield session


@pytest.fixture
async def issuer() -> AsyncIterator[FakeIssuer]:
    fake = FakeIssuer(keys=[new_key("ES256", "ec-1")])
    await fake.start()
    yield fake
    await fake.close()


@pytest.fixture
def clock() -> Clock:
    return Clock(1_700_000_000.0)


@pytest.fixture
async def introspector(
    http: aiohttp.ClientSession, issuer: FakeIssuer, clock: Clock
) -> AsyncIterator[Introspector]:
    client_id, secret = issuer.client
    inspector = Introspector(
        http,
        issuer.url("/introspect"),
        client_id,
        secret,
        issuer=issuer.issuer,
        audience=AUDIENCE,
        clock=clock,
    )
    yield inspector
    await inspector.close()


def active(issuer: FakeIssuer, clock: Clock, **extra: object) -> dict[str, object]:
    answer: dict[str, object] = {
        "active": True,
        "sub": "user-7",
        "client_id": "client-7",
        "scope": "mcp:tools",
        "iss": issuer.issuer,
        "aud": AUDIENCE,
        "exp": clock.now + 600,
    }
    answer.update(extra)
    return {k: v for k, v in answer.items() if v is not None}


async def test_active_token_is_cached_one_request_for_many_validations(
    introspector: Introspector, issuer: FakeIssuer, clock: Clock
) -> None:
    issuer.introspection["opaque-1"] = active(issuer, clock)
    principal = await introspector.validate("opaque-1")
    assert (principal.subject, principal.client_id) == ("user-7", "client-7")
    assert principal.scopes == {"mcp:tools"}
    for _ in range(5):
        assert await introspector.validate("opaque-1") == principal
    assert issuer.hits["introspect"] == 1
    clock.advance(31)  # cache_ttl: a revoked token stops working within it
    await introspector.validate("opaque-1")
    assert issuer.hits["introspect"] == 2
    assert introspector.health() == (True, f"introspection at {issuer.url('')[7:]} answering")


async def test_concurrent_lookups_of_one_token_share_one_request(
    introspector: Introspector, issuer: FakeIssuer, clock: Clock
) -> None:
    issuer.introspection["opaque-2"] = active(issuer, clock)
    results = await asyncio.gather(*(introspector.validate("opaque-2") for _ in range(20)))
    assert {p.subject for p in results} == {"user-7"}
    assert issuer.hits["introspect"] == 1


async def test_entry_lives_no_longer_than_the_token(
    introspector: Introspector, issuer: FakeIssuer, clock: Clock
) -> None:
    issuer.introspection["short"] = active(issuer, clock, exp=clock.now + 5)
    await introspector.validate("short")
    clock.advance(6)
    await introspector.validate("short")  # within the leeway: the issuer is asked again
    assert issuer.hits["introspect"] == 2


async def test_inactive_is_refused_and_cached_briefly(
    introspector: Introspector, issuer: FakeIssuer, clock: Clock
) -> None:
    for _ in range(3):
        with pytest.raises(InvalidToken) as caught:
            await introspector.validate("revoked")
        assert caught.value.reason == "inactive"
        assert "revoked" not in str(caught.value)
    assert issuer.hits["introspect"] == 1
    clock.advance(5)
    with pytest.raises(InvalidToken):
        await introspector.validate("revoked")
    assert issuer.hits["introspect"] == 2


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        ({"aud": "https://other.example"}, "wrong_audience"),
        ({"iss": "https://evil.example"}, "wrong_issuer"),
        ({"sub": None}, "invalid_token"),
        ({"exp": 1_000}, "expired"),
        ({"active": "true"}, "inactive"),
    ],
)
async def test_introspection_answers_are_checked(
    introspector: Introspector,
    issuer: FakeIssuer,
    clock: Clock,
    extra: dict[str, object],
    reason: str,
) -> None:
    issuer.introspection["t"] = active(issuer, clock, **extra)  # None drops the member
    with pytest.raises(InvalidToken) as caught:
        await introspector.validate("t")
    assert caught.value.reason == reason


async def test_missing_optional_members_are_fine(
    introspector: Introspector, issuer: FakeIssuer
) -> None:
    issuer.introspection["bare"] = {"active": True, "sub": "s"}
    principal = await introspector.validate("bare")
    assert (principal.subject, principal.expires_at, principal.scopes) == ("s", None, frozenset())


async def test_issuer_down_fails_closed_and_is_not_cached(
    introspector: Introspector, issuer: FakeIssuer, clock: Clock
) -> None:
    issuer.introspection["t"] = active(issuer, clock)
    issuer.down = True
    with pytest.raises(InvalidToken) as caught:
        await introspector.validate("t")
    assert caught.value.reason == "idp_unavailable"
    assert caught.value.__cause__ is None
    ok, message = introspector.health()
    assert not ok
    assert message.startswith("introspection failing: HTTP 503 from 127.0.0.1:")
    issuer.down = False
    assert (await introspector.validate("t")).subject == "user-7"
    assert introspector.health()[0]


async def test_wrong_client_credentials_show_in_health(
    http: aiohttp.ClientSession, issuer: FakeIssuer
) -> None:
    inspector = Introspector(
        http, issuer.url("/introspect"), "proxy", "wrong", issuer=issuer.issuer, audience=AUDIENCE
    )
    with pytest.raises(InvalidToken) as caught:
        await inspector.validate("t")
    assert caught.value.reason == "idp_unavailable"
    assert "HTTP 401" in inspector.health()[1]
    assert "wrong" not in inspector.health()[1]


async def test_token_validator_sends_jwts_to_the_keys_and_opaque_tokens_to_introspection(
    http: aiohttp.ClientSession, introspector: Introspector, issuer: FakeIssuer, clock: Clock
) -> None:
    keys = KeySet(http, issuer.url("/jwks"))
    tokens = TokenValidator(JwtValidator(keys, issuer.issuer, AUDIENCE), introspector)
    tokens.start()
    try:
        issuer.introspection["opaque"] = active(issuer, clock)
        jwt = sign(issuer.keys[0], issuer.claims(), "ES256")
        assert (await tokens.validate(jwt)).subject == "user-1"
        assert (await tokens.validate("opaque")).subject == "user-7"
        assert issuer.hits["introspect"] == 1
        ok, message = tokens.health()
        assert ok, message
        assert "JWKS: 1 keys" in message
        assert "introspection" in message
    finally:
        await tokens.close()
    only = TokenValidator(introspector=introspector)
    issuer.introspection[jwt] = active(issuer, clock)
    assert (await only.validate(jwt)).subject == "user-7"  # introspection only: JWTs too


# -- discovery ---------------------------------------------------------------------------


def test_metadata_urls_insert_the_path() -> None:
    assert metadata_urls("https://idp.example") == [
        "https://idp.example/.well-known/oauth-authorization-server",
        "https://idp.example/.well-known/openid-configuration",
    ]
    assert metadata_urls("https://idp.example/tenant/1/") == [
        "https://idp.example/.well-known/oauth-authorization-server/tenant/1",
        "https://idp.example/.well-known/openid-configuration/tenant/1",
        "https://idp.example/tenant/1/.well-known/openid-configuration",
    ]


async def test_discover_reads_the_metadata(http: aiohttp.ClientSession, issuer: FakeIssuer) -> None:
    metadata = await discover(http, issuer.issuer)
    assert metadata.jwks_uri == issuer.url("/jwks")
    assert metadata.introspection_endpoint == issuer.url("/introspect")
    assert metadata.token_endpoint == issuer.url("/token")


async def test_discover_refuses_metadata_of_another_issuer(
    http: aiohttp.ClientSession, issuer: FakeIssuer
) -> None:
    with pytest.raises(DiscoveryFailed, match="names another issuer"):
        await discover(http, issuer.issuer + "/")
    with pytest.raises(DiscoveryFailed, match="no authorization server metadata"):
        await discover(http, issuer.url("/nowhere"))


async def test_a_keyset_that_cannot_discover_fails_closed(
    http: aiohttp.ClientSession, issuer: FakeIssuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tests.fake_issuer, "ISSUER_PATH", "/elsewhere")
    keys = KeySet(http, issuer=issuer.issuer)
    try:
        with pytest.raises(InvalidToken) as caught:
            await keys.key("ec-1", "ES256")
        assert caught.value.reason == "idp_unavailable"
        assert keys.health() == (
            False,
            f"JWKS never loaded: DiscoveryFailed from {issuer.url('')[7:]}",
        )
    finally:
        await keys.close()


# -- token exchange ----------------------------------------------------------------------


@pytest.fixture
async def exchanger(
    http: aiohttp.ClientSession, issuer: FakeIssuer, clock: Clock
) -> AsyncIterator[TokenExchanger]:
    client_id, secret = issuer.client
    exchange = TokenExchanger(
        http,
        issuer.url("/token"),
        client_id,
        secret,
        "https://backend.example",
        ("b:read",),
        clock=clock,
    )
    yield exchange
    await exchange.close()


def principal(subject: str, clock: Clock) -> Principal:
    return Principal("https://idp.example", subject, expires_at=clock.now + 3600)


async def test_exchange_is_cached_per_principal(
    exchanger: TokenExchanger, issuer: FakeIssuer, clock: Clock
) -> None:
    alice, bob = principal("alice", clock), principal("bob", clock)
    first = await exchanger.token_for(alice, "alice-token")
    assert await exchanger.token_for(alice, "alice-token") == first
    assert await exchanger.token_for(bob, "bob-token") != first
    assert issuer.hits["token"] == 2
    assert issuer.forms[0] == {
        "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
        "subject_token": "alice-token",
        "subject_token_type": "urn:ietf:params:oauth:token-type:access_token",
        "requested_token_type": "urn:ietf:params:oauth:token-type:access_token",
        "audience": "https://backend.example",
        "scope": "b:read",
    }
    clock.advance(300 - 30)  # expires_in minus the margin
    assert await exchanger.token_for(alice, "alice-token") != first
    assert issuer.hits["token"] == 3


async def test_concurrent_exchanges_for_one_principal_share_one_request(
    exchanger: TokenExchanger, issuer: FakeIssuer, clock: Clock
) -> None:
    alice = principal("alice", clock)
    tokens = await asyncio.gather(*(exchanger.token_for(alice, "t") for _ in range(10)))
    assert len(set(tokens)) == 1
    assert issuer.hits["token"] == 1


async def test_exchanged_token_never_outlives_the_subject_token(
    exchanger: TokenExchanger, issuer: FakeIssuer, clock: Clock
) -> None:
    short = Principal("https://idp.example", "alice", expires_at=clock.now + 10)
    await exchanger.token_for(short, "t")
    clock.advance(11)
    await exchanger.token_for(short, "t")
    assert issuer.hits["token"] == 2


async def test_exchange_refusal_names_the_error_not_the_token(
    exchanger: TokenExchanger, issuer: FakeIssuer, clock: Clock
) -> None:
    issuer.exchange_status = 400
    issuer.exchange_answer = {"error": "invalid_grant", "error_description": "bad subject-XYZ"}
    with pytest.raises(TokenExchangeFailed) as caught:
        await exchanger.token_for(principal("alice", clock), "subject-XYZ")
    assert (caught.value.error, caught.value.retryable) == ("invalid_grant", False)
    assert "XYZ" not in str(caught.value)
    issuer.exchange_status, issuer.exchange_answer = 200, None
    assert await exchanger.token_for(principal("alice", clock), "subject-XYZ")  # not cached


async def test_exchange_with_the_issuer_down_is_retryable(
    exchanger: TokenExchanger, issuer: FakeIssuer, clock: Clock
) -> None:
    issuer.down = True
    with pytest.raises(TokenExchangeFailed) as caught:
        await exchanger.token_for(principal("alice", clock), "subject")
    assert caught.value.retryable
    assert caught.value.error is None
    await issuer.close()
    with pytest.raises(TokenExchangeFailed) as caught:
        await exchanger.token_for(principal("alice", clock), "subject")
    assert "ClientConnectorError from 127.0.0.1" in str(caught.value)
    assert caught.value.__cause__ is None
