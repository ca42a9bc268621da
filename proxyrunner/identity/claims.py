"""Shared by JWT validation and introspection: the checks on claims, and the Principal.

Both ways of validating a token end with a mapping of claims (the JWT payload, or the
introspection answer); checking them in one place keeps the two ways equally strict.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from proxyrunner.identity.errors import InvalidToken
from proxyrunner.principal import Principal


def _number(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    # bool is an int in Python; a JSON true is no timestamp.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidToken("invalid_token", f"the token's {name} claim is not a number")
    return float(value)


def check_issuer(claims: Mapping[str, Any], issuer: str, *, required: bool) -> None:
    value = claims.get("iss")
    if value is None and not required:
        return
    if value != issuer:
        raise InvalidToken("wrong_issuer", "the token was issued by another issuer")


def check_audience(claims: Mapping[str, Any], audience: str, *, required: bool) -> None:
    value = claims.get("aud")
    if value is None and not required:
        return
    audiences = [value] if isinstance(value, str) else value
    if not isinstance(audiences, list) or audience not in audiences:
        raise InvalidToken("wrong_audience", "the token is not meant for this resource")


def check_times(
    claims: Mapping[str, Any], now: float, leeway: float, *, exp_required: bool
) -> None:
    """``exp`` in the future, ``nbf`` and ``iat`` not in it, each within ``leeway``
    seconds to allow for clocks that disagree a little."""
    exp = _number(claims, "exp")
    if exp is None:
        if exp_required:
            raise InvalidToken("invalid_token", "the token has no expiry")
    elif exp + leeway <= now:
        raise InvalidToken("expired", "the token has expired")
    nbf = _number(claims, "nbf")
    if nbf is not None and nbf - leeway > now:
        raise InvalidToken("invalid_token", "the token is not valid yet")
    iat = _number(claims, "iat")
    if iat is not None and iat - leeway > now:
        raise InvalidToken("invalid_token", "the token was issued in the future")


def _scopes(claims: Mapping[str, Any]) -> frozenset[str]:
    scope = claims.get("scope")
    if isinstance(scope, str):
        return frozenset(scope.split())
    # Okta and others send scp as a list; Entra ID as a space-separated string.
    scp = claims.get("scp")
    if isinstance(scp, str):
        return frozenset(scp.split())
    if isinstance(scp, list):
        return frozenset(s for s in scp if isinstance(s, str))
    return frozenset()


def principal_from_claims(claims: Mapping[str, Any], issuer: str) -> Principal:
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject:
        raise InvalidToken("invalid_token", "the token has no subject")
    client_id = next(
        (v for k in ("client_id", "azp", "cid") if isinstance(v := claims.get(k), str) and v),
        None,
    )
    return Principal(
        issuer=issuer,
        subject=subject,
        client_id=client_id,
        scopes=_scopes(claims),
        expires_at=_number(claims, "exp"),
        claims=dict(claims),
    )


def where(url: str) -> str:
    """A URL's host and port only, for health messages and logs: never its userinfo,
    path or query, which may carry credentials."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    return f"{host}:{parts.port}" if parts.port else host
