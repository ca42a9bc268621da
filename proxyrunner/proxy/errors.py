"""Every way the data path can refuse or fail a request, as one hierarchy.

Each error knows what the client gets (HTTP status, JSON-RPC code, extra headers) and,
for a failed backend call, its label in ``proxyrunner_backend_errors_total{kind}``. Code
on the data path raises them; the pipeline turns any of them into the answer. Classified
by what the client should do: fix the request (``RequestRefused``), initialize again
(``SessionNotFound``), retry later (``ServiceUnavailable``, ``BackendFailure``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from aiohttp import web

from proxyrunner.errors import ProxyRunnerError
from proxyrunner.http_answers import SESSION_NOT_FOUND_MESSAGE, error_response
from proxyrunner.mcp import jsonrpc


class ProxyError(ProxyRunnerError):
    status: ClassVar[int] = 500
    code: ClassVar[int] = jsonrpc.INTERNAL_ERROR
    retry_after: ClassVar[str | None] = None

    def __init__(self, message: str, *, request_id: Any = None, data: Any = None) -> None:
        super().__init__(message)
        self.request_id = request_id
        self.data = data

    def headers(self) -> Mapping[str, str] | None:
        """Headers the answer carries besides the body's."""
        return {"Retry-After": self.retry_after} if self.retry_after is not None else None

    def response(self) -> web.Response:
        return error_response(
            self.status,
            self.code,
            str(self),
            headers=self.headers(),
            request_id=self.request_id,
            data=self.data,
        )


# --------------------------------------------------------------- the client must change


class RequestRefused(ProxyError):
    status = 400
    code = jsonrpc.INVALID_REQUEST


class InvalidRequest(RequestRefused):
    pass


class ParseError(RequestRefused):
    code = jsonrpc.PARSE_ERROR


class BodyIncomplete(RequestRefused):
    pass


class BodyTooLarge(RequestRefused):
    status = 413
    code = jsonrpc.REQUEST_TOO_LARGE

    @classmethod
    def over(cls, limit: int) -> BodyTooLarge:
        return cls(f"Request body larger than the limit of {limit} bytes")


class BodyTimeout(RequestRefused):
    """The body did not arrive within ``body_timeout`` (a slow or stalled client): 408,
    and the connection is closed, since the rest of the body may still be on its way."""

    status = 408

    def response(self) -> web.Response:
        response = super().response()
        response.force_close()
        return response


class HeaderMismatch(RequestRefused):
    code = jsonrpc.HEADER_MISMATCH


class MisdirectedHost(RequestRefused):
    status = 421


class ForeignOrigin(RequestRefused):
    status = 403


class MethodNotAllowed(RequestRefused):
    status = 405


class Unauthenticated(ProxyError):
    """No valid access token (RFC 6750): 401 with the Bearer challenge that points the
    client at the protected-resource metadata (RFC 9728)."""

    status = 401
    code = jsonrpc.UNAUTHORIZED

    def __init__(self, message: str, challenge: str) -> None:
        super().__init__(message)
        self.challenge = challenge

    def headers(self) -> Mapping[str, str]:
        return {"WWW-Authenticate": self.challenge}


class InsufficientScope(Unauthenticated):
    """A valid token without the scopes the request needs: 403, and the challenge names
    them (RFC 6750 ``insufficient_scope``), so the client can ask for a better token."""

    status = 403
    code = jsonrpc.INSUFFICIENT_SCOPE


class PolicyDenied(RequestRefused):
    """The authorization policy refused the request (HTTP 403, JSON-RPC code 403, as
    ToolHive answers). The message names what was refused ("tools/call of 'add' denied
    by policy"), never the policy or a claim; it carries the request's id. Retrying the
    same request cannot help: only a policy change or another principal can."""

    status = 403
    code = jsonrpc.POLICY_DENIED


class SessionNotFound(ProxyError):
    status = 404
    code = jsonrpc.SESSION_NOT_FOUND

    def __init__(self, message: str = SESSION_NOT_FOUND_MESSAGE) -> None:
        super().__init__(message)


# --------------------------------------------------------------- try again later


class ServiceUnavailable(ProxyError):
    """Nothing can take the request now: no backend ready, or the store cannot record a
    new session. The Service's other replicas may do better."""

    status = 503
    code = jsonrpc.BACKEND_UNAVAILABLE
    retry_after = "1"


class BackendFailure(ProxyError):
    """A backend call failed; ``metric`` labels it in the backend error counter."""

    status = 502
    code = jsonrpc.BACKEND_UNAVAILABLE
    metric: ClassVar[str] = "refused"


class BackendUnreachable(BackendFailure):
    """The connection was refused, reset before an answer, or the answer was not HTTP."""


class BackendClosedEarly(BackendFailure):
    """The backend ended its answer before it was complete."""

    metric = "reset"


class BackendTimeout(BackendFailure):
    status = 504
    code = jsonrpc.BACKEND_TIMEOUT
    metric = "timeout"


class BackendMisbehaved(BackendFailure):
    """The backend answered, but not as an MCP server of its kind must (a legacy server
    without an endpoint event, or one on another origin; an initialize refused on
    replay)."""
