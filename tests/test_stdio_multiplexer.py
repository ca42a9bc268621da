"""The stdio multiplexer on its own: one server conversation shared by many sessions,
driven by feeding it the server's lines and reading what it would write (no sockets, no
processes)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import structlog

from proxyrunner.backends.stdio.conversation import Outcome, Session
from proxyrunner.backends.stdio.multiplexer import Multiplexer
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


def ask(server_id: Any = 3, method: str = "elicitation/create") -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": server_id, "method": method, "params": {"message": "?"}}


def answer(bridge_id: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": bridge_id, "result": {"action": "accept"}}


async def test_a_server_request_reaches_its_cause_under_a_minted_id_and_is_answered_back(
    mux: Multiplexer,
) -> None:
    server = Server(mux)
    session = mux.new_session()
    pending = mux.open(session, call(1, tool="ask"), "stream")
    server.written()
    server.say(ask(3))
    (delivered,) = pending.related.pending()
    assert delivered["method"] == "elicitation/create"
    assert isinstance(delivered["id"], str)
    assert len(delivered["id"]) > 20
    assert mux.refusal(session, answer(delivered["id"])) is None
    mux.from_client(session, answer(delivered["id"]))
    assert server.written() == [answer(3)]


async def test_answers_from_another_session_or_to_unknown_ids_are_refused_and_never_sent(
    mux: Multiplexer,
) -> None:
    server = Server(mux)
    a, b = mux.new_session(), mux.new_session()
    mux.open(a, call(1, tool="ask"), "json")
    server.written()
    server.say(ask(3))
    (delivered,) = a.outbox.pending()
    for who, forged in [(b, answer(delivered["id"])), (a, answer(3)), (a, answer("x"))]:
        assert mux.refusal(who, forged) is not None
        mux.from_client(who, forged)
    assert mux.refusal(mux.sessionless(), answer(delivered["id"])) is not None
    assert server.written() == []
    assert b.outbox.pending() == []


async def test_a_server_request_while_two_sessions_are_in_flight_waits_for_one_to_end(
    mux: Multiplexer,
) -> None:
    server = Server(mux)
    a, b = mux.new_session(), mux.new_session()
    mux.open(a, call(1, tool="ask"), "json")
    newest = mux.open(b, call(1, tool="sleep"), "json")
    sent = server.written()
    server.say(ask(3))
    assert a.outbox.pending() == b.outbox.pending() == []
    # B's call ends, so it was not waiting on the question: it was A's.
    server.say(result(sent[1]["id"], "slept"))
    assert newest.done.done()
    assert [m["method"] for m in a.outbox.pending()] == ["elicitation/create"]
    assert b.outbox.pending() == []


async def test_a_server_request_whose_cause_stays_ambiguous_gets_an_error_not_a_guess() -> None:
    mux = Multiplexer("test", LOG, ask_hold=0.0)
    server = Server(mux)
    a, b = mux.new_session(), mux.new_session()
    mux.open(a, call(1, tool="ask"), "json")
    mux.open(b, call(1, tool="ask"), "json")
    server.written()
    server.say(ask(3))
    refused = json.loads(await asyncio.wait_for(server.queue.get(), 5))
    assert refused["id"] == 3
    assert refused["error"]["code"] == jsonrpc.INTERNAL_ERROR
    assert a.outbox.pending() == b.outbox.pending() == []


async def test_a_server_request_whose_possible_causes_are_cancelled_gets_an_error(
    mux: Multiplexer,
) -> None:
    server = Server(mux)
    a, b = mux.new_session(), mux.new_session()
    first, second = mux.open(a, call(1), "json"), mux.open(b, call(1), "json")
    server.written()
    server.say(ask(3))
    mux.close(first)
    # A cancelled call may be the one asking: B, still in flight, is not told.
    assert b.outbox.pending() == []
    mux.close(second)
    assert a.outbox.pending() == b.outbox.pending() == []
    (refused,) = [m for m in server.written() if m.get("id") == 3]
    assert refused["error"]["code"] == jsonrpc.INTERNAL_ERROR


async def test_a_server_request_with_nothing_in_flight_goes_only_to_a_lone_session(
    mux: Multiplexer,
) -> None:
    server = Server(mux)
    lone = mux.new_session()
    server.say(ask(4, "roots/list"))
    assert [m["method"] for m in lone.outbox.pending()] == ["roots/list"]
    mux.new_session()
    server.say(ask(5, "roots/list"))
    (refused,) = server.written()
    assert refused["id"] == 5
    assert refused["error"]["code"] == jsonrpc.INTERNAL_ERROR


async def test_a_server_request_caused_by_a_sessionless_request_gets_an_error(
    mux: Multiplexer,
) -> None:
    server = Server(mux)
    mux.open(mux.sessionless(), call(1, tool="ask"), "stream")
    server.written()
    server.say(ask(6))
    (refused,) = server.written()
    assert refused["id"] == 6
    assert "error" in refused


async def test_a_server_request_to_a_session_that_ends_gets_an_error(mux: Multiplexer) -> None:
    server = Server(mux)
    session = mux.new_session()
    mux.open(session, call(1, tool="ask"), "json")
    server.written()
    server.say(ask(7))
    mux.drop(session)
    assert [m["error"]["code"] for m in server.written() if m.get("id") == 7] == [
        jsonrpc.INTERNAL_ERROR
    ]


async def test_a_server_cancel_of_its_request_reaches_that_session_under_the_minted_id(
    mux: Multiplexer,
) -> None:
    server = Server(mux)
    session, other = mux.new_session(), mux.new_session()
    mux.open(session, call(1, tool="ask"), "json")
    server.written()
    server.say(ask(8))
    (delivered,) = session.outbox.pending()
    server.say({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 8}})
    cancel = session.outbox.pending()[-1]
    assert cancel["params"]["requestId"] == delivered["id"]
    assert other.outbox.pending() == []
    assert mux.refusal(session, answer(delivered["id"])) is not None


async def test_only_list_changed_notifications_reach_every_session(mux: Multiplexer) -> None:
    server = Server(mux)
    sessions = [mux.new_session() for _ in range(3)]
    changed = {"jsonrpc": "2.0", "method": "notifications/tools/list_changed"}
    server.say(changed)
    assert [s.outbox.pending() for s in sessions] == [[changed]] * 3


async def test_log_messages_go_to_the_one_session_in_flight_and_are_dropped_when_unclear(
    mux: Multiplexer,
) -> None:
    server = Server(mux)
    a, b = mux.new_session(), mux.new_session()
    log = {"jsonrpc": "2.0", "method": "notifications/message", "params": {"data": "x"}}
    mux.open(a, call(1), "json")
    server.say(log)
    assert (a.outbox.pending(), b.outbox.pending()) == ([log], [])
    mux.open(b, call(1), "json")
    server.say(log)
    assert (a.outbox.pending(), b.outbox.pending()) == ([log], [])


async def test_resource_updates_reach_only_the_sessions_that_subscribed(mux: Multiplexer) -> None:
    server = Server(mux)
    a, b = mux.new_session(), mux.new_session()
    subscribe = {"jsonrpc": "2.0", "id": 1, "method": "resources/subscribe"}
    mux.open(a, dict(subscribe, params={"uri": "demo://readme"}), "json")
    updated = {
        "jsonrpc": "2.0",
        "method": "notifications/resources/updated",
        "params": {"uri": "demo://readme"},
    }
    server.say(updated)
    assert (a.outbox.pending(), b.outbox.pending()) == ([updated], [])


async def test_notifications_and_answers_without_a_session_are_refused(mux: Multiplexer) -> None:
    Server(mux)
    note = {"jsonrpc": "2.0", "method": "notifications/roots/list_changed"}
    assert mux.refusal(mux.sessionless(), note) is not None
    assert mux.refusal(mux.new_session(), note) is None


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
