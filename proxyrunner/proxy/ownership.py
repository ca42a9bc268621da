"""Sessions bound to their principal: the one lookup every in-session request makes.

A session records the binding of whoever created it (``Principal.binding``, a hash of
issuer and subject); the record lives in the shared store, so every replica enforces it.
A request for a session that another principal created is answered exactly like one for
a session that does not exist (404, -32001): telling the two apart would confirm to a
holder of a leaked id that the id is live.
"""

from __future__ import annotations

import hmac

import structlog

from proxyrunner.metrics import Metrics
from proxyrunner.proxy.errors import SessionNotFound
from proxyrunner.proxy.pipeline import Exchange
from proxyrunner.sessions.record import SessionRecord
from proxyrunner.sessions.store import SessionStore


def binding_of(exchange: Exchange) -> str | None:
    """What a session created by this request records as its owner."""
    principal = exchange.principal
    return principal.binding if principal is not None else None


class SessionOwnership:
    def __init__(
        self, store: SessionStore, metrics: Metrics, log: structlog.stdlib.BoundLogger
    ) -> None:
        self._store = store
        self._mismatches = metrics.auth_refusals.labels("session_principal_mismatch")
        self._log = log

    async def record_of(self, exchange: Exchange, session_id: str) -> SessionRecord:
        """The session's record, if it exists and belongs to the request's principal;
        SessionNotFound otherwise."""
        record = await self._store.get(session_id)
        if record is None:
            raise SessionNotFound
        owner, caller = record.principal, binding_of(exchange)
        if owner is None or caller is None:
            same = owner is caller
        else:
            same = hmac.compare_digest(owner, caller)
        if not same:
            self._mismatches.inc()
            # The session is named by its hash only (the log processor hashes it).
            self._log.warning(
                "session refused: it belongs to another principal",
                session=session_id,
                method=exchange.rpc_method,
            )
            raise SessionNotFound
        return record
