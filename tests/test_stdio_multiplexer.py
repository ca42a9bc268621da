"""The stdio multiplexer on its own: one server conversation shared by many sessions,
driven by feeding it the server's lines and reading what it would write (no sockets, no
processes)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import structlog

from proxyrunner.backends.stdio.multiplexer import Multiplexer, Outcome, Session
from proxyrunner.mcp import jsonrpc

LOG = structlog.get_logger().bind(test="multiplexer")
INIT = {
    "jsonrpc": "2.0",
    "id": 0,
    "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t"}},
}


class Server:
    """Stands in for the stdio server: reads what the multiplexer writes, answers lines."""

    def __init__(self, mux: Multiplexer) -> None:
        self.mux = mux
        self.queue = mux.attach()

    def written(self) -> list[dict[str, Any]]:
        lines = []
        while not self.queue.empty():
            lines.append(json.loads(self.queue.get_nowait()))
        return lines

    def say(self, message: object) -> None:
        self.mux.from_server(json.dumps(message).encode())


def call(request_id: Any, tool: str = "echo", **meta: Any) -> dict[str, Any]:
    params: dict[str, Any] = {"name": tool, "arguments": {}}
    if meta:
        params["_meta"] = meta
    return {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}


def result(request_id: Any, text: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "result": {"content": [{"text": text}]}}


@pytest.fixture
def mux() -> Multiplexer:
    return Multiplexer("test", LOG, init_timeout=1.0)


async def handshake(mux: Multiplexer, server: Server) -> None:
    started = asyncio.ensure_future(mux.handshake(INIT))
    await asyncio.sleep(0)
    (sent,) = server.written()
    server.say({"jsonrpc": "2.0", "id": sent["id"], "result": {"protocolVersion": "2025-06-18"}})
    assert (await started).ok
    assert server.written() == [{"jsonrpc": "2.0", "method": "notifications/initialized"}]


async def test_two_sessions_using_the_same_id_each_get_their_own_answer(mux: Multiplexer) -> None:
    server = Server(mux)
    a, b = mux.new_session(), mux.new_session()
    first, second = mux.open(a, call(1), "json"), mux.open(b, call(1), "json")
    sent = server.written()
    assert len({m["id"] for m in sent}) == 2
    assert all(isinstance(m["id"], str) and m["id"] != 1 for m in sent)
    # The server answers out of order.
    server.say(result(sent[1]["id"], "for b"))
    server.say(result(sent[0]["id"], "for a"))
    assert first.done.result() == result(1, "for a")
    assert second.done.result() == result(1, "for b")
    assert mux.inflight == 0


async def test_progress_reaches_the_request_that_asked_with_its_own_token(
    mux: Multiplexer,
) -> None:
    server = Server(mux)
    session = mux.new_session()
    pending = mux.open(session, call(5, progressToken="mine"), "stream")
    (sent,) = server.written()
    token = sent["params"]["_meta"]["progressToken"]
    assert token != "mine"
    server.say(
        {
            "jsonrpc": "2.0",
            "method": "notifications/progress",
            "params": {"progressToken": token, "progress": 1},
        }
    )
    server.say(result(sent["id"], "done"))
    progress, answer = pending.related.pending()
    assert progress["params"]["progressToken"] == "mine"
    assert answer == result(5, "done")
    assert pending.related.closed


async def test_one_handshake_serves_every_session(mux: Multiplexer) -> None:
    server = Server(mux)
    await handshake(mux, server)
    later = await mux.handshake({**INIT, "id": "second"})
    assert later.ok
    assert later.answer["id"] == "second"
    assert later.answer["result"] == {"protocolVersion": "2025-06-18"}
    assert server.written() == []  # answered from the kept result
    # A client's own notifications/initialized is not repeated to the server.
    mux.from_client(mux.new_session(), {"jsonrpc": "2.0", "method": "notifications/initialized"})
    assert server.written() == []


async def test_a_handshake_the_server_never_answers_times_out_and_is_cancelled() -> None:
    mux = Multiplexer("slow", LOG, init_timeout=0.05)
    server = Server(mux)
    outcome = await mux.handshake(INIT)
    assert outcome.outcome is Outcome.TIMED_OUT
    assert not outcome.ok
    assert outcome.answer["error"]["code"] == jsonrpc.BACKEND_TIMEOUT
    sent, cancelled = server.written()
    assert cancelled["method"] == "notifications/cancelled"
    assert cancelled["params"]["requestId"] == sent["id"]
    assert mux.inflight == 0


async def test_a_new_server_lifetime_needs_a_new_handshake(mux: Multiplexer) -> None:
    await handshake(mux, Server(mux))
    mux.detach("the stdio server exited")
    restarted = Server(mux)
    started = asyncio.ensure_future(mux.handshake(INIT))
    await asyncio.sleep(0)
    (sent,) = restarted.written()
    assert sent["method"] == "initialize"
    restarted.say({"jsonrpc": "2.0", "id": sent["id"], "error": {"code": -1, "message": "no"}})
    refused = await started
    assert refused.outcome is Outcome.ANSWERED
    assert not refused.ok


async def test_the_server_going_away_fails_requests_in_flight_and_forgets_sessions(
    mux: Multiplexer,
) -> None:
    Server(mux)
    session = mux.new_session()
    pending = mux.open(session, call(1), "json")
    mux.detach("the stdio server exited")
    assert pending.outcome is Outcome.SERVER_GONE
    assert pending.done.result()["error"]["code"] == jsonrpc.BACKEND_UNAVAILABLE
    assert pending.done.result()["id"] == 1
    assert mux.find(session.id) is None
    assert session.outbox.closed
    assert not mux.attached


async def test_a_request_while_no_server_runs_fails_at_once(mux: Multiplexer) -> None:
    pending = mux.open(Session("", 0), call(1), "json")
    assert pending.outcome is Outcome.SERVER_GONE


async def test_a_client_cancel_answers_the_client_and_tells_the_server(mux: Multiplexer) -> None:
    server = Server(mux)
    session = mux.new_session()
    pending = mux.open(session, call(9), "json")
    (sent,) = server.written()
    cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 9}}
    mux.from_client(session, cancel)
    assert pending.outcome is Outcome.CANCELLED
    assert pending.done.result()["error"]["code"] == jsonrpc.REQUEST_CANCELLED
    (told,) = server.written()
    assert told["params"]["requestId"] == sent["id"]
    # The server's late answer for it goes nowhere.
    server.say(result(sent["id"], "too late"))
    assert pending.done.result()["error"]["code"] == jsonrpc.REQUEST_CANCELLED


async def test_a_session_cannot_cancel_another_sessions_request(mux: Multiplexer) -> None:
    server = Server(mux)
    owner, other = mux.new_session(), mux.new_session()
    pending = mux.open(owner, call(9), "json")
    server.written()
    cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 9}}
    mux.from_client(other, cancel)
    assert not pending.done.done()
    assert server.written() == []


async def test_a_server_ping_is_answered_without_a_client(mux: Multiplexer) -> None:
    server = Server(mux)
    server.say({"jsonrpc": "2.0", "id": 77, "method": "ping"})
    assert server.written() == [{"jsonrpc": "2.0", "id": 77, "result": {}}]


async def test_a_server_request_goes_to_the_stream_of_the_newest_request(
    mux: Multiplexer,
) -> None:
    server = Server(mux)
    session = mux.new_session()
    pending = mux.open(session, call(1, tool="sleep"), "stream")
    server.written()
    ask = {"jsonrpc": "2.0", "id": 3, "method": "sampling/createMessage", "params": {}}
    server.say(ask)
    assert pending.related.pending() == [ask]
    # The client's answer goes back to the server as it is.
    mux.from_client(session, {"jsonrpc": "2.0", "id": 3, "result": {"content": {}}})
    assert server.written() == [{"jsonrpc": "2.0", "id": 3, "result": {"content": {}}}]


async def test_a_server_request_with_nothing_in_flight_goes_to_the_latest_session(
    mux: Multiplexer,
) -> None:
    server = Server(mux)
    older, newer = mux.new_session(), mux.new_session()
    ask = {"jsonrpc": "2.0", "id": 4, "method": "roots/list"}
    server.say(ask)
    assert newer.outbox.pending() == [ask]
    assert older.outbox.pending() == []


async def test_a_server_request_with_no_client_at_all_gets_an_error(mux: Multiplexer) -> None:
    server = Server(mux)
    server.say({"jsonrpc": "2.0", "id": 4, "method": "roots/list"})
    (answer,) = server.written()
    assert answer["id"] == 4
    assert answer["error"]["code"] == jsonrpc.INTERNAL_ERROR


async def test_notifications_that_answer_nothing_reach_every_session(mux: Multiplexer) -> None:
    server = Server(mux)
    sessions = [mux.new_session() for _ in range(3)]
    changed = {"jsonrpc": "2.0", "method": "notifications/tools/list_changed"}
    server.say(changed)
    assert [s.outbox.pending() for s in sessions] == [[changed]] * 3


async def test_lines_that_are_not_json_rpc_are_skipped(mux: Multiplexer) -> None:
    server = Server(mux)
    session = mux.new_session()
    pending = mux.open(session, call(1), "json")
    (sent,) = server.written()
    for junk in (b"server starting...", b"[" * 100_000 + b"]" * 100_000, b"42", b'"text"'):
        mux.from_server(junk)
    mux.from_server(json.dumps([result(sent["id"], "batched")]).encode())
    assert pending.done.result() == result(1, "batched")


async def test_answers_for_another_replicas_requests_are_ignored(mux: Multiplexer) -> None:
    server = Server(mux)
    session = mux.new_session()
    server.say(result("pr00000000-1", "not ours"))
    assert session.outbox.pending() == []


async def test_idle_sessions_make_room_and_sessions_with_a_stream_stay() -> None:
    mux = Multiplexer("idle", LOG, session_idle=0.0, max_sessions=100)
    Server(mux)
    idle = mux.new_session()
    listening = mux.new_session()
    listening.streams = 1
    mux.new_session()
    assert mux.find(idle.id) is None
    assert mux.find(listening.id) is listening


async def test_the_oldest_session_makes_room_at_the_session_limit() -> None:
    mux = Multiplexer("full", LOG, max_sessions=2)
    Server(mux)
    first, second = mux.new_session(), mux.new_session()
    third = mux.new_session()
    assert mux.find(first.id) is None
    assert mux.find(second.id) is second
    assert mux.find(third.id) is third


async def test_dropping_a_session_cancels_its_requests(mux: Multiplexer) -> None:
    server = Server(mux)
    session = mux.new_session()
    pending = mux.open(session, call(1), "json")
    server.written()
    mux.drop(session)
    assert pending.outcome is Outcome.CANCELLED
    assert [m["method"] for m in server.written()] == ["notifications/cancelled"]
    assert mux.find(session.id) is None
