"""Sessions sharing one stdio server cannot see or steer each other's server requests:
the issue's hostile-client findings, against a real proxy in front of the SDK-built demo
served over stdio, with the official SDK client's elicitation and sampling callbacks."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from mcp import Client, types

from tests.conftest import StartProxy
from tests.helpers import DEMO_STDIO, MCP_HEADERS, raw_initialize, tool_text


class Asked:
    """One client's elicitation and sampling callbacks: records what it was asked (and
    under which id) and answers with its own name."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.questions: list[str] = []
        self.ids: list[Any] = []

    async def elicit(self, context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        self.questions.append(params.message)
        self.ids.append(context.request_id)
        return types.ElicitResult(action="accept", content={"answer": f"{self.name} says yes"})

    async def sample(
        self, context: Any, params: types.CreateMessageRequestParams
    ) -> types.CreateMessageResult:
        self.questions.append(params.messages[0].content.text)  # type: ignore[union-attr]
        self.ids.append(context.request_id)
        return types.CreateMessageResult(
            role="assistant",
            content=types.TextContent(type="text", text=f"{self.name} samples"),
            model="test-model",
        )

    def client(self, url: str) -> Client:
        return Client(
            url, mode="legacy", elicitation_callback=self.elicit, sampling_callback=self.sample
        )


def answer(request_id: Any, text: str) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "result": {"action": "accept", "content": {"answer": text}},
    }


async def test_a_forged_sessionless_answer_is_refused_and_the_asker_gets_its_own(
    start_proxy: StartProxy,
) -> None:
    proxy = start_proxy(DEMO_STDIO)
    refusals: list[tuple[int, Any]] = []

    async with aiohttp.ClientSession() as http:

        async def forge(request_id: Any) -> None:
            async with http.post(
                proxy.url, json=answer(request_id, "forged"), headers=MCP_HEADERS
            ) as response:
                refusals.append((response.status, await response.json(content_type=None)))

        class Attacked(Asked):
            async def elicit(
                self, context: Any, params: types.ElicitRequestParams
            ) -> types.ElicitResult:
                # While A's call waits on the question, someone with no session answers
                # it: with the small ids a server mints, and with the real one.
                for guess in [*range(5), context.request_id]:
                    await forge(guess)
                return await super().elicit(context, params)

        a = Attacked("A")
        async with a.client(proxy.url) as client:
            result = await client.call_tool("ask", {"question": "shall we?"})
    assert tool_text(result) == "A says yes"
    assert a.questions == ["shall we?"]
    assert [status for status, _ in refusals] == [400] * 6
    assert all(body["error"]["code"] == -32600 for _, body in refusals)


async def test_an_answer_from_another_session_is_refused_and_never_forwarded(
    start_proxy: StartProxy,
) -> None:
    proxy = start_proxy(DEMO_STDIO)
    refusals: list[int] = []
    async with aiohttp.ClientSession() as http:

        class Attacked(Asked):
            async def elicit(
                self, context: Any, params: types.ElicitRequestParams
            ) -> types.ElicitResult:
                # Another session, knowing A's question id, answers it first.
                headers = {**MCP_HEADERS, "Mcp-Session-Id": mallory}
                body = answer(context.request_id, "forged")
                async with http.post(proxy.url, json=body, headers=headers) as response:
                    refusals.append(response.status)
                return await super().elicit(context, params)

        a = Attacked("A")
        async with a.client(proxy.url) as client:
            mallory = await raw_initialize(http, proxy.url)
            result = await client.call_tool("ask", {"question": "shall we?"})
    assert tool_text(result) == "A says yes"
    assert refusals == [400]


async def test_a_question_caused_by_a_reaches_only_a_while_b_has_the_newest_call(
    start_proxy: StartProxy,
) -> None:
    proxy = start_proxy(DEMO_STDIO)
    a, b = Asked("A"), Asked("B")
    async with a.client(proxy.url) as first, b.client(proxy.url) as second:
        await check_asked_by_its_caller_only(first, a, second, b, "ask")
    assert b.questions == []


async def test_two_sdk_sessions_each_see_and_answer_only_their_own_requests(
    start_proxy: StartProxy,
) -> None:
    proxy = start_proxy(DEMO_STDIO)
    a, b = Asked("A"), Asked("B")
    async with a.client(proxy.url) as first, b.client(proxy.url) as second:
        for tool in ("ask", "sample"):
            await check_asked_by_its_caller_only(first, a, second, b, tool)
            await check_asked_by_its_caller_only(second, b, first, a, tool)
    assert a.questions == ["A's ask", "A's sample"]
    assert b.questions == ["B's ask", "B's sample"]
    assert len(set(a.ids + b.ids)) == 4


async def check_asked_by_its_caller_only(
    caller: Client, asked: Asked, other: Client, bystander: Asked, tool: str
) -> None:
    """``caller`` calls a tool that asks back after a delay; once the server has the call
    (its first progress), ``other`` starts a longer call, so that ``other`` has the newest
    request in flight when the question comes. Only ``caller`` may see it."""
    started = asyncio.Event()

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        started.set()

    argument = "question" if tool == "ask" else "prompt"
    call = asyncio.ensure_future(
        caller.call_tool(
            tool, {argument: f"{asked.name}'s {tool}", "delay": 0.5}, progress_callback=on_progress
        )
    )
    await started.wait()
    busy = await other.call_tool("sleep", {"seconds": 1.5})
    assert tool_text(busy) == "slept 1.5s"
    expected = f"{asked.name} says yes" if tool == "ask" else f"{asked.name} samples"
    assert tool_text(await call) == expected
    assert f"{asked.name}'s {tool}" in asked.questions
    assert not any(q.startswith(f"{asked.name}'s") for q in bystander.questions)
