"""The project's own error hierarchy, classified by what the caller should do.

Library exceptions (aiohttp, redis, kubernetes_asyncio) are chained with ``from`` at the
I/O boundary that caught them and never escape a module's public functions unwrapped.
"""

from __future__ import annotations


class ProxyRunnerError(Exception):
    """Base of every error proxyrunner raises on purpose."""


class ConfigError(ProxyRunnerError):
    """The RunConfig (or an override of it) is invalid. Exit code 2; retrying cannot help.

    ``problems`` holds one line per problem, each naming the field, the rule and the value
    (never the value of a secret).
    """

    def __init__(self, problems: list[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems))

    def __str__(self) -> str:
        if len(self.problems) == 1:
            return f"invalid RunConfig: {self.problems[0]}"
        lines = "\n".join(f"  - {p}" for p in self.problems)
        return f"invalid RunConfig ({len(self.problems)} problems):\n{lines}"


class StartupError(ProxyRunnerError):
    """Something the proxy needs could not be brought up (port taken, backend never ready,
    Redis refused our credentials). Exit code 3."""


class StoreUnavailable(ProxyRunnerError):
    """The shared session store cannot be reached now; retry later."""


class StoreFull(StoreUnavailable):
    """The store holds as many new sessions as it may (a bound on memory, not a fault):
    retry later, or at another replica. The message is safe to show the client."""
