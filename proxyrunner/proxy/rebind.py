"""Moving a session to another backend when its own is gone or lost it.

The session's stored ``initialize`` is replayed on a ready backend (with the
``notifications/initialized`` that completes it), and the session is re-bound there by
compare-and-set in the store, so replicas racing to move the same session agree on one
backend: the loser follows the store's answer.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace

from proxyrunner.backends.directory import Backend
from proxyrunner.errors import StoreUnavailable
from proxyrunner.mcp import jsonrpc
from proxyrunner.mcp.revisions import PROTOCOL_VERSION_HEADER, SESSION_HEADER
from proxyrunner.proxy.errors import BackendFailure, BackendMisbehaved, ServiceUnavailable
from proxyrunner.proxy.parts import ProxyParts
from proxyrunner.proxy.routing import Router
from proxyrunner.sessions.record import SessionRecord
from proxyrunner.telemetry import context as trace_context
from proxyrunner.telemetry import semconv


class Rebinder:
    def __init__(self, parts: ProxyParts, router: Router) -> None:
        self._p = parts
        self._router = router

    async def rebind(
        self, record: SessionRecord, reason: str, credentials: Sequence[tuple[str, str]] = ()
    ) -> tuple[SessionRecord, Backend] | None:
        """The session re-initialized on a ready backend and moved there, or None when
        that is impossible (the client then gets 404 and initializes again).
        ``credentials`` are the outbound headers the client's own requests carry to the
        backend (never the client's token)."""
        if record.init_request is None:
            return None
        log = self._p.log.bind(session=record.session_id, backend=record.backend)
        try:
            backend = self._router.pick_for_new_session()
            backend_sid = await self._replay_initialize(backend, record, credentials)
        except (ServiceUnavailable, BackendFailure) as exc:
            log.warning("session could not be re-initialized", reason=reason, error=str(exc))
            return None
        moved = replace(
            record, backend=backend.name, backend_session_id=backend_sid, last_used=time.time()
        )
        store = self._p.store
        try:
            won = await store.rebind(record.session_id, record.backend, moved)
        except StoreUnavailable:
            won = False
        if not won:
            # Another replica moved it first (or deleted it): follow the store's truth.
            current = await store.get(record.session_id)
            winner = self._router.backend_of(current) if current is not None else None
            if current is None or winner is None:
                return None
            return current, winner
        self._p.metrics.sessions_rebound.inc()
        trace_context.note("mcp.session.rebind", {"reason": reason, semconv.BACKEND: backend.name})
        log.info("session re-initialized", reason=reason, new_backend=backend.name)
        return moved, backend

    async def _replay_initialize(
        self, backend: Backend, record: SessionRecord, credentials: Sequence[tuple[str, str]]
    ) -> str | None:
        assert record.init_request is not None
        forwarder = self._p.forwarder
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json, text/event-stream",
            **dict(credentials),
            # The replay is part of the request being served: the backend sees it so.
            **trace_context.current_carrier(),
        }
        answer = await forwarder.fetch(
            "POST", backend.url, headers, record.init_request.encode(), backend=backend.name
        )
        if answer.status != 200:
            raise BackendMisbehaved(f"backend refused initialize (HTTP {answer.status})")
        backend_sid = answer.headers.get(SESSION_HEADER)
        trace_context.note("mcp.session.reinitialize", {semconv.BACKEND: backend.name})
        if backend_sid is not None:
            headers[SESSION_HEADER] = backend_sid
        if record.protocol_version:
            headers[PROTOCOL_VERSION_HEADER] = record.protocol_version
        await forwarder.fetch(
            "POST", backend.url, headers, jsonrpc.INITIALIZED_NOTIFICATION, backend=backend.name
        )
        return backend_sid
