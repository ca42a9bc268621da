"""Validation of JWT access tokens (RFC 9068 style) against the issuer's keys.

The order matters: the header is read and its algorithm judged before any key is looked
up, so a token with ``alg: none``, an HMAC algorithm or any algorithm outside the
allowlist costs nothing and never reaches a key; the key found must be of the type the
algorithm needs (no algorithm confusion: an RSA public key is never used as an HMAC
secret or to check an ES signature); only then the signature; only then the claims.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Collection
from typing import Any, Final

from joserfc.errors import JoseError, UnsupportedAlgorithmError
from joserfc.jws import CompactSignature, JWSRegistry, extract_compact, validate_compact

from proxyrunner.identity.claims import (
    check_audience,
    check_issuer,
    check_times,
    principal_from_claims,
)
from proxyrunner.identity.errors import InvalidToken
from proxyrunner.identity.keys import KeySet, key_fits
from proxyrunner.principal import Principal

# Ed25519: RFC 9864's fully specified name for EdDSA over Ed25519, what newer issuers send.
DEFAULT_ALGORITHMS: Final = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "ES256",
    "ES384",
    "EdDSA",
    "Ed25519",
)


def _never_accepted(alg: str) -> bool:
    """Whatever the configuration says: "none" is no signature, and an HMAC "signature"
    checked with a public key is one anybody can make."""
    return alg.lower() == "none" or alg.upper().startswith("HS")


class _Registry(JWSRegistry):
    """joserfc's registry, with the allowlist as the only judge: it would warn (an error
    under our test settings, noise in production) on every EdDSA token because RFC 9864
    deprecates the name, yet that is what issuers publish today."""

    # Headers with an x5c chain outgrow joserfc's 512-byte default.
    max_header_length = 8192

    def get_alg(self, name: str) -> Any:
        if name not in self.algorithms or (self.allowed and name not in self.allowed):
            raise UnsupportedAlgorithmError(f"algorithm {name!r} is not allowed")
        return self.algorithms[name]


class JwtValidator:
    def __init__(
        self,
        keys: KeySet,
        issuer: str,
        audience: str,
        *,
        algorithms: Collection[str] = DEFAULT_ALGORITHMS,
        leeway: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        refused = [a for a in algorithms if _never_accepted(a)]
        unknown = [a for a in algorithms if a not in JWSRegistry.algorithms]
        if refused or unknown or not algorithms:
            raise ValueError(f"JwtValidator: unusable algorithms {refused + unknown or '()'}")
        self.keys = keys
        self._issuer = issuer
        self._audience = audience
        self._algorithms = frozenset(algorithms)
        self._leeway = leeway
        self._clock = clock
        # Unknown header parameters are allowed (issuers add their own); "crit" ones are
        # still refused unless understood.
        self._registry = _Registry(algorithms=sorted(self._algorithms), strict_check_header=False)

    async def validate(self, token: str) -> Principal:
        signed = self._parse(token)
        header = signed.headers()
        alg = header.get("alg")
        if not isinstance(alg, str):
            raise InvalidToken("invalid_token", "the token header has no algorithm")
        if _never_accepted(alg) or alg not in self._algorithms:
            raise InvalidToken("unsupported_alg", "the token's signature algorithm is not accepted")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise InvalidToken("invalid_token", "the token header has an invalid kid")
        key = await self.keys.key(kid, alg)
        if key is None:
            raise InvalidToken("unknown_key", "the token's signing key is not the issuer's")
        if not key_fits(key, alg):
            raise InvalidToken("unsupported_alg", "the token's algorithm does not match its key")
        try:
            verified = validate_compact(signed, key, registry=self._registry)
        except JoseError as exc:
            raise InvalidToken("bad_signature", "the token's signature is invalid") from exc
        if not verified:
            raise InvalidToken("bad_signature", "the token's signature is invalid")
        try:
            claims = json.loads(signed.payload)
        except ValueError as exc:
            raise InvalidToken("invalid_token", "the token's payload is not JSON") from exc
        if not isinstance(claims, dict):
            raise InvalidToken("invalid_token", "the token's payload is not a JSON object")
        check_issuer(claims, self._issuer, required=True)
        check_audience(claims, self._audience, required=True)
        check_times(claims, self._clock(), self._leeway, exp_required=True)
        return principal_from_claims(claims, self._issuer)

    def _parse(self, token: str) -> CompactSignature:
        try:
            return extract_compact(token.encode("ascii"), registry=self._registry)
        except (JoseError, ValueError) as exc:
            # UnicodeEncodeError is a ValueError: a token is ASCII by grammar (RFC 6750).
            raise InvalidToken("invalid_token", "the token is not a well-formed JWT") from exc
