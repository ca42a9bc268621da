"""Stage: the audit trail, one event per MCP request (``audit_config``).

It sits before the identity stage so that refusals are recorded too: a 401 from the
identity stage and a 403 from the authorization stage arrive here as a ``ProxyError``
raised by ``call_next``, are recorded (outcome ``denied``) and raised on unchanged. The
principal is read after ``call_next``: the identity stage, inside, has set it by then.

One event per HTTP request, written when the answer is over: the relay finishes
relaying (an SSE answer included) and tells its watchers before ``call_next`` returns,
so a GET listen stream is recorded when it closes, with its whole duration. What was
asked (method(s), tool/prompt/resource) comes from the body when it is JSON in memory;
a streamed or unparseable body is recorded by its HTTP method alone. A type the config
does not record costs nothing beyond reading the method: no watcher is registered.

The event's fields are in ``proxyrunner/audit/events.py``. ``source.value`` is the peer
address of the connection; behind a load balancer that is the balancer, since
X-Forwarded-For is a header the client writes, and header values are never recorded.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from typing import Any, Final, Protocol

from aiohttp import web

from proxyrunner.audit.events import Capture, Origin, Record, build_event, describe, truncated
from proxyrunner.config.audit import AuditConfig
from proxyrunner.mcp.revisions import SESSION_HEADER
from proxyrunner.principal import short_hash
from proxyrunner.proxy.errors import ProxyError
from proxyrunner.proxy.pipeline import Exchange, Next

_REASONS = {401: "unauthenticated", 403: "forbidden"}
_ERROR: Final = re.compile(rb'"error"')
_CLIENT_GONE = 499  # as the request metrics count a request the client gave up on


class AuditSink(Protocol):
    def write(self, event: dict[str, Any]) -> None:
        """Record one event; never raises."""


class _Answer:
    """Watches the answer: its first JSON-RPC error, and its messages when asked."""

    __slots__ = ("capture", "error_code", "needle")

    def __init__(self, capture: Capture | None) -> None:
        self.capture = capture
        # Without a capture only an error matters, and an answer without one is not parsed.
        self.needle: re.Pattern[bytes] | None = None if capture is not None else _ERROR
        self.error_code: int | None = None

    def on_response(self, status: int, headers: Any) -> None:
        pass

    def on_message(self, message: Any) -> None:
        if self.capture is not None:
            self.capture.add(message)
        if self.error_code is None:
            for element in message if isinstance(message, list) else (message,):
                if isinstance(element, dict) and "method" not in element and "error" in element:
                    error = element["error"]
                    code = error.get("code") if isinstance(error, dict) else None
                    # A malformed error still fails the call: INTERNAL_ERROR stands in.
                    self.error_code = code if isinstance(code, int) else -32603
                    break

    def on_end(self, error: BaseException | None) -> None:
        pass


class Audit:
    name = "audit"

    def __init__(self, config: AuditConfig, sink: AuditSink, origin: Origin) -> None:
        self._config = config
        self._sink = sink
        self._origin = origin

    async def handle(self, exchange: Exchange, call_next: Next) -> web.StreamResponse:
        config = self._config
        request = exchange.request
        call = describe(request.method, _message(exchange))
        if not config.records(call.event_type):
            return await call_next(exchange)
        started = time.perf_counter()
        answer = _Answer(Capture(config.max_data_size) if config.include_response_data else None)
        exchange.watch(answer)
        status = 500  # an exception that is no ProxyError becomes aiohttp's 500
        refused_code: int | None = None
        response: web.StreamResponse | None = None
        try:
            response = await call_next(exchange)
            status = response.status
            return response
        except ProxyError as exc:
            status, refused_code = exc.status, exc.code
            raise
        except asyncio.CancelledError:
            status = _CLIENT_GONE
            raise
        finally:
            session = exchange.session_id
            if session is None and response is not None:
                session = response.headers.get(SESSION_HEADER)  # a new session's id
            body = exchange.body
            record = Record(
                call=call,
                endpoint=request.path,
                http_method=request.method,
                client_address=request.remote,
                principal=exchange.principal,
                session_hash=short_hash(session) if session else None,
                status=status,
                jsonrpc_error=refused_code if refused_code is not None else answer.error_code,
                duration=time.perf_counter() - started,
                reason=_REASONS.get(status),
                request_data=(
                    truncated(body, config.max_data_size)
                    if config.include_request_data and isinstance(body, bytes) and body
                    else None
                ),
                response_data=answer.capture.value() if answer.capture is not None else None,
            )
            self._sink.write(
                build_event(record, self._origin, audit_id=str(uuid.uuid4()), logged_at=time.time())
            )


def _message(exchange: Exchange) -> Any:
    """The parsed body, or None when there is none in memory or it is not JSON (the
    pipeline refuses that later, and the event records the refusal)."""
    if not isinstance(exchange.body, bytes) or not exchange.body:
        return None
    try:
        return exchange.message()
    except ProxyError:
        return None
