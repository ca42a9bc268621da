"""RFC 8693 token exchange end to end: the backend gets a token the real IdP issued for
the backend's own audience, in place of the client's token, exchanged once per
principal; an exchange the IdP refuses never reaches the backend and leaks nothing."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from joserfc import jwt
from joserfc.jwk import KeySet

from tests.conftest import StartBackend, StartProxy
from tests.helpers import INIT, http_backend
from tests.identity_fixtures import (
    OAuthSetup,
    StartIdp,
    bearer,
    call_headers_tool,
    proxy_metric_sum,
)
from tests.identity_provider import Client, Resource
from tests.procs import free_port

pytestmark = [pytest.mark.node, pytest.mark.timeout(90)]

BACKEND_AUDIENCE = "http://127.0.0.1:9002/mcp"
PROXY_SECRET = "proxy:exchange-secret"  # a ':' must survive client_secret_basic


@pytest.fixture
async def exchange_setup(
    start_idp: StartIdp, start_backend: StartBackend, start_proxy: StartProxy
) -> OAuthSetup:
    port = free_port()
    resource = f"http://127.0.0.1:{port}/mcp"
    idp = await start_idp(
        clients=[Client("agent", "agent-secret"), Client("proxy-client", PROXY_SECRET)],
        resources={
            resource: Resource(),
            BACKEND_AUDIENCE: Resource(scope="mcp:tools", alg="ES256"),
        },
        token_exchange=True,
    )
    return OAuthSetup(idp, start_backend("alpha"), start_proxy, resource, port)


def exchange_config(setup: OAuthSetup, audience: str = BACKEND_AUDIENCE) -> dict[str, Any]:
    return {
        "token_exchange_config": {
            "token_url": setup.idp.token_endpoint,
            "client_id": "proxy-client",
            "client_secret": "",  # as ToolHive writes it: the secret comes from the env
            "audience": audience,
            "scopes": ["mcp:tools"],
            "subject_token_type": "access_token",
            "header_strategy": "replace",
        }
    }


async def test_the_backend_gets_a_token_exchanged_for_its_own_audience_once_per_principal(
    exchange_setup: OAuthSetup,
) -> None:
    setup = exchange_setup
    proxy = setup.proxy(
        config=exchange_config(setup), env={"THV_TOKEN_EXCHANGE_CLIENT_SECRET": PROXY_SECRET}
    )
    subject = await setup.token(client="agent")
    received = await call_headers_tool(proxy.url, subject)
    scheme, _, exchanged = received["authorization"].partition(" ")
    assert scheme == "Bearer"
    assert exchanged != subject
    decoded = jwt.decode(exchanged, KeySet.import_key_set(await setup.idp.served_jwks()))
    claims = decoded.claims
    assert claims["aud"] == BACKEND_AUDIENCE
    assert claims["sub"] == "agent"  # the same principal, for the backend's audience
    assert claims["act"] == {"sub": "proxy-client"}  # and the IdP knows who asked
    assert claims["scope"] == "mcp:tools"

    # A second session of the same principal reuses the exchanged token.
    again = await call_headers_tool(proxy.url, subject)
    assert again["authorization"] == received["authorization"]
    token_requests = await proxy_metric_sum(proxy, "proxyrunner_idp_requests_total", 'kind="token"')
    assert token_requests == 1

    # Another principal gets a token of its own.
    other = await setup.token(client="proxy-client")
    theirs = await call_headers_tool(proxy.url, other)
    assert theirs["authorization"] != received["authorization"]

    output = proxy.output()
    for secret in (PROXY_SECRET, subject, exchanged):
        assert secret not in output


async def test_an_exchange_the_idp_refuses_fails_the_request_before_the_backend(
    exchange_setup: OAuthSetup,
) -> None:
    setup = exchange_setup
    reached: list[web.Request] = []

    async def backend(request: web.Request) -> web.Response:
        reached.append(request)
        return web.Response(status=500)

    async with http_backend(backend) as port:
        # The IdP knows no such resource: it answers invalid_target.
        config = exchange_config(setup, audience="http://127.0.0.1:9/unknown")
        # In a thread: the proxy waits for this loop's backend to answer its probe.
        proxy = await asyncio.to_thread(
            setup.proxy,
            config={**config, "remote_url": f"http://127.0.0.1:{port}/mcp"},
            env={"THV_TOKEN_EXCHANGE_CLIENT_SECRET": PROXY_SECRET},
        )
        subject = await setup.token(client="agent")
        async with (
            aiohttp.ClientSession() as http,
            http.post(proxy.url, json=INIT, headers=bearer(subject)) as response,
        ):
            assert response.status == 503
            body = await response.json()
    assert body["error"]["message"].startswith("the backend credential cannot be obtained")
    assert "invalid_target" in body["error"]["message"]
    assert reached == []
    output = proxy.output()
    assert PROXY_SECRET not in output
    assert subject not in output


def test_token_exchange_without_its_client_secret_exits_2_naming_the_variable(
    start_proxy: StartProxy,
) -> None:
    proxy = start_proxy(
        {
            "name": "demo",
            "remote_url": "http://127.0.0.1:9/mcp",
            "oidc_config": {
                "issuer": "http://127.0.0.1:9",
                "resource_url": "http://127.0.0.1:9/mcp",
            },
            "token_exchange_config": {
                "token_url": "http://127.0.0.1:9/token",
                "client_id": "proxy-client",
                "audience": BACKEND_AUDIENCE,
            },
        },
        wait=False,
    )
    output = proxy.exits_with(2)
    assert "THV_TOKEN_EXCHANGE_CLIENT_SECRET" in output
