"""Hostile clients against real proxies, on what they can make a replica hold: memory
per session, sessions of others, connections, streams, and time (issue 10, items 4 and 5).

Every case was first reproduced against a live proxy on loopback; each test here failed
before the bound it checks existed."""

from __future__ import annotations

import re
from typing import Any

import aiohttp
import pytest

from tests.conftest import DemoProxy, StartBackend, StartProxy
from tests.helpers import INIT, MCP_HEADERS, answer_of, raw_initialize, tools_call
from tests.procs import Proxy
from tests.redis_server import RedisServer

pytestmark = pytest.mark.timeout(90)


async def labelled_metric(proxy: Proxy, name: str, **labels: str) -> float:
    """The value of one labelled series in the proxy's /metrics (0 when absent)."""
    async with aiohttp.ClientSession() as http, http.get(f"{proxy.base}/metrics") as response:
        text = await response.text()
    family = re.escape(name.removesuffix("_total"))
    assert re.search(rf"^# TYPE {family}(_total)? ", text, re.MULTILINE), f"{name} not in /metrics"
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    series = f"{name}{{{wanted}}}" if labels else name
    match = re.search(rf"^{re.escape(series)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def padded_initialize(size: int) -> dict[str, Any]:
    """An initialize whose body is about ``size`` bytes (the padding in clientInfo)."""
    params = {**INIT["params"], "clientInfo": {"name": "pad", "version": "1", "x": "x" * size}}
    return {**INIT, "params": params}


# ------------------------------------------------------------ item 4: memory per client


async def test_an_initialize_above_the_stored_limit_works_but_is_not_kept_and_is_counted(
    demo_proxy: DemoProxy,
) -> None:
    proxy = demo_proxy(max_stored_initialize=4096)
    async with aiohttp.ClientSession() as http:
        async with http.post(proxy.url, json=padded_initialize(8192), headers=MCP_HEADERS) as r:
            assert r.status == 200, await r.text()
            session = r.headers["Mcp-Session-Id"]
            await r.read()
        headers = {**MCP_HEADERS, "Mcp-Session-Id": session}
        async with http.post(proxy.url, json=tools_call(1, text="hi"), headers=headers) as r:
            assert r.status == 200
            assert (await answer_of(r))["result"]["content"][0]["text"] == "hi"
        assert await labelled_metric(proxy, "proxyrunner_initialize_not_stored_total") == 1
        # An initialize within the limit is kept (and not counted).
        await raw_initialize(http, proxy.url)
        assert await labelled_metric(proxy, "proxyrunner_initialize_not_stored_total") == 1


async def _refused_for_now(response: aiohttp.ClientResponse) -> None:
    assert response.status == 503, await response.text()
    assert response.headers["Retry-After"]
    assert (await response.json())["error"]["code"] == -32002


@pytest.mark.redis
async def test_new_sessions_beyond_max_pending_get_503_while_redis_is_down(
    start_backend: StartBackend, start_proxy: StartProxy, redis_server: RedisServer
) -> None:
    config = {
        "name": "demo",
        "remote_url": start_backend("alpha").url,
        "session_redis": {"address": redis_server.address, "key_prefix": "e2e"},
        "max_pending_sessions": 2,
    }
    proxy = start_proxy(config, env={"THV_SESSION_REDIS_PASSWORD": redis_server.password})
    redis_server.kill()
    async with aiohttp.ClientSession() as http:
        kept = [await raw_initialize(http, proxy.url) for _ in range(2)]
        async with http.post(proxy.url, json=INIT, headers=MCP_HEADERS) as response:
            await _refused_for_now(response)
        assert (
            await labelled_metric(
                proxy, "proxyrunner_sessions_refused_total", reason="pending_full"
            )
            == 1
        )
        for session in kept:
            headers = {**MCP_HEADERS, "Mcp-Session-Id": session}
            async with http.post(proxy.url, json=tools_call(1, text="x"), headers=headers) as r:
                assert r.status == 200, await r.text()
