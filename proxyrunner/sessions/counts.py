"""Live sessions per backend, kept current on every change instead of counted on demand.

Placement reads these counts for every new session, so reading them must cost the number
of backends, not the number of sessions. The rule that keeps them right: every place that
adds or removes a session from a store goes through ``add``/``remove`` exactly once.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType


class BackendCounts:
    def __init__(self) -> None:
        self._counts: dict[str, int] = {}
        self._view = MappingProxyType(self._counts)

    def add(self, backend: str) -> None:
        self._counts[backend] = self._counts.get(backend, 0) + 1

    def remove(self, backend: str) -> None:
        left = self._counts[backend] - 1
        if left:
            self._counts[backend] = left
        else:
            # Backends with no sessions are absent, not zero: placement reads .get(name, 0).
            del self._counts[backend]

    def clear(self) -> None:
        self._counts.clear()

    def view(self) -> Mapping[str, int]:
        """A read-only live view (no copy): backend name -> sessions."""
        return self._view
