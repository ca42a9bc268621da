"""The official SDK's OAuth client through two proxy replicas that share sessions in
Redis, behind a round-robin balancer: it starts from nothing but the public URL, and
every request, whichever replica takes it, is served with one token and one session."""

from __future__ import annotations

import asyncio

import pytest
from mcp import Client
from mcp.client.auth.extensions.client_credentials import ClientCredentialsOAuthProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from tests.balancer import balancer
from tests.conftest import StartBackend, StartProxy
from tests.helpers import tool_text, whoami
from tests.identity_fixtures import CLIENT, SCOPE, MemoryTokens, StartIdp
from tests.identity_provider import Resource
from tests.procs import eventually, free_port
from tests.redis_server import RedisServer

pytestmark = [pytest.mark.node, pytest.mark.timeout(120)]


async def test_the_sdk_oauth_client_works_through_two_replicas_sharing_redis(
    start_idp: StartIdp,
    start_backend: StartBackend,
    start_proxy: StartProxy,
    redis_server: RedisServer,
) -> None:
    ports = [free_port(), free_port()]
    backend = start_backend("alpha")
    async with balancer([f"http://127.0.0.1:{port}" for port in ports]) as lb:
        # The public URL is the balancer's, as a Service's would be: the proxies are
        # told it, since they cannot learn it from requests.
        resource = f"{lb.url}/mcp"
        idp = await start_idp(resources={resource: Resource()})
        config = {
            "name": "demo",
            "remote_url": backend.url,
            "oidc_config": {
                "issuer": idp.issuer,
                "resource_url": resource,
                "scopes": SCOPE.split(),
            },
            "session_redis": {"address": redis_server.address, "key_prefix": "oauth-lb"},
        }
        env = {"THV_SESSION_REDIS_PASSWORD": redis_server.password}
        for port in ports:
            await asyncio.to_thread(start_proxy, {**config, "port": port}, env=env)
        await eventually(lambda: len(lb.ready) == 2, 10, "both replicas to be ready")

        storage = MemoryTokens()
        provider = ClientCredentialsOAuthProvider(
            server_url=resource,
            storage=storage,
            client_id=CLIENT,
            client_secret="proxy-client-secret",
            scope=SCOPE,
            issuer=idp.issuer,
        )
        http = create_mcp_http_client(auth=provider)
        async with (
            http,
            Client(streamable_http_client(resource, http_client=http), mode="legacy") as client,
        ):
            first = await client.call_tool("echo", {"text": "through OAuth"})
            assert tool_text(first) == "through OAuth"
            token = storage.tokens.access_token
            for _ in range(10):
                assert (await whoami(client))["id"] == "alpha"
            # One token for the whole conversation: no replica asked for a new one.
            assert storage.tokens.access_token == token
        served = dict(lb.served)
    assert all(count >= 5 for count in served.values()), served
