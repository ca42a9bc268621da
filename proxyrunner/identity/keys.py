"""The issuer's signing keys (its JWKS), kept in memory and refreshed with care.

A token names its key by ``kid``. Looking up a known kid costs no I/O. An unknown kid
may mean the issuer rotated its keys, so it triggers one refresh; but it is also what
an attacker can send for free, so refreshes are rate-limited (one per
``min_refresh_interval`` however many unknown kids arrive, concurrent misses sharing one
fetch). When the issuer is unreachable the keys we have keep working: tokens signed by
them still validate; tokens naming any other key are refused (fail closed).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any, Final

import aiohttp
import structlog
from joserfc.errors import JoseError
from joserfc.jwk import JWKRegistry, Key

from proxyrunner.backoff import Backoff
from proxyrunner.identity.claims import where
from proxyrunner.identity.discovery import discover, read_json
from proxyrunner.identity.errors import DiscoveryFailed, InvalidToken
from proxyrunner.logging import get_logger
from proxyrunner.tasks import Supervisor

MAX_JWKS_BYTES: Final = 512 * 1024
# Members of a private JWK: a key set has no business publishing them, and we only ever
# verify, so a key that carries them is imported as its public half.
_PRIVATE_MEMBERS: Final = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
_CURVES: Final = {
    "ES256": "P-256",
    "ES384": "P-384",
    "ES512": "P-521",
    "ES256K": "secp256k1",
    "Ed25519": "Ed25519",
    "Ed448": "Ed448",
}


def key_fits(key: Key, alg: str) -> bool:
    """Whether ``key`` can verify a signature made with ``alg``: the key type (and curve)
    the algorithm needs, and the key's own ``alg`` when it declares one. This is what
    keeps an RSA key from ever checking an ES or HS signature."""
    if key.alg is not None and key.alg != alg:
        return False
    if alg.startswith(("RS", "PS")):
        return key.key_type == "RSA"
    if alg.startswith("ES"):
        return key.key_type == "EC" and key.get("crv") == _CURVES.get(alg)
    if alg == "EdDSA":
        return key.key_type == "OKP" and key.get("crv") in ("Ed25519", "Ed448")
    if alg in ("Ed25519", "Ed448"):
        return key.key_type == "OKP" and key.get("crv") == alg
    return False


def parse_jwks(document: Any) -> list[Key]:
    """The usable signature keys of a JWK set. Keys of a type we do not know, symmetric
    keys, encryption keys and malformed keys are skipped (RFC 7517 section 5); a set
    with none left is an error."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("not a JWK set")
    keys: list[Key] = []
    for data in document["keys"]:
        if not isinstance(data, dict) or data.get("kty") not in ("RSA", "EC", "OKP"):
            continue
        if data.get("use", "sig") != "sig":
            continue
        ops = data.get("key_ops")
        if isinstance(ops, list) and "verify" not in ops:
            continue
        public = {k: v for k, v in data.items() if k not in _PRIVATE_MEMBERS}
        try:
            keys.append(JWKRegistry.import_key(public))
        except (JoseError, ValueError, TypeError, KeyError):
            continue
    if not keys:
        raise ValueError("no usable signature keys in the JWK set")
    return keys


