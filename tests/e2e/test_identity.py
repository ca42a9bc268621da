"""The proxy as the OAuth 2.1 resource server of its MCP server, against a real
authorization server (npm oidc-provider, started by the tests) and real SDK peers.

Every test here runs a real ``proxyrunner run`` with ``oidc_config`` in front of the
SDK-built demo backend; tokens come from the IdP, or are forged with its own keys (or
other keys) where a test needs a token the IdP would never issue.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from typing import Any

import aiohttp
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from tests.conftest import StartBackend, StartProxy
from tests.helpers import INIT, MCP_HEADERS, running_tap, tool_text, tools_call
from tests.identity_fixtures import (
    CLIENT,
    SCOPE,
    MemoryTokens,
    OAuthSetup,
    StartIdp,
    bearer,
    call_headers_tool,
    proxy_metric_sum,
)
from tests.identity_provider import Resource, generate_key
from tests.procs import Proxy, free_port
from tests.redis_server import RedisServer

pytestmark = [pytest.mark.node, pytest.mark.timeout(90)]


@pytest.fixture
async def oauth(
    start_idp: StartIdp, start_backend: StartBackend, start_proxy: StartProxy
) -> OAuthSetup:
    port = free_port()
    resource = f"http://127.0.0.1:{port}/mcp"
    idp = await start_idp(resources={resource: Resource()})
    return OAuthSetup(idp, start_backend("alpha"), start_proxy, resource, port)


# --------------------------------------------------------------------- the challenge


async def test_a_request_without_a_token_gets_401_naming_the_resource_metadata(
    oauth: OAuthSetup,
) -> None:
    proxy = oauth.proxy()
    async with aiohttp.ClientSession() as http:
        async with http.post(proxy.url, json=INIT, headers=MCP_HEADERS) as response:
            assert response.status == 401
            challenge = response.headers["WWW-Authenticate"]
            body = await response.json()
        assert challenge.startswith("Bearer ")
        assert f'resource_metadata="{proxy.base}/.well-known/oauth-protected-resource/mcp"' in (
            challenge
        )
        assert "error=" not in challenge  # no token was sent: nothing was refused
        assert body["error"]["code"] == -32011
        # The operational endpoints stay open.
        for path in ("/health", "/readyz", "/metrics"):
            async with http.get(f"{proxy.base}{path}") as response:
                assert response.status == 200, path


async def test_the_protected_resource_metadata_names_the_resource_and_its_issuer(
    oauth: OAuthSetup,
) -> None:
    proxy = oauth.proxy(scopes=["mcp:tools", "mcp:read"])
    async with aiohttp.ClientSession() as http:
        for path in (
            "/.well-known/oauth-protected-resource",
            "/.well-known/oauth-protected-resource/mcp",
        ):
            # A client-sent Host must not change what the document says.
            async with http.get(
                f"{proxy.base}{path}", headers={"X-Forwarded-Host": "evil.example"}
            ) as response:
                assert response.status == 200, path
                doc = await response.json()
            assert doc == {
                "resource": oauth.resource,
                "authorization_servers": [oauth.idp.issuer],
                "scopes_supported": ["mcp:tools", "mcp:read"],
                "bearer_methods_supported": ["header"],
            }


# --------------------------------------------------------------------- valid tokens


async def test_a_valid_jwt_reaches_the_tool_and_the_backend_never_sees_the_client_token(
    oauth: OAuthSetup,
) -> None:
    proxy = oauth.proxy()
    token = await oauth.token()
    received = await call_headers_tool(proxy.url, token)
    assert "authorization" not in received
    assert token not in json.dumps(received)


async def test_an_opaque_token_is_checked_by_introspection(
    start_idp: StartIdp, start_backend: StartBackend, start_proxy: StartProxy
) -> None:
    port = free_port()
    resource = f"http://127.0.0.1:{port}/mcp"
    idp = await start_idp(resources={resource: Resource(format="opaque")})
    setup = OAuthSetup(idp, start_backend("alpha"), start_proxy, resource, port)
    proxy = setup.proxy(client_id=CLIENT, env={"THV_OIDC_CLIENT_SECRET": "proxy-client-secret"})
    token = await setup.token()
    assert token.count(".") != 2  # opaque indeed
    received = await call_headers_tool(proxy.url, token)
    assert "authorization" not in received
    await idp.revoke(token)
    async with aiohttp.ClientSession() as http:
        # A revoked token is refused once the short introspection cache has let it go.
        deadline = time.monotonic() + 45
        while True:
            async with http.post(proxy.url, json=INIT, headers=bearer(token)) as response:
                if response.status == 401:
                    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]
                    break
            assert time.monotonic() < deadline, "a revoked token kept working"
            await asyncio.sleep(0.5)


# --------------------------------------------------------------------- refusals


def _forgeries(setup: OAuthSetup) -> dict[str, str]:
    now = int(time.time())
    other = generate_key("RS256", kid=setup.idp.keys[0]["kid"])
    public = {
        k: v for k, v in setup.idp.keys[0].items() if k not in {"d", "p", "q", "dp", "dq", "qi"}
    }
    claims = {"iss": setup.idp.issuer, "aud": setup.resource, "sub": "x", "exp": now + 60}
    # Built by hand: a JOSE library rightly refuses to make these.
    unsigned = _compact({"alg": "none"}, claims, lambda _: b"")
    secret = json.dumps(public).encode()
    confused = _compact(
        {"alg": "HS256", "kid": setup.idp.keys[0]["kid"]},
        claims,
        lambda signing_input: hmac.new(secret, signing_input, hashlib.sha256).digest(),
    )
    return {
        "expired": setup.forge(exp=now - 120, iat=now - 600),
        "not yet valid": setup.forge(nbf=now + 600),
        "wrong audience": setup.forge(aud="http://127.0.0.1:1/other"),
        "wrong issuer": setup.forge(iss="http://127.0.0.1:1"),
        "bad signature": setup.forge(key=other),
        "alg none": unsigned,
        "HS256 with the public key": confused,
        "not a token": "garbage",
    }


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def _compact(header: dict[str, Any], claims: dict[str, Any], sign: Any) -> str:
    signing_input = _b64(json.dumps(header).encode()) + b"." + _b64(json.dumps(claims).encode())
    return (signing_input + b"." + _b64(sign(signing_input))).decode()


async def test_every_bad_token_gets_401_invalid_token_and_never_reaches_the_backend(
    oauth: OAuthSetup,
) -> None:
    with running_tap(oauth.backend.url.removesuffix("/mcp")) as tap:
        proxy = oauth.proxy(config={"remote_url": tap.url})
        async with aiohttp.ClientSession() as http:
            for what, token in _forgeries(oauth).items():
                async with http.post(proxy.url, json=INIT, headers=bearer(token)) as response:
                    assert response.status == 401, what
                    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"], what
                    body = await response.text()
                assert token not in body, what
            # The same request with a real token does reach it: the tap is in the path.
            async with http.post(proxy.url, json=INIT, headers=bearer(await oauth.token())):
                pass
    assert [message["method"] for message, _ in tap.seen] == ["initialize"]
    assert all(token not in proxy.output() for token in _forgeries(oauth).values())


async def test_a_flood_of_unknown_key_ids_costs_at_most_one_key_fetch(oauth: OAuthSetup) -> None:
    proxy = oauth.proxy()
    fetches = lambda: proxy_metric_sum(proxy, "proxyrunner_idp_requests_total", 'kind="jwks"')  # noqa: E731
    await oauth_ready(proxy)
    before = await fetches()
    tokens = [oauth.forge(key=generate_key("RS256")) for _ in range(40)]
    async with aiohttp.ClientSession() as http:

        async def one(token: str) -> int:
            async with http.post(proxy.url, json=INIT, headers=bearer(token)) as response:
                return response.status

        statuses = await asyncio.gather(*(one(t) for t in tokens))
    assert set(statuses) == {401}
    assert await fetches() - before <= 1


async def test_scopes_short_of_the_required_ones_get_403_insufficient_scope(
    oauth: OAuthSetup,
) -> None:
    proxy = oauth.proxy(required_scopes=["mcp:tools"])
    token = await oauth.token(scope="mcp:read")
    async with (
        aiohttp.ClientSession() as http,
        http.post(proxy.url, json=INIT, headers=bearer(token)) as response,
    ):
        assert response.status == 403
        challenge = response.headers["WWW-Authenticate"]
    assert 'error="insufficient_scope"' in challenge
    assert 'scope="mcp:tools"' in challenge


# --------------------------------------------------------------------- keys over time


async def test_a_key_rotation_at_the_idp_is_followed_without_restarting_the_proxy(
    oauth: OAuthSetup,
) -> None:
    proxy = oauth.proxy()
    assert "authorization" not in await call_headers_tool(proxy.url, await oauth.token())
    old_kid = oauth.idp.current_kid()
    new_kid = await oauth.idp.rotate_keys(keep_old=False)
    assert new_kid != old_kid
    token = await oauth.token()
    # An unknown kid refreshes the keys at most once per min_refresh_interval (10 s, the
    # flood bound), so a token of the new key is accepted within that bound.
    deadline = time.monotonic() + 15
    async with aiohttp.ClientSession() as http:
        while True:
            async with http.post(proxy.url, json=INIT, headers=bearer(token)) as response:
                if response.status == 200:
                    break
                assert response.status == 401
            assert time.monotonic() < deadline, "the rotated key was never picked up"
            await asyncio.sleep(0.5)
    assert "authorization" not in await call_headers_tool(proxy.url, token)


async def test_with_the_idp_down_cached_keys_keep_working_and_unknown_keys_fail_closed(
    oauth: OAuthSetup,
) -> None:
    proxy = oauth.proxy()
    token = await oauth.token()
    await call_headers_tool(proxy.url, token)  # keys cached
    await oauth.idp.stop_temporarily()
    assert "authorization" not in await call_headers_tool(proxy.url, token)
    stranger = oauth.forge(key=generate_key("RS256"))
    async with aiohttp.ClientSession() as http:
        async with http.post(proxy.url, json=INIT, headers=bearer(stranger)) as response:
            assert response.status == 401
        async with http.get(f"{proxy.base}/readyz") as response:
            assert response.status == 200  # degraded, not down: cached keys still serve
            ready = await response.json()
    assert "identity_provider" in ready, ready
    assert proxy.alive()
    await oauth.idp.start()


# --------------------------------------------------------------------- sessions


async def test_a_session_is_refused_to_another_principal_on_every_replica(
    start_idp: StartIdp,
    start_backend: StartBackend,
    start_proxy: StartProxy,
    redis_server: RedisServer,
) -> None:
    from tests.identity_provider import Client as IdpClient

    port = free_port()
    resource = f"http://127.0.0.1:{port}/mcp"
    idp = await start_idp(
        resources={resource: Resource()},
        clients=(IdpClient(CLIENT, "proxy-client-secret"), IdpClient("mallory", "mallory-secret")),
    )
    setup = OAuthSetup(idp, start_backend("alpha"), start_proxy, resource, port)
    redis = {"session_redis": {"address": redis_server.address, "key_prefix": "authn"}}
    env = {"THV_SESSION_REDIS_PASSWORD": redis_server.password}
    first = setup.proxy(config=redis, env=env)
    second = setup.proxy(port=free_port(), config=redis, env=env)
    alice = await setup.token()
    mallory = await setup.token(client="mallory")
    async with aiohttp.ClientSession() as http:
        async with http.post(first.url, json=INIT, headers=bearer(alice)) as response:
            assert response.status == 200
            session = response.headers["Mcp-Session-Id"]
        for proxy in (first, second):
            headers = {**bearer(mallory), "Mcp-Session-Id": session}
            async with http.post(proxy.url, json=tools_call(1), headers=headers) as response:
                assert response.status == 404, proxy.url
                assert (await response.json())["error"]["code"] == -32001
            # Alice herself is served by either replica.
            headers = {**bearer(alice), "Mcp-Session-Id": session}
            async with http.post(
                proxy.url, json=tools_call(2, text="hi"), headers=headers
            ) as response:
                assert response.status == 200, proxy.url
    for proxy in (first, second):
        assert session not in proxy.output()


# --------------------------------------------------------------------- the SDK's OAuth


async def test_the_sdk_oauth_client_starts_from_nothing_but_the_proxy_url(
    oauth: OAuthSetup,
) -> None:
    from mcp.client.auth.extensions.client_credentials import ClientCredentialsOAuthProvider

    proxy = oauth.proxy(scopes=["mcp:tools", "mcp:read"])
    storage = MemoryTokens()
    provider = ClientCredentialsOAuthProvider(
        server_url=proxy.url,
        storage=storage,
        client_id=CLIENT,
        client_secret="proxy-client-secret",
        scope=SCOPE,
        # The credentials' own authorization server: the flow must discover that the
        # proxy's metadata leads there, or stop.
        issuer=oauth.idp.issuer,
    )
    http = create_mcp_http_client(auth=provider)
    async with (
        http,
        Client(streamable_http_client(proxy.url, http_client=http), mode="legacy") as client,
    ):
        result = await client.call_tool("echo", {"text": "through OAuth"})
    assert tool_text(result) == "through OAuth"
    assert storage.tokens is not None


# --------------------------------------------------------------------- helpers


async def oauth_ready(proxy: Proxy) -> None:
    async with aiohttp.ClientSession() as http, http.get(f"{proxy.base}/readyz") as response:
        assert response.status == 200, await response.text()


async def test_backend_auth_sends_its_own_credential_instead_of_the_client_token(
    oauth: OAuthSetup,
) -> None:
    proxy = oauth.proxy(
        config={"backend_auth": {"header": "X-Backend-Key", "value_env": "BACKEND_KEY"}},
        env={"BACKEND_KEY": "backend-credential"},
    )
    token = await oauth.token()
    received = await call_headers_tool(proxy.url, token)
    assert received["x-backend-key"] == "backend-credential"
    assert "authorization" not in received
    assert "backend-credential" not in proxy.output()


def test_a_client_secret_in_the_runconfig_is_refused_without_echoing_it(
    start_proxy: StartProxy,
) -> None:
    proxy = start_proxy(
        {
            "name": "demo",
            "remote_url": "http://127.0.0.1:9/mcp",
            "oidc_config": {
                "Issuer": "http://127.0.0.1:9",
                "ResourceURL": "http://127.0.0.1:9/mcp",
                "ClientSecret": "hunter2-secret",
            },
        },
        wait=False,
    )
    output = proxy.exits_with(2)
    assert "oidc_config.ClientSecret" in output
    assert "THV_OIDC_CLIENT_SECRET" in output
    assert "hunter2-secret" not in output


def test_without_oidc_config_the_startup_log_says_the_endpoint_is_unauthenticated(
    start_backend: StartBackend, start_proxy: StartProxy
) -> None:
    proxy = start_proxy({"name": "demo", "remote_url": start_backend("alpha").url})
    assert "the MCP endpoint is unauthenticated" in proxy.output()


async def test_backend_auth_applies_on_an_unauthenticated_endpoint_too(
    start_backend: StartBackend, start_proxy: StartProxy
) -> None:
    proxy = start_proxy(
        {
            "name": "demo",
            "remote_url": start_backend("alpha").url,
            "backend_auth": {"header": "X-Backend-Key", "value_env": "BACKEND_KEY"},
        },
        env={"BACKEND_KEY": "backend-credential"},
    )
    # A client cannot choose the backend's credential by sending the header itself.
    http = create_mcp_http_client(headers={"X-Backend-Key": "client-chosen"})
    async with (
        http,
        Client(streamable_http_client(proxy.url, http_client=http), mode="legacy") as client,
    ):
        received = json.loads(tool_text(await client.call_tool("headers", {})))
    assert received["x-backend-key"] == "backend-credential"
    assert "backend-credential" not in proxy.output()
