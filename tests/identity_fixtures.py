"""Fixtures for the OAuth tests: a real authorization server (oidc-provider).

- ``start_idp(**kwargs)``: an ``IdentityProvider`` (tests/identity_provider.py) in the
  test's tmp_path, started and returned; stopped (SIGTERM, then SIGKILL) at teardown.
  Skips, or fails in CI, when the npm packages are not installed.
- ``OAuthSetup``: a running IdP and a backend, starting proxies with ``oidc_config``
  against them, getting tokens from the IdP and forging ones it would never issue.

Tests use it once conftest.py imports it (``from tests.identity_fixtures import start_idp``).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from joserfc import jwk, jwt
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from tests.helpers import MCP_HEADERS, prerequisite_missing, tool_text
from tests.identity_provider import IdentityProvider, node_missing
from tests.procs import DemoBackend, Proxy

StartIdp = Callable[..., Awaitable[IdentityProvider]]


@pytest.fixture
async def start_idp(tmp_path: Path) -> AsyncIterator[StartIdp]:
    started: list[IdentityProvider] = []

    async def start(**kwargs: Any) -> IdentityProvider:
        if missing := node_missing():
            prerequisite_missing(missing)
        idp = IdentityProvider(tmp_path / f"idp-{len(started)}", **kwargs)
        started.append(idp)
        return await idp.start()

    yield start
    for idp in started:
        await idp.stop()


CLIENT = "proxy-client"
SCOPE = "mcp:tools mcp:read"


class OAuthSetup:
    """A running IdP, the demo backend, and a way to start proxies in front of it."""

    def __init__(
        self,
        idp: IdentityProvider,
        backend: DemoBackend,
        start_proxy: Callable[..., Proxy],
        resource: str,
        port: int,
    ) -> None:
        self.idp = idp
        self.backend = backend
        self._start_proxy = start_proxy
        self.resource = resource
        self.port = port

    def proxy(
        self,
        port: int | None = None,
        env: dict[str, str] | None = None,
        **oidc: Any,
    ) -> Proxy:
        extra = oidc.pop("config", {})
        config = {
            "name": "demo",
            "remote_url": self.backend.url,
            "port": port or self.port,
            "oidc_config": {"issuer": self.idp.issuer, "resource_url": self.resource, **oidc},
            **extra,
        }
        return self._start_proxy(config, env=env)

    async def token(self, scope: str = SCOPE, client: str = CLIENT) -> str:
        return await self.idp.token(client, resource=self.resource, scope=scope)

    def forge(
        self,
        *,
        header: dict[str, Any] | None = None,
        key: dict[str, Any] | None = None,
        **claims: Any,
    ) -> str:
        """A JWT the IdP never issued: signed with its current key unless told otherwise."""
        signing = key or self.idp.keys[0]
        now = int(time.time())
        body = {
            "iss": self.idp.issuer,
            "aud": self.resource,
            "sub": "forged",
            "client_id": CLIENT,
            "scope": SCOPE,
            "iat": now,
            "exp": now + 300,
            **claims,
        }
        head = {"alg": signing["alg"], "kid": signing["kid"], "typ": "at+jwt", **(header or {})}
        return jwt.encode(head, body, jwk.import_key(signing))


def bearer(token: str) -> dict[str, str]:
    return {**MCP_HEADERS, "Authorization": f"Bearer {token}"}


async def call_headers_tool(url: str, token: str) -> dict[str, str]:
    """The headers the backend received with a tools/call, through the SDK client."""
    http = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
    async with http, Client(streamable_http_client(url, http_client=http), mode="legacy") as client:
        received: dict[str, str] = json.loads(tool_text(await client.call_tool("headers", {})))
        return received


class MemoryTokens:
    """Token storage for the SDK's OAuth providers, kept in memory."""

    def __init__(self) -> None:
        self.tokens: Any = None
        self.client_info: Any = None

    async def get_tokens(self) -> Any:
        return self.tokens

    async def set_tokens(self, tokens: Any) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> Any:
        return self.client_info

    async def set_client_info(self, client_info: Any) -> None:
        self.client_info = client_info


async def proxy_metric_sum(proxy: Proxy, name: str, label: str) -> float:
    async with aiohttp.ClientSession() as http, http.get(f"{proxy.base}/metrics") as response:
        text = await response.text()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and label in line
    )
