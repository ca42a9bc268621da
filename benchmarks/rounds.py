"""Medians over interleaved rounds, for ``proxy_overhead.py --rounds N``.

On a shared machine the speed of the same build drifts by tens of percent over a minute
(other tenants of the host), so two targets measured one after the other can differ by
more than any change being judged. Interleaving them (A B A B ...) puts each pair close in
time; the median over rounds, of each figure and of each pair's ratio, is what a reader
can compare. The spread (lowest to highest) is printed beside it, so a noisy run shows.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import fields, replace
from typing import Any, Protocol, TypeVar


class Measured(Protocol):
    target: str
    connections: int


R = TypeVar("R", bound=Measured)


def median_rows(rows: Sequence[R]) -> list[R]:
    """One row per (target, connections): each numeric figure the median of its rounds
    (``None`` where every round had none), in the order the targets first ran."""
    groups: dict[tuple[str, int], list[R]] = {}
    for row in rows:
        groups.setdefault((row.target, row.connections), []).append(row)
    medians: list[R] = []
    for group in groups.values():
        changes: dict[str, Any] = {}
        for f in fields(group[0]):  # type: ignore[arg-type]
            values = [getattr(row, f.name) for row in group]
            numbers = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
            if f.name in ("target", "connections") or len(numbers) != len(values):
                continue
            median = statistics.median(numbers)
            changes[f.name] = type(values[0])(median) if isinstance(values[0], int) else median
        medians.append(replace(group[0], **changes))  # type: ignore[type-var]
    return medians


def median_ratios(
    per_round: Sequence[dict[str, float]],
) -> tuple[dict[str, float], dict[str, tuple[float, float]]]:
    """The median of each ratio over the rounds that produced it, and its (lowest,
    highest)."""
    keys = list(dict.fromkeys(key for ratios in per_round for key in ratios))
    medians: dict[str, float] = {}
    spreads: dict[str, tuple[float, float]] = {}
    for key in keys:
        values = [ratios[key] for ratios in per_round if key in ratios]
        medians[key] = statistics.median(values)
        spreads[key] = (min(values), max(values))
    return medians, spreads


def per_round_ratios(
    base: Sequence[R],
    rounds: Sequence[Sequence[R]],
    compute: Callable[[list[R]], dict[str, float]],
) -> list[dict[str, float]]:
    """``compute`` on each round's rows together with the rows measured once (``base``:
    direct, naive)."""
    return [compute([*base, *round_rows]) for round_rows in rounds]
