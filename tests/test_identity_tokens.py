"""Access-token validation (proxyrunner.identity): JWTs against a JWKS, with every refusal,
key rotation, rate-limited refreshes and an unreachable issuer, against a local issuer
(tests/fake_issuer.py) that counts the requests it gets."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest

from proxyrunner.identity.errors import InsufficientScope, InvalidToken
from proxyrunner.identity.jwt import JwtValidator
from proxyrunner.identity.keys import KeySet
from proxyrunner.identity.validator import TokenValidator, require_scopes
from tests.fake_issuer import AUDIENCE, Clock, FakeIssuer, b64, new_key, sign, unsigned
from tests.procs import free_port


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        yield session


@pytest.fixture
async def issuer() -> AsyncIterator[FakeIssuer]:
    fake = FakeIssuer(
        keys=[new_key("RS256", "rsa-1"), new_key("ES256", "ec-1"), new_key("EdDSA", "ed-1")]
    )
    await fake.start()
    yield fake
    await fake.close()


@pytest.fixture
async def clock() -> Clock:
    return Clock()


@pytest.fixture
async def keys(
    http: aiohttp.ClientSession, issuer: FakeIssuer, clock: Clock
) -> AsyncIterator[KeySet]:
    keyset = KeySet(http, issuer.url("/jwks"), clock=clock)
    yield keyset
    await keyset.close()


@pytest.fixture
def validator(keys: KeySet, issuer: FakeIssuer) -> JwtValidator:
    return JwtValidator(keys, issuer.issuer, AUDIENCE)


async def refused(validator: JwtValidator | TokenValidator, token: str) -> InvalidToken:
    with pytest.raises(InvalidToken) as caught:
        await validator.validate(token)
    # Whatever goes to the client or a log never carries the token or a piece of it.
    for part in token.split("."):
        if len(part) > 8:
            assert part not in str(caught.value)
            assert part not in caught.value.description
    return caught.value


@pytest.mark.parametrize(("alg", "kid"), [("RS256", "rsa-1"), ("ES256", "ec-1"), ("EdDSA", "ed-1")])
async def test_each_signature_algorithm_is_accepted(
    validator: JwtValidator, issuer: FakeIssuer, alg: str, kid: str
) -> None:
    key = next(k for k in issuer.keys if k.kid == kid)
    token = sign(key, issuer.claims(), alg)
    principal = await validator.validate(token)
    assert principal.issuer == issuer.issuer
    assert principal.subject == "user-1"
    assert principal.client_id == "client-a"
    assert principal.scopes == {"mcp:tools", "mcp:read"}
    assert principal.claims["aud"] == AUDIENCE
    assert principal.expires_at is not None
    assert principal.expires_at > time.time()


async def test_claim_variants_audience_list_scp_and_client_id(
    validator: JwtValidator, issuer: FakeIssuer
) -> None:
    claims = issuer.claims(aud=["other", AUDIENCE], scope=None, scp=["a", "b"], azp=None)
    claims["client_id"] = "client-b"
    principal = await validator.validate(sign(issuer.keys[0], claims, "RS256"))
    assert principal.scopes == {"a", "b"}
    assert principal.client_id == "client-b"


async def test_clock_skew_within_the_leeway_is_allowed(
    validator: JwtValidator, issuer: FakeIssuer
) -> None:
    now = int(time.time())
    claims = issuer.claims(exp=now - 10, nbf=now + 10, iat=now + 10)
    assert (await validator.validate(sign(issuer.keys[0], claims, "RS256"))).subject == "user-1"


class FromNow(int):
    """A time claim relative to when the test runs (params are built at collection, which
    can be minutes earlier in a full run): negative is in the past."""


def _refusals() -> list[Any]:
    return [
        pytest.param({"sub": None}, "invalid_token", id="missing-sub"),
        pytest.param({"sub": ""}, "invalid_token", id="empty-sub"),
        pytest.param({"exp": FromNow(-60)}, "expired", id="expired"),
        pytest.param({"exp": None}, "invalid_token", id="no-exp"),
        pytest.param({"exp": "tomorrow"}, "invalid_token", id="exp-not-a-number"),
        pytest.param({"nbf": FromNow(120)}, "invalid_token", id="nbf-in-the-future"),
        pytest.param({"iat": FromNow(120)}, "invalid_token", id="iat-in-the-future"),
        pytest.param({"aud": "https://other.example/mcp"}, "wrong_audience", id="wrong-audience"),
        pytest.param({"aud": ["a", "b"]}, "wrong_audience", id="audience-list-without-us"),
        pytest.param({"aud": None}, "wrong_audience", id="no-audience"),
        pytest.param({"iss": "https://evil.example"}, "wrong_issuer", id="wrong-issuer"),
        pytest.param({"iss": None}, "wrong_issuer", id="no-issuer"),
    ]


@pytest.mark.parametrize(("overrides", "reason"), _refusals())
async def test_claim_refusals(
    validator: JwtValidator, issuer: FakeIssuer, overrides: dict[str, Any], reason: str
) -> None:
    claims = issuer.claims()
    for name, value in overrides.items():
        if value is None:
            claims.pop(name, None)
        elif isinstance(value, FromNow):
            claims[name] = int(time.time()) + value
        else:
            claims[name] = value
    assert (await refused(validator, sign(issuer.keys[0], claims, "RS256"))).reason == reason


async def test_bad_signature_is_refused(validator: JwtValidator, issuer: FakeIssuer) -> None:
    impostor = new_key("RS256", "rsa-1")  # same kid, another key
    assert (await refused(validator, sign(impostor, issuer.claims(), "RS256"))).reason == (
        "bad_signature"
    )
    header, _payload, signature = sign(issuer.keys[0], issuer.claims(), "RS256").split(".")
    tampered = b64(b'{"sub":"admin","iss":"x"}')
    assert (await refused(validator, f"{header}.{tampered}.{signature}")).reason == "bad_signature"


async def test_alg_none_is_refused_before_any_key_lookup(
    validator: JwtValidator, issuer: FakeIssuer
) -> None:
    for alg in ("none", "None", "NONE"):
        token = unsigned({"alg": alg, "kid": "rsa-1"}, issuer.claims())
        assert (await refused(validator, token)).reason == "unsupported_alg"
    assert issuer.hits["jwks"] == 0


async def test_hs256_signed_with_the_rsa_public_key_is_refused(
    validator: JwtValidator, issuer: FakeIssuer
) -> None:
    """The classic algorithm confusion: the attacker knows the public key and uses it as
    an HMAC secret."""
    rsa = issuer.keys[0]
    pem = rsa.as_bytes(private=False)
    header = {"alg": "HS256", "kid": "rsa-1", "typ": "JWT"}
    signing_input = unsigned(header, issuer.claims()).rsplit(".", 1)[0]
    mac = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
    assert (await refused(validator, f"{signing_input}.{b64(mac)}")).reason == "unsupported_alg"
    with pytest.raises(ValueError, match="unusable"):
        JwtValidator(validator.keys, issuer.issuer, AUDIENCE, algorithms=("RS256", "HS256"))


async def test_an_rsa_key_never_verifies_an_es256_token(
    validator: JwtValidator, issuer: FakeIssuer
) -> None:
    ec = issuer.keys[1]
    token = sign(ec, issuer.claims(), "ES256", kid="rsa-1")  # ES256 naming the RSA key
    assert (await refused(validator, token)).reason == "unsupported_alg"


async def test_algorithm_outside_the_allowlist_is_refused(keys: KeySet, issuer: FakeIssuer) -> None:
    only_es = JwtValidator(keys, issuer.issuer, AUDIENCE, algorithms=("ES256",))
    token = sign(issuer.keys[0], issuer.claims(), "RS256")
    assert (await refused(only_es, token)).reason == "unsupported_alg"


@pytest.mark.parametrize(
    "token", ["garbage", "a.b.c", "ü.ü.ü", unsigned({"kid": "x"}, {}), "..", "e30.e30"]
)
async def test_malformed_tokens_are_refused(validator: JwtValidator, token: str) -> None:
    assert (await refused(validator, token)).reason in ("invalid_token", "unsupported_alg")


async def test_a_flood_of_unknown_kids_costs_one_fetch_per_interval(
    validator: JwtValidator, issuer: FakeIssuer, clock: Clock
) -> None:
    await validator.validate(sign(issuer.keys[0], issuer.claims(), "RS256"))
    assert issuer.hits["jwks"] == 1
    strangers = [new_key("RS256", f"stranger-{i}") for i in range(3)]
    tokens = [sign(strangers[i % 3], issuer.claims(), "RS256", kid=f"k{i}") for i in range(50)]
    await refused(validator, tokens[0])
    assert issuer.hits["jwks"] == 1  # the keys were fetched just now: not again
    clock.advance(10)
    results = await asyncio.gather(*(validator.validate(t) for t in tokens), return_exceptions=True)
    assert all(isinstance(r, InvalidToken) and r.reason == "unknown_key" for r in results)
    assert issuer.hits["jwks"] == 2  # 50 concurrent unknown kids: one shared fetch
    for token in tokens[:10]:
        await refused(validator, token)
    assert issuer.hits["jwks"] == 2  # within min_refresh_interval: none
    clock.advance(10)
    await asyncio.gather(*(validator.validate(t) for t in tokens), return_exceptions=True)
    assert issuer.hits["jwks"] == 3
    # Known keys never wait for any of it: a warm lookup does no I/O.
    await validator.validate(sign(issuer.keys[0], issuer.claims(), "RS256"))
    assert issuer.hits["jwks"] == 3


async def test_key_rotation_is_followed_without_restart(
    validator: JwtValidator, issuer: FakeIssuer, clock: Clock
) -> None:
    retired = issuer.keys[0]
    await validator.validate(sign(retired, issuer.claims(), "RS256"))
    rotated = new_key("RS256", "rsa-2")
    issuer.keys = [rotated]
    clock.advance(11)
    principal = await validator.validate(sign(rotated, issuer.claims(sub="user-2"), "RS256"))
    assert principal.subject == "user-2"
    assert issuer.hits["jwks"] == 2
    # The old key is gone from the set now: its tokens no longer validate.
    clock.advance(11)
    old = sign(retired, issuer.claims(), "RS256")
    assert (await refused(validator, old)).reason == "unknown_key"


async def test_issuer_down_cached_keys_keep_working_unknown_kids_fail_closed(
    validator: JwtValidator, keys: KeySet, issuer: FakeIssuer, clock: Clock
) -> None:
    good = sign(issuer.keys[0], issuer.claims(), "RS256")
    await validator.validate(good)
    issuer.down = True
    clock.advance(11)
    stranger = sign(new_key("RS256", "new"), issuer.claims(), "RS256")
    assert (await refused(validator, stranger)).reason == "idp_unavailable"
    assert (await validator.validate(good)).subject == "user-1"
    ok, message = keys.health()
    assert ok
    assert "last refresh failed: HTTP 503" in message
    clock.advance(400)  # stale: revalidated in the background, still served meanwhile
    assert (await validator.validate(good)).subject == "user-1"
    await asyncio.sleep(0.1)
    assert issuer.hits["jwks"] == 3
    issuer.down = False
    clock.advance(11)
    await refused(validator, stranger)  # the issuer answers: now truly unknown
    assert (await refused(validator, stranger)).reason == "unknown_key"
    assert keys.health()[0]
    assert "failed" not in keys.health()[1]


async def test_never_loaded_keys_fail_closed_and_say_why(
    http: aiohttp.ClientSession, issuer: FakeIssuer
) -> None:
    port = free_port()
    keys = KeySet(http, f"http://user:pw@127.0.0.1:{port}/secret/path/jwks")
    try:
        assert keys.health() == (False, f"JWKS never loaded: not fetched yet from 127.0.0.1:{port}")
        validator = JwtValidator(keys, issuer.issuer, AUDIENCE)
        token = sign(issuer.keys[0], issuer.claims(), "RS256")
        assert (await refused(validator, token)).reason == "idp_unavailable"
        ok, message = keys.health()
        assert not ok
        assert message == f"JWKS never loaded: ClientConnectorError from 127.0.0.1:{port}"
        # The next attempt waits for min_refresh_interval: still refused, without I/O.
        assert (await refused(validator, token)).reason == "idp_unavailable"
    finally:
        await keys.close()


async def test_background_refresh_runs_and_stops(
    http: aiohttp.ClientSession, issuer: FakeIssuer
) -> None:
    keys = KeySet(http, issuer.url("/jwks"), refresh_interval=0.05, min_refresh_interval=0.01)
    keys.start()
    try:
        for _ in range(100):
            if issuer.hits["jwks"] >= 3:
                break
            await asyncio.sleep(0.02)
        assert issuer.hits["jwks"] >= 3
        assert keys.health()[0]
        assert await keys.key("rsa-1", "RS256") is not None
    finally:
        await keys.close()
    hits = issuer.hits["jwks"]
    await asyncio.sleep(0.1)
    assert issuer.hits["jwks"] == hits


async def test_keys_discovered_from_the_issuer(
    http: aiohttp.ClientSession, issuer: FakeIssuer
) -> None:
    keys = KeySet(http, issuer=issuer.issuer)
    try:
        validator = JwtValidator(keys, issuer.issuer, AUDIENCE)
        await validator.validate(sign(issuer.keys[0], issuer.claims(), "RS256"))
        assert issuer.hits["metadata"] == 1
    finally:
        await keys.close()


async def test_token_validator_routes_and_checks_scopes(
    validator: JwtValidator, issuer: FakeIssuer
) -> None:
    tokens = TokenValidator(jwt=validator)
    principal = await tokens.validate(sign(issuer.keys[0], issuer.claims(), "RS256"))
    require_scopes(principal, ["mcp:tools"])
    with pytest.raises(InsufficientScope) as caught:
        require_scopes(principal, ["mcp:tools", "mcp:admin"])
    assert caught.value.required == ("mcp:tools", "mcp:admin")
    assert (await refused(tokens, "x" * 20_000)).reason == "invalid_token"
    assert (await refused(tokens, "opaque-token")).reason == "invalid_token"
    ok, message = tokens.health()
    assert ok
    assert message.startswith("JWKS: 3 keys from 127.0.0.1:")
    await tokens.close()


@pytest.fixture
async def timed(
    http: aiohttp.ClientSession, issuer: FakeIssuer
) -> AsyncIterator[tuple[Clock, Callable[..., TokenValidator]]]:
    """A clock from now, and a maker of validators (JWT key set and cache) that run on it."""
    clock = Clock(time.time())
    made: list[TokenValidator] = []

    def make(leeway: float = 30.0, **cache: Any) -> TokenValidator:
        keys = KeySet(http, issuer.url("/jwks"), clock=clock)
        jwt = JwtValidator(keys, issuer.issuer, AUDIENCE, leeway=leeway, clock=clock)
        made.append(TokenValidator(jwt, clock=clock, **cache))
        return made[-1]

    yield clock, make
    for tokens in made:
        await tokens.close()


async def test_a_validated_token_is_not_honoured_past_its_expiry(
    issuer: FakeIssuer, timed: tuple[Clock, Callable[..., TokenValidator]]
) -> None:
    clock, make = timed
    # No leeway: past exp, only a cache entry that outlived the token could accept it.
    tokens = make(leeway=0)
    token = sign(issuer.keys[0], issuer.claims(exp=int(clock()) + 20), "RS256")
    assert (await tokens.validate(token)).subject == "user-1"
    clock.advance(15)
    assert (await tokens.validate(token)).subject == "user-1"
    clock.advance(10)
    assert (await refused(tokens, token)).reason == "expired"


async def test_a_withdrawn_signing_key_stops_being_honoured_within_the_cache_ttl(
    issuer: FakeIssuer, timed: tuple[Clock, Callable[..., TokenValidator]]
) -> None:
    clock, make = timed
    tokens = make(cache_ttl=60)
    withdrawn, kept = issuer.keys[0], issuer.keys[1]
    token = sign(withdrawn, issuer.claims(), "RS256")
    await tokens.validate(token)
    jwks_fetches = issuer.hits["jwks"]
    # A warm token costs the issuer nothing.
    for _ in range(20):
        await tokens.validate(token)
    assert issuer.hits["jwks"] == jwks_fetches
    issuer.keys.remove(withdrawn)
    # A token with a new kid makes the key set refetch; the withdrawn key is gone.
    issuer.keys.append(new_key("RS256", "rsa-2"))
    clock.advance(11)  # past the key set's refetch rate limit
    await tokens.validate(sign(issuer.keys[-1], issuer.claims(), "RS256"))
    assert issuer.hits["jwks"] == jwks_fetches + 1
    clock.advance(40)
    assert (await tokens.validate(token)).subject == "user-1"  # still remembered
    clock.advance(10)
    assert (await refused(tokens, token)).reason == "unknown_key"
    assert (await tokens.validate(sign(kept, issuer.claims(), "ES256"))).subject == "user-1"


async def test_a_refused_token_is_not_remembered(
    issuer: FakeIssuer, timed: tuple[Clock, Callable[..., TokenValidator]]
) -> None:
    clock, make = timed
    tokens = make()
    early = new_key("RS256", "rsa-early")
    token = sign(early, issuer.claims(), "RS256")
    assert (await refused(tokens, token)).reason == "unknown_key"
    issuer.keys.append(early)  # the issuer publishes the key a moment later
    clock.advance(11)
    assert (await tokens.validate(token)).subject == "user-1"
