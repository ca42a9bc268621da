"""The resource-server stage: every MCP request carries a valid access token, or gets a
401 that tells the client where to get one.

What the stage guarantees to the stages after it and to the backend:
- ``exchange.principal`` is the validated caller (sessions are bound to it, policies and
  audit read it);
- the client's ``Authorization`` header never reaches the backend (the MCP specification
  forbids passing a token issued for this resource on to another); the backend gets the
  configured outbound credential instead, if any.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import Protocol

from aiohttp import web

from proxyrunner.metrics import Metrics
from proxyrunner.principal import Principal
from proxyrunner.proxy.errors import InsufficientScope, ServiceUnavailable, Unauthenticated
from proxyrunner.proxy.headers import HeaderEdit
from proxyrunner.proxy.pipeline import Exchange, Next
from proxyrunner.proxy.protected_resource import ProtectedResource


class Validator(Protocol):
    def validate(self, token: str) -> Awaitable[Principal]:
        """The token's principal; raises the identity layer's InvalidToken otherwise."""


class Outbound(Protocol):
    def headers(self, principal: Principal, token: str) -> Awaitable[Sequence[tuple[str, str]]]:
        """The headers that carry the backend's own credential for this principal."""


_CLIENT_TOKEN_DROPPED = HeaderEdit(drop=("Authorization",))


class Authentication:
    name = "authentication"

    def __init__(
        self,
        validator: Validator,
        invalid_token: type[Exception],
        resource: ProtectedResource,
        metrics: Metrics,
        *,
        required_scopes: Sequence[str] = (),
        outbound: Outbound | None = None,
        outbound_failure: type[Exception] | None = None,
    ) -> None:
        self._validate = validator.validate
        self._invalid = invalid_token
        self._resource = resource
        self._required = frozenset(required_scopes)
        self._scope_text = " ".join(sorted(self._required))
        self._outbound = outbound
        self._outbound_failure = outbound_failure or _Never
        refusals = metrics.auth_refusals
        self._missing = refusals.labels("missing_token")
        self._refused = refusals
        self._short = refusals.labels("insufficient_scope")
        self._missing_challenge = resource.challenge()

    async def handle(self, exchange: Exchange, call_next: Next) -> web.StreamResponse:
        header = exchange.request.headers.get("Authorization")
        if header is None:
            self._missing.inc()
            raise Unauthenticated(
                "Authorization required: send a Bearer access token", self._missing_challenge
            )
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            self._missing.inc()
            raise Unauthenticated(
                "Authorization must be a Bearer access token",
                self._resource.challenge("invalid_request", "Bearer token expected"),
            )
        try:
            principal = await self._validate(token)
        except self._invalid as exc:
            reason = getattr(exc, "reason", "invalid_token")
            description = getattr(exc, "description", "the access token is not valid")
            self._refused.labels(reason).inc()
            raise Unauthenticated(
                f"Invalid access token: {description}",
                self._resource.challenge("invalid_token", description),
            ) from None
        if self._required and not self._required <= principal.scopes:
            self._short.inc()
            raise InsufficientScope(
                f"The access token lacks the scope this endpoint needs: {self._scope_text}",
                self._resource.challenge(
                    "insufficient_scope", "more scope needed", self._scope_text
                ),
            )
        exchange.principal = principal
        if self._outbound is None:
            exchange.header_edit = _CLIENT_TOKEN_DROPPED
        else:
            try:
                credentials = await self._outbound.headers(principal, token)
            except self._outbound_failure as exc:
                raise ServiceUnavailable(
                    f"the backend credential cannot be obtained: {exc}"
                ) from None
            exchange.header_edit = HeaderEdit(drop=("Authorization",), set_headers=credentials)
        return await call_next(exchange)


class _Never(Exception):
    """Stands in for an outbound failure type when there is no outbound credential."""


class FixedBackendCredential:
    """``backend_auth`` on an unauthenticated endpoint: the backend still gets its own
    credential, in place of whatever the client sent in that header."""

    name = "backend-credential"

    def __init__(self, header: str, value: str) -> None:
        self._edit = HeaderEdit(set_headers=((header, value),))

    async def handle(self, exchange: Exchange, call_next: Next) -> web.StreamResponse:
        exchange.header_edit = self._edit
        return await call_next(exchange)
