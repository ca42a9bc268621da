"""Go-style durations ("30s", "1h30m", "250ms"), as ToolHive writes them in a RunConfig.

The one rule: parsing and formatting are inverse, so a RunConfig round-trips unchanged.
"""

from __future__ import annotations

import math
import re

_UNITS: dict[str, float] = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_TERM = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


def parse_duration(value: object) -> float:
    """Return seconds for a Go duration string or a plain number of seconds.

    Raises ValueError with a message that says what was expected; the caller adds the
    field name.
    """
    if isinstance(value, bool):
        raise ValueError("expected a duration like '30s' or a number of seconds, got a boolean")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = _parse_go_string(value.strip())
    else:
        raise ValueError(
            f"expected a duration like '30s' or a number of seconds, got {type(value).__name__}"
        )
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError("a duration must be finite and not negative")
    return seconds


def _parse_go_string(text: str) -> float:
    if text in ("0", ""):
        if text == "":
            raise ValueError("expected a duration like '30s', got an empty string")
        return 0.0
    try:
        return float(text)  # "30" or "1.5": seconds, a common hand-written form
    except ValueError:
        pass
    pos = 0
    total = 0.0
    for match in _TERM.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text) or pos == 0:
        raise ValueError(f"{text!r} is not a duration (use forms like '500ms', '30s', '1h30m')")
    return total


def format_duration(seconds: float) -> str:
    """Format seconds compactly in Go units: 7200 -> '2h', 90 -> '1m30s', 0.25 -> '250ms'."""
    if seconds == 0:
        return "0s"
    if seconds < 1:
        ms = seconds * 1000
        return f"{_trim(ms)}ms"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    parts = []
    if hours:
        parts.append(f"{int(hours)}h")
    if minutes:
        parts.append(f"{int(minutes)}m")
    if secs:
        parts.append(f"{_trim(secs)}s")
    return "".join(parts)


def _trim(number: float) -> str:
    text = f"{number:.6f}".rstrip("0").rstrip(".")
    return text or "0"
