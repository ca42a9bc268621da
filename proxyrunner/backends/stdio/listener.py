"""The loopback HTTP listener a stdio bridge serves the data path on, shared by the
shared-process bridge and the one-process-per-session bridge.

Loopback on a random port, but a page doing DNS rebinding could scan for it: requests
whose Host is not loopback are refused. The Origin is the client's, relayed by the
proxy, which has judged it already.
"""

from __future__ import annotations

from typing import Final

from aiohttp import web
from aiohttp.typedefs import Handler

from proxyrunner.errors import StartupError
from proxyrunner.http_answers import error_response
from proxyrunner.mcp import jsonrpc
from proxyrunner.mcp.rebinding import RebindingRule

_RULE: Final = RebindingRule("127.0.0.1", check_origin=False)


@web.middleware
async def _refuse_rebinding(request: web.Request, handler: Handler) -> web.StreamResponse:
    refused = _RULE.refusal(request.headers.get("Host"), None)
    if refused is not None:
        status, reason = refused
        return error_response(status, jsonrpc.INVALID_REQUEST, reason)
    return await handler(request)


def guarded_app(max_body: int) -> web.Application:
    """An application for a bridge's routes, refusing non-loopback Host names."""
    return web.Application(client_max_size=max_body, middlewares=[_refuse_rebinding])


async def listen(
    app: web.Application, name: str, host: str, port: int
) -> tuple[web.AppRunner, int]:
    """Serve ``app`` on ``host:port`` (0: any free port); the runner and the bound port.
    StartupError when the port is taken."""
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        await runner.cleanup()
        raise StartupError(
            f"stdio bridge {name}: cannot listen on {host}:{port}: {exc.strerror or exc}"
        ) from exc
    return runner, int(runner.addresses[0][1])
