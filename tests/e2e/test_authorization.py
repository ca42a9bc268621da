"""Cedar authorization and the audit trail, wired from the RunConfig into a real
``proxyrunner run`` with ``oidc_config`` against a real authorization server (npm
oidc-provider), in front of the SDK-built demo backend, driven by the official MCP client.

Two principals come from the IdP's client_credentials grant: ``proxy-client`` (Cedar's
``Client::"proxy-client"``) and ``mallory``. A ``Tap`` between the proxy and the backend
records what reached the backend, so a refusal is shown never to have left the proxy.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError

from proxyrunner.principal import short_hash
from tests.conftest import StartBackend, StartProxy
from tests.helpers import MCP_HEADERS, Tap, raw_initialize, running_tap, tool_text, tools_call
from tests.identity_fixtures import CLIENT, SCOPE, OAuthSetup, StartIdp
from tests.identity_provider import Client as IdpClient
from tests.identity_provider import Resource
from tests.procs import Proxy, free_port

pytestmark = [pytest.mark.node, pytest.mark.timeout(90)]

MALLORY = "mallory"
POLICIES = [
    f'permit(principal == Client::"{CLIENT}", action == Action::"call_tool", '
    'resource == Tool::"echo");',
    'permit(principal, action == Action::"call_tool", resource == Tool::"whoami");',
    f'permit(principal == Client::"{CLIENT}", action == Action::"get_prompt", '
    'resource == Prompt::"greeting");',
    'permit(principal, action == Action::"read_resource", resource == Resource::"demo://readme");',
]
AUTHZ = {
    "version": "1.0",
    "type": "cedarv1",
    "cedar": {"policies": POLICIES, "entities_json": "[]"},
}
REPLICA = "demo-0"


class Guarded:
    """The IdP, the tapped backend, and a proxy with authz_config and audit_config."""

    def __init__(self, oauth: OAuthSetup, tap: Tap, audit_log: Path) -> None:
        self.oauth = oauth
        self.tap = tap
        self.audit_log = audit_log

    def proxy(self, **audit: Any) -> Proxy:
        config = {
            "remote_url": self.tap.url,
            "authz_config": AUTHZ,
            "audit_config": {"component": "demo-mcp", "logFile": str(self.audit_log), **audit},
        }
        return self.oauth.proxy(env={"HOSTNAME": REPLICA}, config=config)

    async def token(self, client: str = CLIENT) -> str:
        return await self.oauth.idp.token(client, resource=self.oauth.resource, scope=SCOPE)

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.audit_log.read_text().splitlines()]


@pytest.fixture(params=["sse", "json"])
def tapped_backend(
    request: pytest.FixtureRequest, start_backend: StartBackend
) -> Iterator[tuple[Tap, str]]:
    """The demo backend answering with event streams, or with JSON bodies, behind a tap."""
    env = {"DEMO_JSON_RESPONSE": "1"} if request.param == "json" else {}
    backend = start_backend("alpha", **env)
    with running_tap(backend.url.removesuffix("/mcp")) as tap:
        yield tap, request.param


@pytest.fixture
async def guarded(
    start_idp: StartIdp,
    start_backend: StartBackend,
    start_proxy: StartProxy,
    tapped_backend: tuple[Tap, str],
    tmp_path: Path,
) -> Guarded:
    port = free_port()
    resource = f"http://127.0.0.1:{port}/mcp"
    idp = await start_idp(
        resources={resource: Resource()},
        clients=(IdpClient(CLIENT, "proxy-client-secret"), IdpClient(MALLORY, "mallory-secret")),
    )
    backend = start_backend("unused")  # OAuthSetup's default target; the tap replaces it
    oauth = OAuthSetup(idp, backend, start_proxy, resource, port)
    return Guarded(oauth, tapped_backend[0], tmp_path / "audit.log")


@contextlib.asynccontextmanager
async def sdk_client(url: str, token: str) -> AsyncIterator[Client]:
    http = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
    async with http, Client(streamable_http_client(url, http_client=http), mode="legacy") as client:
        yield client


async def refusal(call: Any) -> MCPError:
    with pytest.raises(MCPError) as caught:
        await call
    return caught.value


# ------------------------------------------------------------------- enforcement


async def test_a_permitted_tool_call_reaches_the_backend_and_a_denied_one_never_does(
    guarded: Guarded,
) -> None:
    proxy = guarded.proxy()
    async with sdk_client(proxy.url, await guarded.token()) as client:
        assert tool_text(await client.call_tool("echo", {"text": "hi"})) == "hi"
        denied = await refusal(client.call_tool("add", {"a": 1, "b": 2}))
    assert denied.error.code == 403
    assert "add" in denied.error.message
    async with sdk_client(proxy.url, await guarded.token(MALLORY)) as client:
        assert "alpha" in tool_text(await client.call_tool("whoami", {}))
        assert (await refusal(client.call_tool("echo", {"text": "hi"}))).error.code == 403
    assert guarded.tap.calls("tools/call") == ["echo", "whoami"]


async def test_prompts_and_resources_are_decided_per_principal_before_the_backend(
    guarded: Guarded,
) -> None:
    proxy = guarded.proxy()
    async with sdk_client(proxy.url, await guarded.token()) as client:
        prompt = await client.get_prompt("greeting", {"name": "Ada"})
        assert "Ada" in json.dumps(prompt.model_dump(mode="json"))
        readme = await client.read_resource("demo://readme")
        assert "demo MCP server" in json.dumps(readme.model_dump(mode="json"))
        assert (await refusal(client.read_resource("demo://secret"))).error.code == 403
    async with sdk_client(proxy.url, await guarded.token(MALLORY)) as client:
        assert (await refusal(client.get_prompt("greeting", {}))).error.code == 403
    assert guarded.tap.calls("prompts/get") == ["greeting"]
    assert guarded.tap.calls("resources/read") == ["demo://readme"]


async def test_list_answers_hold_only_what_the_principal_may_use_as_json_and_as_sse(
    guarded: Guarded, tapped_backend: tuple[Tap, str]
) -> None:
    proxy = guarded.proxy()
    async with sdk_client(proxy.url, await guarded.token()) as client:
        assert {tool.name for tool in (await client.list_tools()).tools} == {"echo", "whoami"}
        assert [str(r.uri) for r in (await client.list_resources()).resources] == ["demo://readme"]
        assert [p.name for p in (await client.list_prompts()).prompts] == ["greeting"]
    async with sdk_client(proxy.url, await guarded.token(MALLORY)) as client:
        assert [tool.name for tool in (await client.list_tools()).tools] == ["whoami"]
        assert (await client.list_prompts()).prompts == []
    # The backend listed everything, in the form the test chose: the proxy filtered it.
    kind = "application/json" if tapped_backend[1] == "json" else "text/event-stream"
    assert guarded.tap.answered_as("tools/list") == {kind}


# ------------------------------------------------------------------------- audit


async def test_every_operation_is_one_audit_event_with_who_what_and_how_it_ended(
    guarded: Guarded,
) -> None:
    proxy = guarded.proxy()
    token = await guarded.token()
    async with sdk_client(proxy.url, token) as client:
        await client.call_tool("echo", {"text": "audited"})
        await refusal(client.call_tool("add", {"a": 1, "b": 2}))
    events = guarded.events()
    calls = {e["target"]["name"]: e for e in events if e["type"] == "mcp_tool_call"}
    allowed, denied = calls["echo"], calls["add"]
    assert (allowed["outcome"], allowed["metadata"]["extra"]["http_status"]) == ("success", 200)
    assert (denied["outcome"], denied["metadata"]["extra"]["http_status"]) == ("denied", 403)
    for event in (allowed, denied):
        assert event["component"] == "demo-mcp"
        assert event["subjects"]["user"] == CLIENT
        assert event["subjects"]["issuer"] == guarded.oauth.idp.issuer
        assert event["target"]["method"] == "tools/call"
        assert event["metadata"]["extra"]["replica"] == REPLICA
        assert isinstance(event["metadata"]["extra"]["duration_ms"], int)
        assert len(event["source"]["extra"]["session_id"]) == 12
        assert "data" not in event  # no bodies unless asked
    assert allowed["source"]["extra"]["session_id"] == denied["source"]["extra"]["session_id"]
    text = guarded.audit_log.read_text()
    assert "audited" not in text
    assert token not in text


async def test_a_request_refused_for_its_token_is_audited_with_its_session_hash(
    guarded: Guarded,
) -> None:
    proxy = guarded.proxy()
    token = await guarded.token()
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:
        session = await raw_initialize(http, proxy.url)
    async with aiohttp.ClientSession() as http:
        headers = {**MCP_HEADERS, "Mcp-Session-Id": session}  # the session, not its token
        async with http.post(proxy.url, json=tools_call(1, "echo", text="x"), headers=headers) as r:
            assert r.status == 401
    refused = [e for e in guarded.events() if e["metadata"]["extra"]["http_status"] == 401]
    assert len(refused) == 1
    event = refused[0]
    assert (event["outcome"], event["type"]) == ("denied", "mcp_tool_call")
    assert event["subjects"] == {"user": "anonymous"}
    assert event["source"]["extra"]["session_id"] == short_hash(session)
    assert session not in guarded.audit_log.read_text()


async def test_bodies_are_recorded_only_when_asked_and_cut_to_max_data_size(
    guarded: Guarded,
) -> None:
    proxy = guarded.proxy(includeRequestData=True, maxDataSize=200)
    async with sdk_client(proxy.url, await guarded.token()) as client:
        await client.call_tool("echo", {"text": "short"})
        await client.call_tool("echo", {"text": "x" * 1000})
    calls = [e for e in guarded.events() if e["type"] == "mcp_tool_call"]
    short, long = calls
    assert short["data"]["request"]["params"]["arguments"] == {"text": "short"}
    assert isinstance(long["data"]["request"], str)
    assert len(long["data"]["request"].encode()) <= 200
    assert "response" not in short["data"]


# ------------------------------------------------------------------------ config


async def test_a_bad_policy_stops_the_start_with_exit_2_naming_it(
    start_proxy: StartProxy, start_backend: StartBackend, tmp_path: Path
) -> None:
    backend = start_backend("alpha")
    bad = {**AUTHZ, "cedar": {"policies": [POLICIES[0], "permit(principal, action, resource"]}}
    config = {"name": "demo", "remote_url": backend.url}
    inline = start_proxy({**config, "authz_config": bad}, wait=False)
    assert "authz_config.cedar.policies[1] (policy1" in inline.exits_with(2)
    path = tmp_path / "authz.json"
    path.write_text(json.dumps(bad))
    from_file = start_proxy({**config, "authz_config_path": str(path)}, wait=False)
    assert f"{path}: authz_config.cedar.policies[1]" in from_file.exits_with(2)


async def test_authorization_without_oidc_config_is_the_anonymous_principal(
    start_proxy: StartProxy, start_backend: StartBackend
) -> None:
    anonymous = {
        **AUTHZ,
        "cedar": {"policies": ['permit(principal, action, resource == Tool::"echo");']},
    }
    backend = start_backend("alpha")
    proxy = start_proxy({"name": "demo", "remote_url": backend.url, "authz_config": anonymous})
    async with aiohttp.ClientSession() as http:
        session = await raw_initialize(http, proxy.url)
        headers = {**MCP_HEADERS, "Mcp-Session-Id": session}
        for message, status in (
            (tools_call(1, "echo", text="x"), 200),
            (tools_call(2, "add", a=1, b=2), 403),
        ):
            async with http.post(proxy.url, json=message, headers=headers) as response:
                assert response.status == status, message
    assert "every request is the anonymous principal" in proxy.output()
