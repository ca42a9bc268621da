"""The attach channel (kube/attach.py): a stdio server in a pod reached over the
``v4.channel.k8s.io`` WebSocket protocol. The test API server has no kubelet, so these run
against tests/fake_kubelet.py: the channel protocol in front of a real stdio MCP server."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import structlog
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException
from mcp import Client

from proxyrunner.backends.stdio import StdioBridge
from proxyrunner.kube.attach import LineAssembler, describe_status, open_attach, stdin_frame
from tests.fake_kubelet import TOKEN, FakeKubelet, fake_kubelet
from tests.helpers import MCP_HEADERS, raw_initialize, tool_text, whoami
from tests.procs import eventually

LOG = structlog.get_logger().bind(test="attach")


def api_for(kubelet: FakeKubelet, token: str = TOKEN) -> client.ApiClient:
    configuration = client.Configuration(host=kubelet.base)
    configuration.api_key = {"BearerToken": token}
    configuration.api_key_prefix = {"BearerToken": "Bearer"}
    return client.ApiClient(configuration)


@contextlib.asynccontextmanager
async def attached_bridge(
    kubelet: FakeKubelet,
) -> AsyncIterator[tuple[StdioBridge, asyncio.Task[None]]]:
    """A bridge serving the pod's stdio server; yields it once attached."""
    bridge = StdioBridge("pod-0", LOG)
    await bridge.start()
    async with api_for(kubelet) as api:
        channel = await open_attach(api, "team", "pod-0", LOG)
        serving = asyncio.get_running_loop().create_task(bridge.serve(channel))
        try:
            await bridge.wait_attached()
            yield bridge, serving
        finally:
            serving.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await serving
            await bridge.close()


def url(bridge: StdioBridge) -> str:
    return f"http://127.0.0.1:{bridge.port}/mcp"


# ------------------------------------------------------------------ the frame protocol


def test_stdout_frames_cut_anywhere_become_whole_lines() -> None:
    lines = LineAssembler()
    assert lines.feed(b'{"a"') == []
    assert lines.feed(b':1}\n{"b":2}\r\n{"c"') == [b'{"a":1}', b'{"b":2}']
    assert lines.feed(b":3}\n") == [b'{"c":3}']


def test_a_line_over_the_limit_is_dropped_and_the_next_one_survives(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("proxyrunner.kube.attach.MAX_LINE", 10)
    lines = LineAssembler()
    assert lines.feed(b"x" * 8) == []
    assert lines.feed(b"x" * 8) == []  # now over the limit: dropped
    assert lines.feed(b"xx\nok\n") == [b"ok"]
    assert lines.oversized == 1


def test_stdin_frames_carry_channel_zero_and_one_line() -> None:
    assert stdin_frame(b'{"x":1}') == b'\x00{"x":1}\n'


def test_the_error_channel_status_is_described_by_its_message() -> None:
    assert describe_status(b'{"kind":"Status","message":"container exited"}') == "container exited"
    assert describe_status(b"not json") == "not json"


# ------------------------------------------------------------------ against a stdio server


async def test_sdk_client_reaches_a_stdio_server_in_a_pod_through_attach() -> None:
    async with fake_kubelet() as kubelet, attached_bridge(kubelet) as (bridge, _):
        async with Client(url(bridge), mode="legacy") as mcp_client:
            assert (
                tool_text(await mcp_client.call_tool("echo", {"text": "via attach"}))
                == "via attach"
            )
            assert (await whoami(mcp_client))["id"] == "pod-0"
        assert kubelet.attaches[0] == {
            "container": "mcp",
            "stdin": "true",
            "stdout": "true",
            "stderr": "true",
            "tty": "false",
        }


async def test_two_replicas_attached_to_one_pod_never_get_each_others_answers() -> None:
    """Every attached stream sees all of stdout. Two bridges (two proxy replicas) send the
    same JSON-RPC id at the same time; each must get its own answer."""
    async with (
        fake_kubelet() as kubelet,
        attached_bridge(kubelet) as (first, _),
        attached_bridge(kubelet) as (second, _),
    ):
        async with aiohttp.ClientSession() as http:
            sessions = [await raw_initialize(http, url(b)) for b in (first, second)]

            async def echo(bridge: StdioBridge, session: str, text: str) -> Any:
                message = {
                    "jsonrpc": "2.0",
                    "id": 1,
                    "method": "tools/call",
                    "params": {"name": "echo", "arguments": {"text": text}},
                }
                headers = {**MCP_HEADERS, "Accept": "application/json", "Mcp-Session-Id": session}
                async with http.post(url(bridge), json=message, headers=headers) as response:
                    assert response.status == 200
                    return await response.json()

            for _ in range(10):
                answers = await asyncio.gather(
                    echo(first, sessions[0], "first"), echo(second, sessions[1], "second")
                )
                texts = [a["result"]["content"][0]["text"] for a in answers]
                assert texts == ["first", "second"]
        assert len(kubelet.attaches) == 2


async def test_a_container_exit_fails_the_call_in_flight_with_502_and_ends_the_stream() -> None:
    async with (
        fake_kubelet() as kubelet,
        attached_bridge(kubelet) as (bridge, serving),
        aiohttp.ClientSession() as http,
    ):
        session = await raw_initialize(http, url(bridge))
        message = {
            "jsonrpc": "2.0",
            "id": 5,
            "method": "tools/call",
            "params": {"name": "sleep", "arguments": {"seconds": 30}},
        }
        headers = {**MCP_HEADERS, "Accept": "application/json", "Mcp-Session-Id": session}

        async def long_call() -> tuple[int, Any]:
            async with http.post(url(bridge), json=message, headers=headers) as response:
                return response.status, await response.json()

        call = asyncio.get_running_loop().create_task(long_call())
        await eventually(lambda: bridge.inflight == 1, 10, "the call to reach the server")
        kubelet.kill_container()
        status, answer = await asyncio.wait_for(call, 10)
        assert status == 502
        assert answer["id"] == 5
        assert "exited" in answer["error"]["message"]
        await asyncio.wait_for(serving, 10)  # serve() returns once the stream ends
        assert not bridge.attached
        # The session belonged to the server that is gone.
        async with http.post(url(bridge), json=message, headers=headers) as response:
            assert response.status == 502


async def test_an_identity_the_kubelet_refuses_cannot_attach() -> None:
    async with fake_kubelet() as kubelet, api_for(kubelet, token="wrong") as api:
        with pytest.raises((ApiException, aiohttp.ClientError)):
            await open_attach(api, "team", "pod-0", LOG)
