"""What a stdio server conversation is made of, for the multiplexer that runs it and the
HTTP faces that serve it: client sessions, their pending requests, how a request ended,
the kept handshake. Plain data, no I/O.
"""

from __future__ import annotations

import asyncio
import enum
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from proxyrunner.backends.stdio.outbox import Outbox
from proxyrunner.mcp.jsonrpc import Message

Mode = Literal["json", "stream", "legacy"]
"""How the client takes the answer: one JSON body, an SSE stream of its own (which also
carries the request's progress and server requests), or the legacy session stream."""


class Outcome(enum.Enum):
    """How a request ended, as the HTTP face reports it."""

    ANSWERED = "answered"
    """The server answered (with a result or an error of its own)."""
    CANCELLED = "cancelled"
    """The client gave up or went away; the server was told to stop."""
    TIMED_OUT = "timed_out"
    SERVER_GONE = "server_gone"


@dataclass(eq=False)
class Session:
    id: str
    epoch: int
    """The server lifetime the session belongs to; it ends with it."""
    outbox: Outbox = field(default_factory=Outbox)
    last_used: float = field(default_factory=time.monotonic)
    streams: int = 0
    """Client streams reading the outbox now (an idle session with one is kept)."""
    pending: dict[str, Pending] = field(default_factory=dict)
    subscriptions: set[str] = field(default_factory=set)
    """Resource URIs the session subscribed to: where ``resources/updated`` goes."""


@dataclass(eq=False)
class Pending:
    """A client request the server has not answered yet."""

    bridge_id: str
    original_id: Any
    session: Session
    mode: Mode
    related: Outbox
    """Where progress and server requests for this request go: its own stream when the
    client takes the answer as SSE, else the session's stream."""
    done: asyncio.Future[Message]
    progress_token: str | None = None
    original_token: Any = None
    outcome: Outcome | None = None

    @property
    def answered(self) -> bool:
        return self.outcome is Outcome.ANSWERED

    def finish(self, message: Message, outcome: Outcome) -> None:
        if self.done.done():
            return
        self.outcome = outcome
        message["id"] = self.original_id
        self.done.set_result(message)
        if self.mode != "json":
            self.related.put(message)
        if self.mode == "stream":
            self.related.close()


@dataclass(frozen=True, slots=True)
class Handshake:
    answer: Message
    outcome: Outcome

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.ANSWERED and "result" in self.answer
