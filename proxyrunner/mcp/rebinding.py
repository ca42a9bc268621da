"""The DNS-rebinding rule: which Host and Origin names a listener serves.

A web page can make a browser send requests to 127.0.0.1 by pointing its own hostname
there (DNS rebinding); the browser then believes it talks to the page's origin. MCP
requires servers to check for this: a bad ``Origin`` gets 403. A listener on a loopback
address (the embedded default, local development) serves only local clients, so the
``Host`` a legitimate client sends names loopback too; any other is refused (421
Misdirected Request, as the SDK servers answer) along with any non-loopback ``Origin``
(403).

Listening on any other address (in a pod, behind a Service or an ingress), the names
clients use are not known here, and the check is off unless ``allowed_hosts`` names them.
``allowed_hosts`` also extends the loopback allowlist (a local reverse proxy that sets its
own Host); ``"*"`` turns the check off.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from yarl import URL

from proxyrunner.hosts import is_loopback, normalized

Refusal = tuple[int, str]
"""The HTTP status and the reason a request is refused."""

_CACHE_LIMIT: Final = 256


def _hostname(url: str) -> str | None:
    """The hostname of a URL (an Origin), or None if it has none."""
    try:
        host = URL(url).host
    except ValueError:
        return None
    return normalized(host) if host else None


class RebindingRule:
    """Decides whether a request's Host and Origin may reach the MCP routes."""

    def __init__(
        self, listen_host: str, allowed_hosts: Iterable[str] = (), *, check_origin: bool = True
    ) -> None:
        allowed = {normalized(h) for h in allowed_hosts}
        self._check_origin = check_origin
        self._loopback_ok = is_loopback(listen_host)
        self.active = "*" not in allowed and (bool(allowed) or self._loopback_ok)
        """False when every request passes (the check is off)."""
        self._allowed = allowed
        # Clients send the same few Host and Origin values over and over: remember verdicts.
        self._verdicts: dict[tuple[str | None, str | None], Refusal | None] = {}

    def _allows(self, hostname: str | None) -> bool:
        if hostname is None:
            return False
        return hostname in self._allowed or (self._loopback_ok and is_loopback(hostname))

    def refusal(self, host: str | None, origin: str | None) -> Refusal | None:
        """None if the request may pass, else the HTTP status and the reason."""
        key = (host, origin)
        try:
            return self._verdicts[key]
        except KeyError:
            pass
        verdict = self._judge(host, origin)
        if len(self._verdicts) >= _CACHE_LIMIT:
            self._verdicts.clear()
        self._verdicts[key] = verdict
        return verdict

    def _judge(self, host: str | None, origin: str | None) -> Refusal | None:
        # A Host header is an authority (name, name:port, [v6]:port): read it as a URL's.
        if host is not None and not self._allows(_hostname(f"http://{host}")):
            return 421, "the Host header names a host this proxy does not serve"
        if origin is not None and self._check_origin and not self._allows(_hostname(origin)):
            return 403, "the Origin header names an origin this proxy does not serve"
        return None
