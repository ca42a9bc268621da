"""The ordered request pipeline: every MCP request passes the same stages, in order.

A **stage** is an object with a ``name`` and one of two methods:

- ``check(exchange) -> None``: read the request and refuse it by raising a ``ProxyError``
  (a plain function: most stages only judge, and judging needs no coroutine);
- ``async handle(exchange, call_next) -> web.StreamResponse``: wrap the rest of the
  pipeline. Code before and after ``await call_next(exchange)`` runs around the backend
  call; returning without calling ``call_next`` answers the request here. (A plain
  function returning an awaitable will do too: one that returns ``call_next(exchange)``
  itself adds no coroutine, which a listen stream would hold for its whole life.)

Either may read ``exchange.request``, the body the body stage read once
(``exchange.body``) and the JSON-RPC message parsed once (``exchange.message()``). To see
the backend's answer itself (status, headers, and each JSON-RPC message of it: a JSON
body or every SSE event), a stage registers an ``AnswerWatcher`` with
``exchange.watch(...)``; to change the messages the client gets (the authorization stage
filters list answers), it registers a rewrite with ``exchange.rewrite(...)``. Answers are
parsed only when a watcher or a rewrite is registered. The identity stage records who
sent the request in ``exchange.principal``.

``server.py`` composes the list (the README shows it); a stage that is switched off is
left out of the list, so it costs nothing. The last element is not a stage but the
router: it hands the exchange to the transport that serves the route.

Around the whole list the pipeline itself counts the request as in flight (drain waits
for it), labels it by JSON-RPC method in the request metrics, and turns a ``ProxyError``
raised anywhere into its answer.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Final, Protocol, runtime_checkable

import aiohttp
import structlog
from aiohttp import web

from proxyrunner.mcp import jsonrpc
from proxyrunner.mcp.revisions import PROTOCOL_VERSION_HEADER, SESSION_HEADER, has_standard_headers
from proxyrunner.metrics import Metrics
from proxyrunner.principal import Principal
from proxyrunner.proxy.errors import ParseError, ProxyError, ServiceUnavailable
from proxyrunner.proxy.events import Rewrite
from proxyrunner.proxy.headers import HeaderEdit
from proxyrunner.traffic import Traffic

if TYPE_CHECKING:
    from proxyrunner.proxy.tracing import RequestTrace

Body = bytes | aiohttp.StreamReader | None
Next = Callable[["Exchange"], Awaitable[web.StreamResponse]]

_UNPARSED: Final = object()
_DEFAULT_LABELS: Final = {"GET": "GET stream", "DELETE": "DELETE session"}


class AnswerWatcher(Protocol):
    """Sees a backend's answer as it is relayed. Every method is optional in spirit:
    implement the ones you need as no-ops otherwise."""

    needle: re.Pattern[bytes] | None
    """What a JSON answer's body must contain for ``on_message`` to matter to this
    watcher (a JSON-RPC error: ``rb'"error"'``), so that an answer that concerns no
    watcher is not parsed; None: every message. (A backend that escapes the key's
    letters evades the filter: it only mislabels its own answer.)"""

    def on_response(self, status: int, headers: Any) -> None: ...

    def on_message(self, message: Any) -> None:
        """One JSON-RPC message of the answer: the JSON body, or one SSE event's data."""

    def on_end(self, error: BaseException | None) -> None:
        """The answer is over (``error`` when it ended abnormally)."""


