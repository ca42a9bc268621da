"""The contract between the data path and wherever backends come from.

A backend directory knows which MCP server instances exist, their endpoint URLs and which
are ready. The proxy picks and resolves backends through it and never learns whether they
are child processes, static URLs or Kubernetes pods.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from yarl import URL


@dataclass(frozen=True, slots=True)
class Backend:
    name: str
    """Stable identity, stored in session records: a local name or a pod name."""
    url: URL
    """The MCP endpoint: .../mcp for streamable HTTP, .../sse for a legacy SSE server."""
    ready: bool


class BackendDirectory(Protocol):
    async def start(self) -> None:
        """Bring the backends up and wait (bounded) until at least one is ready.
        Raises StartupError when they never become ready."""

    async def close(self) -> None:
        """Stop what start() started (child processes, probes, watches)."""

    def ready_backends(self) -> Sequence[Backend]:
        """Backends that can take new sessions now."""

    def get(self, name: str) -> Backend | None:
        """The backend of that identity (ready or not), or None if it no longer exists."""

    def describe(self) -> str:
        """One line for /readyz and logs: how many backends exist and are ready."""
