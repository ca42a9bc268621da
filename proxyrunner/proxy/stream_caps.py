"""How many listen streams a session, and the replica, may hold open.

A listen stream (``GET /mcp``, legacy ``GET /sse``, ``subscriptions/listen``) holds a
client connection, a backend connection and a relay for as long as the client likes; a
stdio-bridge session accepted 50 at once. A slot is taken before the backend is asked
(two concurrent GETs cannot both slip under the cap) and given back when the request
ends, however it ends.
"""

from __future__ import annotations

from proxyrunner.config import LimitsConfig
from proxyrunner.mcp import jsonrpc
from proxyrunner.metrics import Metrics
from proxyrunner.proxy.errors import ProxyError, ServiceUnavailable


class TooManySessionStreams(ProxyError):
    """The session holds ``max_streams_per_session`` streams already: the client should
    close one (a spec-following client holds one)."""

    status = 429
    code = jsonrpc.INVALID_REQUEST
    retry_after = "1"


class StreamCaps:
    def __init__(self, limits: LimitsConfig, metrics: Metrics) -> None:
        self._per_session = limits.max_streams_per_session
        self._max = limits.max_streams
        self._refused = metrics.streams_refused
        self._open = 0
        self._by_session: dict[str, int] = {}

    def take(self, session_id: str | None) -> None:
        """The stream now counts against both caps; ``give_back`` when it ends. Raises
        (before anything is opened) when either is reached. Plain calls, not a context
        manager: its generator would be held for the stream's whole life."""
        if self._open >= self._max:
            self._refused.labels(limit="replica").inc()
            raise ServiceUnavailable("this replica holds all the listen streams it may")
        by_session = self._by_session
        held = by_session.get(session_id, 0) if session_id is not None else 0
        if held >= self._per_session:
            self._refused.labels(limit="session").inc()
            raise TooManySessionStreams(
                f"the session holds {held} listen streams already; close one first"
            )
        self._open += 1
        if session_id is not None:
            by_session[session_id] = held + 1

    def give_back(self, session_id: str | None) -> None:
        self._open -= 1
        if session_id is not None:
            by_session = self._by_session
            left = by_session.pop(session_id) - 1
            if left:
                by_session[session_id] = left
