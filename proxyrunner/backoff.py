"""Exponential backoff with jitter: the one way proxyrunner waits before trying again.

Every reconnect loop (Redis, the pod watch, attach streams, child restarts) and the
supervisor use this type, so that retry timing is decided in one place. The jitter
matters at scale: when Redis or the API server comes back, a hundred replicas retrying
on the same exact schedule would hit it in lock step. "Equal jitter" keeps each delay
within [d/2, d] of its nominal value ``d``: spread out, yet never close to zero, so a
fault that persists does not turn into a busy loop.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field


@dataclass(slots=True)
class Backoff:
    """Delays of ``first``, ``first*factor``, ... up to ``maximum`` seconds, each jittered.

    ``reset_after``: a run (connection, child process, stream) that lasted at least this
    long counts as a success, so the next failure starts again from ``first``.
    """

    first: float = 0.1
    maximum: float = 10.0
    factor: float = 2.0
    reset_after: float | None = 30.0
    rng: random.Random = field(default_factory=random.Random, repr=False)
    _attempt: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if not 0 < self.first <= self.maximum:
            raise ValueError(
                f"Backoff: need 0 < first <= maximum, got {self.first}, {self.maximum}"
            )
        if self.factor < 1:
            raise ValueError(f"Backoff: factor must be >= 1, got {self.factor}")

    @property
    def attempt(self) -> int:
        """Failures since the last reset."""
        return self._attempt

    def nominal(self) -> float:
        """The delay before jitter for the next failure."""
        return min(self.maximum, self.first * self.factor**self._attempt)

    def next_delay(self) -> float:
        """The delay to wait after one more failure (and count that failure)."""
        nominal = self.nominal()
        self._attempt += 1
        return nominal / 2 + self.rng.uniform(0, nominal / 2)

    async def wait(self) -> float:
        """Sleep the next delay; returns how long it was."""
        delay = self.next_delay()
        await asyncio.sleep(delay)
        return delay

    def reset(self) -> None:
        """A success: the next failure waits ``first`` again."""
        self._attempt = 0

    def ran_for(self, seconds: float) -> None:
        """Report how long the last run lasted; long enough counts as a success."""
        if self.reset_after is not None and seconds >= self.reset_after:
            self.reset()
