"""Server requests (sampling, elicitation, roots) on a shared stdio conversation: which
session each belongs to, and who may answer it. No HTTP, no sockets.

A stdio server says nothing on the wire about which client request made it ask: the
SDKs keep that link in-process (``related_request_id``) and only HTTP transports use it.
So the cause is worked out from what was in flight:

- The requests in flight when a server request arrives are its possible causes; a
  request sent later cannot have caused it.
- A cause whose request the server answers is ruled out: a handler waiting on the
  client's answer cannot finish before it. (A request the client cancels is not: its
  handler may be the one asking.) So an ask that arrives while A and B are both in
  flight is held, and delivered to A as soon as B's request ends.
- When causes remain from more than one session for ``hold`` seconds, or none remains,
  the bridge answers the server with a JSON-RPC error itself rather than guess: showing
  A's question to B is the leak this module exists to prevent.
- With nothing in flight at all, the ask goes to the only session there is, if there is
  only one; otherwise it is refused the same way.

Each ask travels under an id minted here (random per ask, so not guessable from one's
own asks), bound to the session it was delivered to; only that session's answer is
passed on, under the server's own id.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import secrets
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from proxyrunner.mcp import jsonrpc
from proxyrunner.mcp.jsonrpc import Message

if TYPE_CHECKING:
    from proxyrunner.backends.stdio.conversation import Pending, Session

ASKS_LIMIT: Final = 1000
DEFAULT_HOLD: Final = 10.0


@dataclass(eq=False)
class Ask:
    bridge_id: str
    message: Message
    """As the server sent it (with the server's id)."""
    causes: list[Pending]
    session: Session | None = None
    """Set once delivered: the only session whose answer is accepted."""
    timer: asyncio.TimerHandle | None = field(default=None, repr=False)


class Asks:
    """See the module docstring. ``send`` writes a message to the server."""

    def __init__(
        self,
        prefix: str,
        send: Callable[[Message], bool],
        sessions: Callable[[], Collection[Session]],
        hold: float = DEFAULT_HOLD,
    ) -> None:
        self._prefix = prefix
        self._send = send
        self._sessions = sessions
        self._hold = hold
        self._ids = itertools.count(1)
        self._asks: collections.OrderedDict[str, Ask] = collections.OrderedDict()
        self._by_server_id: dict[Any, str] = {}
        self._held: list[Ask] = []

    def arrived(self, message: Message, in_flight: Collection[Pending]) -> None:
        bridge_id = f"{self._prefix}ask{next(self._ids)}-{secrets.token_urlsafe(12)}"
        ask = Ask(bridge_id, message, list(in_flight))
        self._asks[bridge_id] = ask
        self._by_server_id[message["id"]] = bridge_id
        while len(self._asks) > ASKS_LIMIT:
            self._refuse(next(iter(self._asks.values())), "too many server requests unanswered")
        if not ask.causes:
            sessions = [s for s in self._sessions() if s.id]
            if len(sessions) == 1:
                self._deliver(ask, sessions[0], sessions[0].outbox)
            else:
                self._refuse(ask, "no client request is in flight that could have caused it")
            return
        if not self._settle(ask):
            self._held.append(ask)
            loop = asyncio.get_running_loop()
            ask.timer = loop.call_later(self._hold, self._expire, ask)

    def settled(self) -> None:
        """A client request ended: held asks may now have a single possible cause."""
        if self._held:
            self._held = [ask for ask in self._held if not self._settle(ask)]

    def _settle(self, ask: Ask) -> bool:
        # Only the server's answer rules a request out: one the client cancelled may
        # still be the cause, so its session stays a possible owner.
        ask.causes = [p for p in ask.causes if not p.answered]
        owners = {id(p.session) for p in ask.causes}
        live = [p for p in ask.causes if not p.done.done()]
        if len(owners) > 1 and live:
            return False
        if len(owners) != 1 or not live:
            self._refuse(ask, "the client request that caused it has ended")
        elif not ask.causes[-1].session.id:
            # A request without a session cannot post an answer that would be accepted.
            self._refuse(ask, "the client that caused it has no session to answer on")
        else:
            cause = live[-1]
            self._deliver(ask, cause.session, cause.related)
        return True

    def _expire(self, ask: Ask) -> None:
        if ask in self._held:
            self._held.remove(ask)
            self._refuse(ask, "cannot tell which client caused it")

    def _deliver(self, ask: Ask, session: Session, outbox: Any) -> None:
        ask.session = session
        outbox.put(dict(ask.message, id=ask.bridge_id))

    def _refuse(self, ask: Ask, reason: str) -> None:
        self._forget(ask)
        text = f"proxyrunner stdio bridge: {reason}"
        self._send(jsonrpc.error(ask.message["id"], jsonrpc.INTERNAL_ERROR, text))

    def _forget(self, ask: Ask) -> None:
        self._asks.pop(ask.bridge_id, None)
        self._by_server_id.pop(ask.message["id"], None)
        if ask.timer is not None:
            ask.timer.cancel()
        if ask in self._held:
            self._held.remove(ask)

    def refusal(self, session: Session, message: Message) -> str | None:
        """Why a client's answer is not accepted, or None. Unknown ids and other sessions'
        asks get the same reason, so that an answer reveals nothing about other asks."""
        bridge_id = message.get("id")
        ask = self._asks.get(bridge_id) if isinstance(bridge_id, str) else None
        if ask is None or ask.session is None or ask.session is not session:
            return "no server request of this session is waiting for an answer with this id"
        return None

    def answer(self, session: Session, message: Message) -> bool:
        """Pass a client's answer to the server under its own id, if it is accepted."""
        if self.refusal(session, message) is not None:
            return False
        ask = self._asks[message["id"]]
        self._forget(ask)
        return self._send(dict(message, id=ask.message["id"]))

    def cancelled(self, message: Message) -> None:
        """The server gave up on an ask: tell the session it went to, under its id."""
        params = message.get("params")
        asked = params.get("requestId") if isinstance(params, dict) else None
        bridge_id = self._by_server_id.get(asked) if isinstance(asked, str | int) else None
        ask = self._asks.get(bridge_id) if bridge_id is not None else None
        if ask is None:
            return
        self._forget(ask)
        if ask.session is not None and isinstance(params, dict):
            ask.session.outbox.put(dict(message, params=dict(params, requestId=ask.bridge_id)))

    def session_gone(self, session: Session) -> None:
        """Its asks will never be answered: the server is told, so its handler ends."""
        for ask in [a for a in self._asks.values() if a.session is session]:
            self._refuse(ask, "the client's session ended")

    def clear(self) -> None:
        for ask in list(self._asks.values()):
            self._forget(ask)