class Exchange:
    """One request on its way through the pipeline, and what stages learned of it."""

    __slots__ = (
        "_message",
        "body",
        "header_edit",
        "principal",
        "protocol_version",
        "request",
        "rewrites",
        "rpc_method",
        "session_id",
        "trace",
        "watchers",
    )

    def __init__(self, request: web.Request) -> None:
        self.request = request
        headers = request.headers
        self.protocol_version: str | None = headers.get(PROTOCOL_VERSION_HEADER)
        session_id = headers.get(SESSION_HEADER)
        if session_id is not None and has_standard_headers(self.protocol_version):
            # 2026-07-28 has no sessions: there a session header means nothing, and is
            # ignored rather than looked up (and answered 404).
            session_id = None
        self.session_id: str | None = session_id
        """The client's Mcp-Session-Id, when it names a session."""
        self.body: Body = None
        """Set by the body stage: the body in memory, a stream for a large in-session
        body, or None for a request without one."""
        self.rpc_method: str = _DEFAULT_LABELS.get(request.method, "unknown")
        """The JSON-RPC method as a bounded label (for metrics and logs)."""
        # Tuples, the empty one shared: most requests (and every listen stream, held for
        # hours) have neither.
        self.watchers: tuple[AnswerWatcher, ...] = ()
        self.rewrites: tuple[Rewrite, ...] = ()
        self.header_edit: HeaderEdit | None = None
        """Set by stages: what the backend's copy of the request headers drops and gets
        (the identity stage drops Authorization and sets outbound credentials)."""
        self.principal: Principal | None = None
        """Set by the identity stage: who sent the request (None when the endpoint is
        unauthenticated)."""
        self.trace: RequestTrace | None = None
        """Set by the telemetry stage for a traced or measured request: the forwarder
        opens a client span (and sends its context) per backend call."""
        self._message: Any = _UNPARSED

    def message(self) -> Any:
        """The body decoded as JSON, parsed at most once; ParseError if it is not JSON.
        Only for a body in memory (the body stage has run)."""
        if self._message is _UNPARSED:
            body = self.body
            if not isinstance(body, bytes):
                raise ParseError("Parse error: the body is not available as JSON")
            try:
                self._message = jsonrpc.parse_json(body)
            except ValueError:
                raise ParseError("Parse error: the body is not JSON") from None
        return self._message

    def watch(self, watcher: AnswerWatcher) -> None:
        self.watchers += (watcher,)

    def rewrite(self, rewrite: Rewrite) -> None:
        """Pass every JSON-RPC message of the answer through ``rewrite`` before the client
        gets it (a JSON body is then read whole; SSE events are held until complete)."""
        self.rewrites += (rewrite,)


@runtime_checkable
class CheckStage(Protocol):
    name: str
    """Short and stable: it appears in the README's list and in logs."""

    def check(self, exchange: Exchange) -> None:
        """Return to let the request pass; raise a ProxyError to refuse it."""


@runtime_checkable
class WrapStage(Protocol):
    name: str

    def handle(self, exchange: Exchange, call_next: Next) -> Awaitable[web.StreamResponse]: ...


Stage = CheckStage | WrapStage


def compose(
    stages: Sequence[Stage],
    route: Next,
    traffic: Traffic,
    metrics: Metrics,
    log: structlog.stdlib.BoundLogger,
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """The aiohttp handler that runs ``stages`` in order, then ``route``."""
    chain = route
    checks: list[Callable[[Exchange], None]] = []
    for stage in reversed(stages):
        if isinstance(stage, WrapStage):
            chain = _wrapped(stage, _checked(checks, chain))
            checks = []
        else:
            checks.insert(0, stage.check)
    chain = _checked(checks, chain)
    requests = metrics.requests
    durations = metrics.request_duration

    async def handler(request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        exchange = Exchange(request)
        response: web.StreamResponse | None = None
        # begin/end rather than a context manager: this runs for every request.
        traffic.begin()
        held = exchange.session_id
        if held is not None:
            # A session with work in flight must not be evicted from a full store.
            traffic.hold(held)
        cancelled = False
        try:
            response = await chain(exchange)
        except ProxyError as exc:
            if isinstance(exc, ServiceUnavailable):
                # The one refusal an operator must see: this replica cannot serve now.
                log.warning("request refused", method=exchange.rpc_method, reason=str(exc))
            response = exc.response()
        except asyncio.CancelledError:
            cancelled = True
            raise
        finally:
            traffic.end(cancelled)
            if held is not None:
                traffic.release(held)
            label = exchange.rpc_method
            status = response.status if response is not None else 499
            requests.labels(label, str(status)).inc()
            durations.labels(label).observe(time.perf_counter() - started)
        return response

    return handler


def _checked(checks: Sequence[Callable[[Exchange], None]], rest: Next) -> Next:
    """``rest`` behind consecutive checks: a plain function that returns ``rest``'s
    coroutine, so the checks add no coroutine layer to the request."""
    if not checks:
        return rest
    ordered = tuple(checks)

    def run(exchange: Exchange) -> Awaitable[web.StreamResponse]:
        for check in ordered:
            check(exchange)
        return rest(exchange)

    return run


def _wrapped(stage: WrapStage, rest: Next) -> Next:
    """A plain function that starts the stage's coroutine: no coroutine layer of its own
    (and, unlike a partial with a keyword, no dict per call)."""
    handle = stage.handle

    def run(exchange: Exchange) -> Awaitable[web.StreamResponse]:
        return handle(exchange, rest)

    return run
