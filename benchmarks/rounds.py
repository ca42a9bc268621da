"""Medians over interleaved rounds, for ``proxy_overhead.py --rounds N``.

On a shared machine the speed of the same build drifts by tens of percent over a minute
(other tenants of the host), so two targets measured one after the other can differ by
more than any change being judged. Interleaving them (A B A B ...) puts each pair close in
time; the median over rounds, of each figure and of each pair's ratio, is what a reader
can compare. The spread (lowest to highest) is printed beside it, so a noisy run shows.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import fields, replace
from typing import Any, Protocol, TypeVar


class Measured(Protocol):
    target: str
    connections: int


R = TypeVar("R", bound=Measured)


def median_rows(rows: Sequence[R]) -> list[R]:
    """One row per (target, connections), in the order the targets first ran: each
    numeric figure the median of the rounds that have it (``None`` where none has)."""
    groups: dict[tuple[str, int], list[R]] = {}
    for row in rows:
        groups.setdefault((row.target, row.connections), []).append(row)
    medians: list[R] = []
    for group in groups.values():
        changes: dict[str, Any] = {}
        for f in fields(group[0]):  # type: ignore[arg-type]
            if f.name in _NOT_FIGURES:
                continue
            values = [getattr(row, f.name) for row in group]
            if not all(v is None or _is_number(v) for v in values):
                continue  # not a figure (the error breakdown): the first round's stands
            numbers = [v for v in values if v is not None]
            if not numbers:
                changes[f.name] = None
            elif all(isinstance(v, int) for v in numbers):
                changes[f.name] = round(statistics.median(numbers))
            else:
                changes[f.name] = statistics.median(numbers)
        medians.append(replace(group[0], **changes))  # type: ignore[type-var]
    return medians


_NOT_FIGURES = frozenset(("target", "connections", "round"))


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


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
