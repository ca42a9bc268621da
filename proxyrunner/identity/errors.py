"""What the identity layer raises: a refused token, a missing scope, a failed exchange.

Every message here may reach a client or a log line, so none of them ever contains a
token, a client secret, or a URL with credentials in it: only what was wrong.
"""

from __future__ import annotations

from typing import Literal

from proxyrunner.errors import ProxyRunnerError

Reason = Literal[
    "invalid_token",
    "expired",
    "wrong_audience",
    "wrong_issuer",
    "bad_signature",
    "unknown_key",
    "unsupported_alg",
    "inactive",
    "idp_unavailable",
]


class InvalidToken(ProxyRunnerError):
    """The access token is refused (HTTP 401, ``error="invalid_token"``).

    ``reason`` is a closed set, fit for a metric label; ``description`` says what was wrong
    in words safe for the client's ``WWW-Authenticate`` header.
    """

    def __init__(self, reason: Reason, description: str) -> None:
        self.reason: Reason = reason
        self.description = description
        super().__init__(f"{reason}: {description}")


class InsufficientScope(ProxyRunnerError):
    """A valid token lacks scopes the request needs (HTTP 403,
    ``error="insufficient_scope"``, ``scope="<required>"``)."""

    def __init__(self, required: tuple[str, ...]) -> None:
        self.required = required
        self.description = f"the request needs scope {' '.join(required)}"
        super().__init__(self.description)


class DiscoveryFailed(ProxyRunnerError):
    """The issuer's metadata could not be fetched, or does not describe that issuer."""


class TokenExchangeFailed(ProxyRunnerError):
    """The RFC 8693 exchange for an outbound token failed.

    ``error`` is the OAuth error code the token endpoint answered with (``invalid_grant``,
    ``invalid_target``...), ``None`` when it could not be reached or answered nonsense;
    ``retryable`` tells the caller whether the same request may succeed later.
    """

    def __init__(self, message: str, *, error: str | None = None, retryable: bool) -> None:
        self.error = error
        self.retryable = retryable
        super().__init__(message)
