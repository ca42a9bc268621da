"""A tiny local authorization server for unit tests of proxyrunner.identity: it serves
a JWKS, RFC 8414 metadata, introspection and token exchange from what the test puts in
it, and counts every request, so tests can assert how often the validator asked.

Signing keys are generated with joserfc; ``sign()`` makes a JWT with any header and
claims (including ones a real issuer would never produce).
"""

from __future__ import annotations

import base64
import json
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer
from joserfc import jwt
from joserfc.jwk import ECKey, OKPKey, RSAKey

Key = RSAKey | ECKey | OKPKey
ISSUER_PATH = ""
AUDIENCE = "https://mcp.example/mcp"


def new_key(alg: str, kid: str) -> Key:
    parameters: dict[str, Any] = {"kid": kid, "use": "sig"}
    if alg.startswith(("RS", "PS")):
        return RSAKey.generate_key(2048, parameters=parameters)  # type: ignore[arg-type]
    if alg == "ES256":
        return ECKey.generate_key("P-256", parameters=parameters)  # type: ignore[arg-type]
    return OKPKey.generate_key("Ed25519", parameters=parameters)  # type: ignore[arg-type]


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign(key: Key, claims: dict[str, Any], alg: str, **header: Any) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # joserfc's SecurityWarning on EdDSA
        return jwt.encode({"alg": alg, "kid": key.kid, **header}, claims, key, algorithms=[alg])


def unsigned(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    return ".".join(
        [b64(json.dumps(header).encode()), b64(json.dumps(claims).encode()), b64(signature)]
    )


@dataclass
class FakeIssuer:
    keys: list[Key] = field(default_factory=list)
    introspection: dict[str, dict[str, Any]] = field(default_factory=dict)
    hits: Counter[str] = field(default_factory=Counter)
    down: bool = False
    client: tuple[str, str] = ("proxy", "s3cr:et")
    exchange_answer: dict[str, Any] | None = None
    exchange_status: int = 200
    forms: list[dict[str, str]] = field(default_factory=list)
    server: TestServer | None = None

    @property
    def issuer(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.port}{ISSUER_PATH}"

    def url(self, path: str) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.port}{path}"

    def claims(self, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        base = {
            "iss": self.issuer,
            "sub": "user-1",
            "aud": AUDIENCE,
            "exp": now + 300,
            "iat": now,
            "azp": "client-a",
            "scope": "mcp:tools mcp:read",
        }
        base.update(overrides)
        return {k: v for k, v in base.items() if v is not None}

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/jwks", self._jwks)
        app.router.add_get("/.well-known/oauth-authorization-server", self._metadata)
        app.router.add_post("/introspect", self._introspect)
        app.router.add_post("/token", self._token)
        return app

    async def start(self) -> FakeIssuer:
        self.server = TestServer(self.app(), host="127.0.0.1")
        await self.server.start_server()
        return self

    async def close(self) -> None:
        if self.server is not None:
            await self.server.close()

    def _authorized(self, request: web.Request) -> bool:
        expected = base64.b64encode(b"proxy:s3cr%3Aet").decode()
        return request.headers.get("Authorization") == f"Basic {expected}"

    async def _jwks(self, _request: web.Request) -> web.Response:
        self.hits["jwks"] += 1
        if self.down:
            return web.Response(status=503)
        return web.json_response({"keys": [dict(k.as_dict(private=False)) for k in self.keys]})

    async def _metadata(self, _request: web.Request) -> web.Response:
        self.hits["metadata"] += 1
        return web.json_response(
            {
                "issuer": self.issuer,
                "jwks_uri": self.url("/jwks"),
                "introspection_endpoint": self.url("/introspect"),
                "token_endpoint": self.url("/token"),
            }
        )

    async def _introspect(self, request: web.Request) -> web.Response:
        self.hits["introspect"] += 1
        if self.down:
            return web.Response(status=503)
        if not self._authorized(request):
            return web.json_response({"error": "invalid_client"}, status=401)
        form = await request.post()
        return web.json_response(self.introspection.get(str(form["token"]), {"active": False}))

    async def _token(self, request: web.Request) -> web.Response:
        self.hits["token"] += 1
        if self.down:
            return web.Response(status=503)
        if not self._authorized(request):
            return web.json_response({"error": "invalid_client"}, status=401)
        form = {k: str(v) for k, v in (await request.post()).items()}
        self.forms.append(form)
        answer = self.exchange_answer or {
            "access_token": f"exchanged-{self.hits['token']}",
            "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
            "token_type": "Bearer",
            "expires_in": 300,
        }
        return web.json_response(answer, status=self.exchange_status)


class Clock:
    """A clock tests move by hand."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
