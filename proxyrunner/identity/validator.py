"""One entry point for the pipeline: validate whatever access token a request carries.

A compact JWS (three dot-separated base64url parts) is validated locally when JWT
validation is configured; anything else (an opaque token), or every token when only
introspection is configured, is introspected. A JWT is never sent to introspection
after failing local validation: that would let a forged token cost an issuer round trip.

A client sends the same token with every request of its session, and checking its
signature is most of what authentication costs. So a JWT that validated is remembered,
by the SHA-256 of its text (the cache holds no token), until it expires and for at most
``cache_ttl`` seconds: a key the issuer withdraws stops being honoured within that time.
Only successes are cached; introspection keeps its own short, bounded cache.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable, Iterable
from typing import Final, Protocol

from cachetools import TLRUCache

from proxyrunner.identity.errors import InsufficientScope, InvalidToken
from proxyrunner.identity.jwt import JwtValidator
from proxyrunner.principal import Principal

_COMPACT_JWS: Final = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
# Well above any real access token, well below what would make hashing or parsing one a
# cost worth sending.
MAX_TOKEN_CHARS: Final = 16 * 1024


def looks_like_jwt(token: str) -> bool:
    return _COMPACT_JWS.fullmatch(token) is not None


class Introspecting(Protocol):
    """RFC 7662 introspection (``Introspector``, or one that finds its endpoint lazily)."""

    async def validate(self, token: str) -> Principal: ...

    def health(self) -> tuple[bool, str]: ...

    async def close(self) -> None: ...


DEFAULT_CACHE_SIZE: Final = 10_000
DEFAULT_CACHE_TTL: Final = 60.0


class TokenValidator:
    def __init__(
        self,
        jwt: JwtValidator | None = None,
        introspector: Introspecting | None = None,
        *,
        cache_size: int = DEFAULT_CACHE_SIZE,
        cache_ttl: float = DEFAULT_CACHE_TTL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if jwt is None and introspector is None:
            raise ValueError("TokenValidator: need JWT validation, introspection or both")
        self._jwt = jwt
        self._introspector = introspector
        self._cache_ttl = cache_ttl
        self._clock = clock
        self._validated: TLRUCache[bytes, tuple[Principal, float]] = TLRUCache(
            cache_size, lambda _key, value, _now: value[1], timer=clock
        )

    async def validate(self, token: str) -> Principal:
        if not token or len(token) > MAX_TOKEN_CHARS:
            raise InvalidToken("invalid_token", "the token is empty or too long")
        if self._jwt is not None and (self._introspector is None or looks_like_jwt(token)):
            key = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
            remembered = self._validated.get(key)
            if remembered is not None:
                return remembered[0]
            principal = await self._jwt.validate(token)
            until = self._clock() + self._cache_ttl
            if principal.expires_at is not None:
                until = min(until, principal.expires_at)
            self._validated[key] = (principal, until)
            return principal
        assert self._introspector is not None
        return await self._introspector.validate(token)

    def health(self) -> tuple[bool, str]:
        parts: list[tuple[bool, str]] = []
        if self._jwt is not None:
            parts.append(self._jwt.keys.health())
        if self._introspector is not None:
            parts.append(self._introspector.health())
        return all(ok for ok, _ in parts), "; ".join(message for _, message in parts)

    def start(self) -> None:
        if self._jwt is not None:
            self._jwt.keys.start()

    async def close(self) -> None:
        if self._jwt is not None:
            await self._jwt.keys.close()
        if self._introspector is not None:
            await self._introspector.close()


def require_scopes(principal: Principal, required: Iterable[str]) -> None:
    """Raise InsufficientScope naming every required scope when any is missing (RFC 6750
    section 3.1: the client learns all it must ask for, in one answer)."""
    needed = tuple(required)
    if not principal.scopes.issuperset(needed):
        raise InsufficientScope(needed)
