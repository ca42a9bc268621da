"""What the backend gets instead of the client's token: nothing, a fixed credential, or
a token exchanged at the IdP for the backend's own audience (RFC 8693).

The client's token is for this proxy only; the MCP specification forbids passing it on.
Each provider here turns a validated principal into the headers of the backend's own
credential.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from proxyrunner.principal import Principal


class Exchanger(Protocol):
    async def token_for(self, principal: Principal, subject_token: str) -> str: ...


class StaticCredential:
    """``backend_auth``: one header whose value came from a Secret at startup."""

    def __init__(self, header: str, value: str) -> None:
        self._headers = ((header, value),)

    async def headers(self, principal: Principal, token: str) -> Sequence[tuple[str, str]]:
        return self._headers


class ExchangedCredential:
    """``token_exchange_config``: the client's token traded for one the backend accepts,
    cached per principal by the exchanger until it expires."""

    def __init__(self, exchanger: Exchanger, header: str = "Authorization") -> None:
        self._exchanger = exchanger
        self._header = header

    async def headers(self, principal: Principal, token: str) -> Sequence[tuple[str, str]]:
        # "Bearer" in a custom header too, as ToolHive sends it.
        exchanged = await self._exchanger.token_for(principal, token)
        return ((self._header, f"Bearer {exchanged}"),)
