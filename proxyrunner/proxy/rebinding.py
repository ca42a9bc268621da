"""DNS-rebinding protection for a proxy listening on loopback.

A web page can make a browser send requests to 127.0.0.1 by pointing its own hostname
there (DNS rebinding); the browser then believes it talks to the page's origin. MCP
requires servers to check for this: a bad ``Origin`` gets 403. A proxy listening on a
loopback address (the embedded default, local development) serves only local clients,
so the ``Host`` a legitimate client sends names loopback too; any other is refused
(421 Misdirected Request, as the SDK servers answer) along with any non-loopback
``Origin`` (403).

Listening on any other address (in a pod, behind a Service or an ingress), the names
clients use are not known here, and the check is off unless ``allowed_hosts`` names them.
``allowed_hosts`` also extends the loopback allowlist (a local reverse proxy that sets its
own Host); ``"*"`` turns the check off.

The stdio bridge's internal endpoint (loopback, a random port a page could scan for)
checks Host only: the proxy in front sends its own loopback Host but relays the client's
Origin, which the proxy has judged already.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Final

from aiohttp import web
from yarl import URL

from proxyrunner.hosts import is_loopback
from proxyrunner.hosts import normalized as _normalized
from proxyrunner.proxy.protocol import INVALID_REQUEST, error_response

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_CACHE_LIMIT: Final = 256


def _hostname(url: str) -> str | None:
    """The hostname of a URL (an Origin), or None if it has none."""
    try:
        host = URL(url).host
    except ValueError:
        return None
    return _normalized(host) if host else None


class RebindingGuard:
    """Decides whether a request's Host and Origin may reach the MCP routes."""

    def __init__(
        self, listen_host: str, allowed_hosts: Iterable[str] = (), *, check_origin: bool = True
    ) -> None:
        allowed = {_normalized(h) for h in allowed_hosts}
        self._check_origin = check_origin
        self._loopback_ok = is_loopback(listen_host)
        self.active = "*" not in allowed and (bool(allowed) or self._loopback_ok)
        self._allowed = allowed
        # Clients send the same few Host and Origin values over and over: remember verdicts.
        self._verdicts: dict[tuple[str | None, str | None], tuple[int, str] | None] = {}

    def _allows(self, hostname: str | None) -> bool:
        if hostname is None:
            return False
        return hostname in self._allowed or (self._loopback_ok and is_loopback(hostname))

    def refusal(self, host: str | None, origin: str | None) -> tuple[int, str] | None:
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

    def _judge(self, host: str | None, origin: str | None) -> tuple[int, str] | None:
        # A Host header is an authority (name, name:port, [v6]:port): read it as a URL's.
        if host is not None and not self._allows(_hostname(f"http://{host}")):
            return 421, "the Host header names a host this proxy does not serve"
        if origin is not None and self._check_origin and not self._allows(_hostname(origin)):
            return 403, "the Origin header names an origin this proxy does not serve"
        return None


def guarded(guard: RebindingGuard, handler: Handler) -> Handler:
    """``handler``, refusing requests whose Host or Origin a DNS-rebinding page would send."""
    if not guard.active:
        return handler

    async def checked(request: web.Request) -> web.StreamResponse:
        headers = request.headers
        refused = guard.refusal(headers.get("Host"), headers.get("Origin"))
        if refused is not None:
            status, reason = refused
            return error_response(status, INVALID_REQUEST, reason)
        return await handler(request)

    return checked
