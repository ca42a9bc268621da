"""RFC 7662 token introspection: for opaque tokens, ask the issuer whether it is active.

Every request with the same token would cost a round trip to the issuer, so answers are
cached (keyed by the token's SHA-256, never the token itself) until the token expires
or ``cache_ttl`` passes, whichever is first: ``cache_ttl`` bounds how long a revoked
token keeps working. Refusals are cached for ``inactive_ttl`` so that a client retrying
a dead token does not turn into a load on the issuer. Concurrent lookups of one token
share one request. When the issuer cannot be reached, tokens not in the cache are
refused (fail closed) and nothing about the failure is cached.
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Callable
from typing import Any, Final
from urllib.parse import quote

import aiohttp
import structlog
from cachetools import TLRUCache

from proxyrunner.identity.claims import (
    check_audience,
    check_issuer,
    check_times,
    principal_from_claims,
    where,
)
from proxyrunner.identity.discovery import read_json
from proxyrunner.identity.errors import InvalidToken
from proxyrunner.identity.singleflight import SingleFlight
from proxyrunner.logging import get_logger
from proxyrunner.principal import Principal

MAX_ANSWER_BYTES: Final = 64 * 1024

Outcome = Principal | InvalidToken


def client_auth(client_id: str, client_secret: str) -> dict[str, str]:
    """The request headers of client_secret_basic: RFC 6749 section 2.3.1 form-encodes
    both parts first, so a secret with ':' or non-ASCII characters survives."""
    pair = f"{quote(client_id, safe='')}:{quote(client_secret, safe='')}"
    return {
        "Authorization": "Basic " + base64.b64encode(pair.encode("ascii")).decode("ascii"),
        "Accept": "application/json",
    }


class Introspector:
    def __init__(
        self,
        http: aiohttp.ClientSession,
        endpoint: str,
        client_id: str,
        client_secret: str,
        *,
        issuer: str,
        audience: str,
        cache_ttl: float = 30.0,
        inactive_ttl: float = 5.0,
        maxsize: int = 10_000,
        leeway: float = 30.0,
        clock: Callable[[], float] = time.time,
        log: structlog.stdlib.BoundLogger | None = None,
    ) -> None:
        self._http = http
        self._endpoint = endpoint
        self._headers = client_auth(client_id, client_secret)
        self._issuer = issuer
        self._audience = audience
        self._cache_ttl = cache_ttl
        self._inactive_ttl = inactive_ttl
        self._leeway = leeway
        self._clock = clock
        self._log = log or get_logger().bind(component="introspection")
        # Each entry carries its own deadline: (outcome, expires at).
        self._cache: TLRUCache[bytes, tuple[Outcome, float]] = TLRUCache(
            maxsize, lambda _key, value, _now: value[1], timer=clock
        )
        self._flights: SingleFlight[bytes, Outcome] = SingleFlight("introspection")
        self._error: str | None = None
        self._succeeded = False

    async def validate(self, token: str) -> Principal:
        digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        cached = self._cache.get(digest)
        outcome = cached[0] if cached is not None else None
        if outcome is None:
            outcome = await self._flights.run(digest, lambda: self._lookup(digest, token))
        if isinstance(outcome, InvalidToken):
            # A fresh exception each time: raising the cached one would chain tracebacks.
            raise InvalidToken(outcome.reason, outcome.description)
        return outcome

    def health(self) -> tuple[bool, str]:
        host = where(self._endpoint)
        if self._error is not None:
            return False, f"introspection failing: {self._error} from {host}"
        if not self._succeeded:
            return True, f"introspection at {host} not used yet"
        return True, f"introspection at {host} answering"

    async def close(self) -> None:
        await self._flights.close()

    async def _lookup(self, digest: bytes, token: str) -> Outcome:
        answer = await self._ask(token)  # raises idp_unavailable, never cached
        now = self._clock()
        try:
            principal = self._judge(answer, now)
        except InvalidToken as refusal:
            self._cache[digest] = (refusal, now + self._inactive_ttl)
            return refusal
        deadline = now + self._cache_ttl
        if principal.expires_at is not None:
            deadline = min(deadline, principal.expires_at)
        if deadline > now:
            self._cache[digest] = (principal, deadline)
        return principal

    async def _ask(self, token: str) -> dict[str, Any]:
        form = {"token": token, "token_type_hint": "access_token"}
        try:
            async with self._http.post(
                self._endpoint, data=form, headers=self._headers
            ) as response:
                if response.status != 200:
                    raise _Unusable(f"HTTP {response.status}")
                answer = await read_json(response, MAX_ANSWER_BYTES)
            if not isinstance(answer, dict):
                raise _Unusable("an answer that is not a JSON object")
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
            what = str(exc) if isinstance(exc, _Unusable) else type(exc).__name__
            if self._error != what:
                self._log.warning("introspection failed", error=what, at=where(self._endpoint))
            self._error = what
            raise InvalidToken(
                "idp_unavailable", "the issuer cannot be asked about the token now"
            ) from None  # the chain would hold the request, and so the token
        self._error, self._succeeded = None, True
        return answer

    def _judge(self, answer: dict[str, Any], now: float) -> Principal:
        if answer.get("active") is not True:
            raise InvalidToken("inactive", "the token is not active")
        # RFC 7662 makes every member but "active" optional: check those that are there.
        check_issuer(answer, self._issuer, required=False)
        check_audience(answer, self._audience, required=False)
        check_times(answer, now, self._leeway, exp_required=False)
        return principal_from_claims(answer, self._issuer)


class _Unusable(ValueError):
    """An introspection answer we cannot use; its text is what health() shows."""
