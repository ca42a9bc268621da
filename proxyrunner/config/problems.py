"""How a RunConfig states what is wrong with it: one line per problem, every problem at once.

The rule that matters here: a problem names the JSON field, the rule and the value, and
never the value of something that may be a secret (the caller passes no value then).
"""

from __future__ import annotations

import json
from urllib.parse import urlsplit

from proxyrunner.errors import ConfigError


def show(value: object) -> str:
    """A value as a problem line quotes it: JSON for data, repr for strings, shortened."""
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


class Problems:
    """Collects the problems of one value object so that it reports all of them at once."""

    __slots__ = ("items",)

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, path: str, message: str) -> None:
        self.items.append(f"{path}: {message}")

    def extend(self, error: ConfigError) -> None:
        self.items.extend(error.problems)

    def at_least(self, path: str, value: int, minimum: int) -> bool:
        """Whether ``value >= minimum``; adds the problem if not."""
        if value < minimum:
            self.add(path, f"must be >= {minimum}, got {value}")
            return False
        return True

    def positive(self, path: str, seconds: float) -> None:
        if seconds <= 0:
            self.add(path, "must be greater than zero")

    def not_negative(self, path: str, seconds: float) -> None:
        # Parsing refuses negative durations already; this guards direct construction.
        if seconds < 0:
            self.add(path, f"must not be negative, got {seconds:g}")

    def one_of(self, path: str, value: str, choices: tuple[str, ...]) -> None:
        if value not in choices:
            self.add(path, f"must be one of {', '.join(choices)}; got {show(value)}")

    def url(self, path: str, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            self.add(path, f"must be a full http(s) URL like http://host:port/mcp, got {show(url)}")

    def raise_if_any(self) -> None:
        if self.items:
            raise ConfigError(self.items)
