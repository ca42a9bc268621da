"""RFC 8693 token exchange: the token the proxy presents to a backend for one principal.

The client's own token is meant for the proxy (its audience), never forwarded; the
proxy trades it at the issuer for one meant for the backend. Exchanged tokens are cached
per (principal, audience) until shortly before they expire, and never past the client
token's own expiry: a downstream token must not outlive the authority it came from.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, Final

import aiohttp
from cachetools import TLRUCache

from proxyrunner.identity.claims import where
from proxyrunner.identity.discovery import read_json
from proxyrunner.identity.errors import TokenExchangeFailed
from proxyrunner.identity.introspection import client_auth
from proxyrunner.identity.singleflight import SingleFlight
from proxyrunner.principal import Principal

__all__ = ["TokenExchangeFailed", "TokenExchanger"]

GRANT_TYPE: Final = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE: Final = "urn:ietf:params:oauth:token-type:access_token"  # noqa: S105
MAX_ANSWER_BYTES: Final = 64 * 1024


class TokenExchanger:
    def __init__(
        self,
        http: aiohttp.ClientSession,
        token_url: str,
        client_id: str,
        client_secret: str,
        audience: str,
        scopes: Sequence[str] = (),
        subject_token_type: str = ACCESS_TOKEN_TYPE,
        *,
        margin: float = 30.0,
        default_lifetime: float = 60.0,
        maxsize: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._http = http
        self._token_url = token_url
        self._headers = client_auth(client_id, client_secret)
        self._audience = audience
        self._scopes = tuple(scopes)
        self._subject_token_type = subject_token_type
        self._margin = margin
        self._default_lifetime = default_lifetime
        self._clock = clock
        self._cache: TLRUCache[tuple[str, str], tuple[str, float]] = TLRUCache(
            maxsize, lambda _key, value, _now: value[1], timer=clock
        )
        self._flights: SingleFlight[tuple[str, str], str] = SingleFlight("token-exchange")

    async def token_for(self, principal: Principal, subject_token: str) -> str:
        key = (principal.binding, self._audience)
        cached = self._cache.get(key)
        if cached is not None:
            return cached[0]
        return await self._flights.run(key, lambda: self._exchange(key, principal, subject_token))

    async def close(self) -> None:
        await self._flights.close()

    async def _exchange(self, key: tuple[str, str], principal: Principal, subject: str) -> str:
        form = {
            "grant_type": GRANT_TYPE,
            "subject_token": subject,
            "subject_token_type": self._subject_token_type,
            "requested_token_type": ACCESS_TOKEN_TYPE,
            "audience": self._audience,
        }
        if self._scopes:
            form["scope"] = " ".join(self._scopes)
        host = where(self._token_url)
        try:
            async with self._http.post(
                self._token_url, data=form, headers=self._headers
            ) as response:
                status = response.status
                try:
                    answer: Any = await read_json(response, MAX_ANSWER_BYTES)
                except ValueError:
                    answer = None  # judged with the status below
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise TokenExchangeFailed(
                f"token exchange: {type(exc).__name__} from {host}", retryable=True
            ) from None  # the chain would hold the request, and so the subject token
        token, lifetime = self._read(answer, status, host)
        now = self._clock()
        deadline = now + lifetime - self._margin
        if principal.expires_at is not None:
            deadline = min(deadline, principal.expires_at)
        if deadline > now:
            self._cache[key] = (token, deadline)
        return token

    def _read(self, answer: Any, status: int, host: str) -> tuple[str, float]:
        if status != 200:
            error = answer.get("error") if isinstance(answer, dict) else None
            # Only the error code: an error_description could quote what we sent.
            code = error if isinstance(error, str) and error.isascii() and len(error) < 64 else None
            raise TokenExchangeFailed(
                f"token exchange refused by {host}: HTTP {status}" + (f" {code}" if code else ""),
                error=code,
                # 4xx other than 429 is our request or the principal's token: the same
                # request will be refused again.
                retryable=status >= 500 or status == 429,
            )
        if not isinstance(answer, dict) or not isinstance(answer.get("access_token"), str):
            raise TokenExchangeFailed(
                f"token exchange: {host} answered without an access_token", retryable=True
            )
        token_type = answer.get("token_type")
        if isinstance(token_type, str) and token_type.lower() not in ("bearer", "n_a"):
            raise TokenExchangeFailed(
                f"token exchange: {host} issued a {token_type[:32]!r} token, not a bearer token",
                retryable=False,
            )
        expires_in = answer.get("expires_in")
        if isinstance(expires_in, bool) or not isinstance(expires_in, int | float):
            expires_in = self._default_lifetime
        return answer["access_token"], float(expires_in)
