"""One stdio server conversation shared by many client sessions: no HTTP, no sockets.

A stdio server holds one JSON-RPC conversation on stdin and stdout. The multiplexer
lets many sessions share it:

- **One handshake.** The first ``initialize`` goes to the server, and the multiplexer
  sends the ``notifications/initialized`` that completes it. Every later ``initialize``
  is answered from the kept result, and clients' own ``notifications/initialized`` are not
  repeated.
- **Ids and progress tokens are rewritten** to strings unique to this multiplexer (random
  prefix, counter) and restored on the way back, so two clients that both use id 1 never
  see each other's answers, and neither do two proxy replicas attached to the same
  container (an attached container's stdout reaches every attached stream).
- **Server messages are kept to the session they concern.** Progress goes to the request
  that asked for it; server requests (sampling, elicitation, roots) to the session whose
  request caused them, under ids minted here, and only that session's answer reaches the
  server (``asks``); log messages and other request-scoped notifications to the one
  session with requests in flight (dropped when there are several: the server gives no
  link); resource updates to the sessions that subscribed; only ``list_changed``
  notifications, which concern everyone, to every session. A server ``ping`` is
  answered here.
- **When the server ends** (``detach``: process exit, attach stream closed), requests in
  flight fail and every session is forgotten, so the data path's next request for one
  gets 404 and re-initializes it, on the restarted server or another backend.

The server side is a queue of outgoing lines (``attach`` returns it; the bridge writes
it to the channel) and ``from_server`` for each line read; the client side is sessions
and pending requests, whose answers arrive on futures and outboxes. Everything here runs
on the event loop without awaiting I/O, so it is unit-tested by feeding it lines.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import secrets
import time
from typing import Any, Final

import structlog

from proxyrunner.backends.stdio.asks import DEFAULT_HOLD, Asks
from proxyrunner.backends.stdio.conversation import (
    Handshake,
    Mode,
    Outcome,
    Pending,
    Session,
)
from proxyrunner.backends.stdio.outbox import Outbox
from proxyrunner.mcp import jsonrpc
from proxyrunner.mcp.jsonrpc import Message

DEFAULT_MAX_SESSIONS: Final = 10_000


class Multiplexer:
    """See the module docstring."""

    def __init__(
        self,
        name: str,
        log: structlog.stdlib.BoundLogger,
        *,
        session_idle: float = 7200.0,
        init_timeout: float = 60.0,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
        ask_hold: float = DEFAULT_HOLD,
    ) -> None:
        self.name = name
        self._log = log.bind(backend=name)
        self._session_idle = session_idle
        self._init_timeout = init_timeout
        self._max_sessions = max_sessions
        self._prefix = f"pr{secrets.token_hex(4)}-"
        self._ids = itertools.count(1)
        self._epoch = 0
        self._outgoing: asyncio.Queue[bytes] | None = None
        self._attached = asyncio.Event()
        self._init_lock = asyncio.Lock()
        self._init_result: Any = None
        self._init_epoch = -1
        self._sessions: collections.OrderedDict[str, Session] = collections.OrderedDict()
        self._pending: dict[str, Pending] = {}
        self._tokens: dict[str, Pending] = {}
        self._asks = Asks(self._prefix, self._send, self._sessions.values, ask_hold)

    # ------------------------------------------------------------------ the server side

    @property
    def attached(self) -> bool:
        return self._outgoing is not None

    @property
    def inflight(self) -> int:
        """Client requests sent to the server and not answered yet."""
        return len(self._pending)

    def attach(self) -> asyncio.Queue[bytes]:
        """A new server lifetime begins; returns the queue of lines to write to it."""
        self._epoch += 1
        self._outgoing = asyncio.Queue()
        self._attached.set()
        return self._outgoing

    async def wait_attached(self) -> None:
        await self._attached.wait()

    def detach(self, reason: str) -> None:
        """The server is gone: everything in flight fails, every session is forgotten."""
        self._outgoing = None
        self._attached.clear()
        self._asks.clear()
        for pending in list(self._pending.values()):
            pending.finish(
                jsonrpc.error(None, jsonrpc.BACKEND_UNAVAILABLE, reason), Outcome.SERVER_GONE
            )
        self._pending.clear()
        self._tokens.clear()
        for session in self._sessions.values():
            session.outbox.close()
        self._sessions.clear()

    def from_server(self, line: bytes) -> None:
        """One line the server wrote on stdout."""
        try:
            parsed = jsonrpc.parse_json(line)
        except ValueError:
            # Servers sometimes print banners on stdout; they are not protocol.
            self._log.debug("stdio server wrote a non-JSON line", line=line[:200])
            return
        for message in parsed if isinstance(parsed, list) else [parsed]:
            if not isinstance(message, dict):
                continue
            if jsonrpc.odd_id(message) is not None:
                # Ids key the routing maps: an unhashable one would end the reader loop,
                # and no client could be answered with it anyway.
                self._log.warning("stdio server sent a message with an invalid id; dropped")
                continue
            self._route(message)

    def _send(self, message: Message) -> bool:
        if self._outgoing is None:
            return False
        self._outgoing.put_nowait(jsonrpc.dumps(message))
        return True

    def _route(self, message: Message) -> None:
        method = message.get("method")
        if method is None:
            pending = self._pending.pop(str(message.get("id")), None)
            if pending is None:
                return  # an answer for another replica attached to the same server
            self._unregister(pending)
            pending.finish(message, Outcome.ANSWERED)
            self._asks.settled()
        elif "id" in message:
            if method == "ping":
                self._send({"jsonrpc": "2.0", "id": message["id"], "result": {}})
            else:
                self._asks.arrived(message, list(self._pending.values()))
        elif method == "notifications/progress":
            params = message.get("params")
            token = params.get("progressToken") if isinstance(params, dict) else None
            target = self._tokens.get(token) if isinstance(token, str) else None
            if target is not None and isinstance(params, dict):
                params["progressToken"] = target.original_token
                target.related.put(message)
        elif method == "notifications/cancelled":
            self._asks.cancelled(message)
        elif isinstance(method, str) and method.endswith("/list_changed"):
            for session in self._sessions.values():
                session.outbox.put(message)
        elif method == "notifications/resources/updated":
            params = message.get("params")
            uri = params.get("uri") if isinstance(params, dict) else None
            for session in self._sessions.values():
                if uri in session.subscriptions:
                    session.outbox.put(message)
        else:
            self._to_requester(message)

    def _to_requester(self, message: Message) -> None:
        # Log messages and the like are scoped to the request being handled, but a stdio
        # server does not say which: only when one session has requests in flight (or
        # only one session exists) is it certain whose they are.
        owners = {id(p.session): p for p in self._pending.values()}
        if len(owners) == 1:
            next(iter(owners.values())).related.put(message)
        elif not owners and len(self._sessions) == 1:
            next(iter(self._sessions.values())).outbox.put(message)
        else:
            self._log.debug("stdio server notification with no single owner; dropped")

    # ------------------------------------------------------------------ sessions

    def new_session(self) -> Session:
        """A session of the current server lifetime; the idlest sessions make room."""
        now = time.monotonic()
        while self._sessions:
            oldest = next(iter(self._sessions.values()))
            idle = now - oldest.last_used > self._session_idle and not oldest.streams
            if not idle and len(self._sessions) < self._max_sessions:
                break
            self.drop(oldest)
        session = Session(secrets.token_urlsafe(24), self._epoch)
        self._sessions[session.id] = session
        return session

    def sessionless(self) -> Session:
        """Stands in for a session for a request that names none (a stateless request)."""
        return Session("", self._epoch)

    def find(self, session_id: str | None) -> Session | None:
        session = self._sessions.get(session_id) if session_id else None
        if session is None or session.epoch != self._epoch:
            return None
        session.last_used = time.monotonic()
        self._sessions.move_to_end(session.id)
        return session

    def drop(self, session: Session) -> None:
        """End a session: its requests are cancelled, its streams end."""
        self._sessions.pop(session.id, None)
        for pending in list(session.pending.values()):
            self.close(pending)
        self._asks.session_gone(session)
        session.outbox.close()

    # ------------------------------------------------------------------ client requests

    def open(self, session: Session, message: Message, mode: Mode) -> Pending:
        """Register a client request and send it with a bridge id (and progress token)."""
        bridge_id = f"{self._prefix}{next(self._ids)}"
        related = Outbox() if mode == "stream" else session.outbox
        done: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        pending = Pending(bridge_id, message.get("id"), session, mode, related, done)
        outgoing = dict(message, id=bridge_id)
        params = message.get("params")
        meta = params.get("_meta") if isinstance(params, dict) else None
        if isinstance(params, dict) and isinstance(meta, dict) and "progressToken" in meta:
            pending.original_token = meta["progressToken"]
            pending.progress_token = f"{bridge_id}-progress"
            outgoing["params"] = dict(
                params, _meta=dict(meta, progressToken=pending.progress_token)
            )
            self._tokens[pending.progress_token] = pending
        uri = params.get("uri") if isinstance(params, dict) else None
        if message.get("method") == "resources/subscribe" and isinstance(uri, str):
            session.subscriptions.add(uri)
        elif message.get("method") == "resources/unsubscribe":
            session.subscriptions.discard(uri)
        self._pending[bridge_id] = pending
        session.pending[bridge_id] = pending
        if not self._send(outgoing):
            pending.finish(
                jsonrpc.error(None, jsonrpc.BACKEND_UNAVAILABLE, "the stdio server is not running"),
                Outcome.SERVER_GONE,
            )
        return pending

    def close(
        self,
        pending: Pending,
        reason: str = "the client went away",
        outcome: Outcome = Outcome.CANCELLED,
    ) -> None:
        """Forget a request. If it is still open, answer its client with an error and tell
        the server to stop working on it (a cancelled request gets no answer from the
        server, so nothing else would ever end the client's wait)."""
        self._pending.pop(pending.bridge_id, None)
        self._unregister(pending)
        if not pending.done.done():
            pending.finish(jsonrpc.error(None, jsonrpc.REQUEST_CANCELLED, reason), outcome)
            self._asks.settled()
            self._send(
                {
                    "jsonrpc": "2.0",
                    "method": "notifications/cancelled",
                    "params": {"requestId": pending.bridge_id, "reason": reason},
                }
            )

    def _unregister(self, pending: Pending) -> None:
        pending.session.pending.pop(pending.bridge_id, None)
        if pending.progress_token is not None:
            self._tokens.pop(pending.progress_token, None)

    def refusal(self, session: Session, message: Message) -> str | None:
        """Why a client notification or answer is not accepted from this session, or None:
        answers only to the session's own server requests, and nothing without a session."""
        if not session.id:
            return "a response or notification must name the session it belongs to"
        if "method" not in message:
            return self._asks.refusal(session, message)
        return None

    def from_client(self, session: Session, message: Message) -> None:
        """A client notification or a client's answer to a server request (refused ones,
        see ``refusal``, are dropped)."""
        if self.refusal(session, message) is not None:
            return
        method = message.get("method")
        if method == "notifications/initialized":
            return  # the multiplexer completed the one handshake itself
        if method == "notifications/cancelled":
            params = message.get("params")
            wanted = params.get("requestId") if isinstance(params, dict) else None
            match = next((p for p in session.pending.values() if p.original_id == wanted), None)
            if match is not None:
                self.close(match, "cancelled by the client")
            return
        if method is None:
            self._asks.answer(session, message)
            return
        self._send(message)

    async def handshake(self, message: Message) -> Handshake:
        """The answer to a client's initialize: the server's own answer the first time in
        a server lifetime, the kept result after that."""
        async with self._init_lock:
            if self._init_epoch != self._epoch or self._init_result is None:
                return await self._first_handshake(message)
        answer = {"jsonrpc": "2.0", "id": message.get("id"), "result": self._init_result}
        return Handshake(answer, Outcome.ANSWERED)

    async def _first_handshake(self, message: Message) -> Handshake:
        epoch = self._epoch
        pending = self.open(Session("", epoch), message, "json")
        try:
            async with asyncio.timeout(self._init_timeout):
                answer = await asyncio.shield(pending.done)
        except TimeoutError:
            self.close(pending, "initialize timed out", Outcome.TIMED_OUT)
            text = f"the stdio server did not answer initialize within {self._init_timeout:g}s"
            answer = jsonrpc.error(message.get("id"), jsonrpc.BACKEND_TIMEOUT, text)
            return Handshake(answer, Outcome.TIMED_OUT)
        finally:
            self.close(pending, "initialize abandoned")
        handshake = Handshake(answer, pending.outcome or Outcome.ANSWERED)
        if handshake.ok:
            self._init_result = answer["result"]
            self._init_epoch = epoch
            self._send({"jsonrpc": "2.0", "method": "notifications/initialized"})
            self._log.info("stdio server initialized", epoch=epoch)
        return handshake