class KeySet:
    """The JWKS at ``jwks_uri``, or at the ``jwks_uri`` of ``issuer``'s metadata."""

    def __init__(
        self,
        http: aiohttp.ClientSession,
        jwks_uri: str | None = None,
        *,
        issuer: str | None = None,
        refresh_interval: float = 300.0,
        min_refresh_interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        log: structlog.stdlib.BoundLogger | None = None,
    ) -> None:
        if jwks_uri is None and issuer is None:
            raise ValueError("KeySet: need a jwks_uri or an issuer to discover it from")
        self._http = http
        self._jwks_uri = jwks_uri
        self._issuer = issuer
        self._refresh_interval = refresh_interval
        self._min_refresh_interval = min_refresh_interval
        self._clock = clock
        self._log = log or get_logger().bind(component="jwks")
        self._keys: list[Key] = []
        self._by_kid: dict[str, list[Key]] = {}
        self._loaded_at: float | None = None
        self._attempted_at: float | None = None
        self._error: str | None = None
        self._fetch: asyncio.Task[None] | None = None
        self._supervisor: Supervisor | None = None

    async def key(self, kid: str | None, alg: str) -> Key | None:
        """The key for a token's ``kid`` and ``alg``; ``None`` when the issuer has no such
        key. Raises InvalidToken("idp_unavailable") when we cannot know, because no keys
        could be loaded yet or the last refresh failed."""
        now = self._clock()
        found = self._lookup(kid, alg)
        if found is not None:
            if self._stale(now) and self._may_fetch(now):
                # Stale-while-revalidate: this request is not made to wait for the issuer.
                self._start_fetch(now)
            return found
        if self._fetch is None and not self._may_fetch(now):
            self._raise_if_unknowable()
            return None
        await asyncio.shield(self._fetch or self._start_fetch(now))
        found = self._lookup(kid, alg)
        if found is None:
            self._raise_if_unknowable()
        return found

    def health(self) -> tuple[bool, str]:
        host = where(self._jwks_uri or self._issuer or "")
        if self._loaded_at is None:
            what = self._error or "not fetched yet"
            return False, f"JWKS never loaded: {what} from {host}"
        age = self._clock() - self._loaded_at
        message = f"JWKS: {len(self._keys)} keys from {host}, loaded {age:.0f}s ago"
        if self._error is not None:
            message += f"; last refresh failed: {self._error}"
        return True, message

    def start(self) -> None:
        """Load the keys now and refresh them every ``refresh_interval`` in the background
        (without it, they are refreshed lazily when a lookup finds them stale)."""
        if self._supervisor is None:
            self._supervisor = Supervisor(self._log)
            self._supervisor.spawn("jwks-refresh", self._refresh_loop)

    async def close(self) -> None:
        if self._supervisor is not None:
            await self._supervisor.close()
        if self._fetch is not None:
            self._fetch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._fetch

    def _lookup(self, kid: str | None, alg: str) -> Key | None:
        if kid is not None:
            candidates = self._by_kid.get(kid, [])
            # A kid that names a key of the wrong type is still that key: the validator
            # refuses the mismatch; refetching would not change it.
            fitting = [k for k in candidates if key_fits(k, alg)]
            chosen = fitting or candidates
            return chosen[0] if chosen else None
        # No kid: only unambiguous when exactly one key can verify this algorithm.
        fitting = [k for k in self._keys if key_fits(k, alg)]
        return fitting[0] if len(fitting) == 1 else None

    def _stale(self, now: float) -> bool:
        if self._supervisor is not None:
            return False  # the refresh loop keeps the keys current
        return self._loaded_at is None or now - self._loaded_at >= self._refresh_interval

    def _may_fetch(self, now: float) -> bool:
        return self._attempted_at is None or now - self._attempted_at >= self._min_refresh_interval

    def _raise_if_unknowable(self) -> None:
        if self._loaded_at is None or self._error is not None:
            raise InvalidToken("idp_unavailable", "the issuer's signing keys cannot be fetched now")

    def _start_fetch(self, now: float) -> asyncio.Task[None]:
        if self._fetch is None:
            self._attempted_at = now
            self._fetch = asyncio.get_running_loop().create_task(self._load(), name="jwks-fetch")
        return self._fetch

    async def _load(self) -> None:
        """Fetch and install the key set; a failure is recorded, never raised, and the
        keys we had stay."""
        try:
            keys = parse_jwks(await self._get_document())
        except asyncio.CancelledError:
            raise
        except (TimeoutError, aiohttp.ClientError, ValueError, DiscoveryFailed) as exc:
            self._failed(type(exc).__name__ if not isinstance(exc, _HttpStatus) else str(exc))
        except Exception as exc:
            self._log.error("JWKS refresh failed unexpectedly", exc_info=exc)
            self._failed(type(exc).__name__)
        else:
            self._install(keys)
        finally:
            self._fetch = None

    async def _get_document(self) -> Any:
        if self._jwks_uri is None:
            assert self._issuer is not None
            metadata = await discover(self._http, self._issuer)
            if metadata.jwks_uri is None:
                raise DiscoveryFailed("the issuer's metadata has no jwks_uri")
            self._jwks_uri = metadata.jwks_uri
        async with self._http.get(
            self._jwks_uri, headers={"Accept": "application/json"}
        ) as response:
            if response.status != 200:
                raise _HttpStatus(f"HTTP {response.status}")
            return await read_json(response, MAX_JWKS_BYTES)

    def _install(self, keys: list[Key]) -> None:
        by_kid: dict[str, list[Key]] = {}
        for key in keys:
            if key.kid is not None:
                by_kid.setdefault(key.kid, []).append(key)
        added = set(by_kid) - set(self._by_kid)
        self._keys, self._by_kid = keys, by_kid
        self._loaded_at, self._error = self._clock(), None
        if added:
            self._log.info("JWKS loaded", keys=len(keys), new_kids=sorted(added))

    def _failed(self, what: str) -> None:
        if self._error != what:
            self._log.warning(
                "JWKS refresh failed; keeping the keys we have",
                error=what,
                source=where(self._jwks_uri or self._issuer or ""),
                keys=len(self._keys),
            )
        self._error = what

    async def _refresh_loop(self) -> None:
        # Twice the rate limit as the first delay: jitter keeps every retry at least
        # min_refresh_interval apart, the same bound unknown kids get.
        backoff = Backoff(
            first=2 * self._min_refresh_interval,
            maximum=max(2 * self._min_refresh_interval, self._refresh_interval),
            reset_after=None,
        )
        while True:
            await asyncio.shield(self._fetch or self._start_fetch(self._clock()))
            if self._error is None:
                backoff.reset()
                await asyncio.sleep(self._refresh_interval)
            else:
                await backoff.wait()


class _HttpStatus(ValueError):
    """A JWKS answer that was not 200: its status is all the health message shows."""
