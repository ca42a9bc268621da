"""A real proxy process when its Redis fails: liveness never wavers, readiness says why,
no request gets a 500, and service comes back by itself."""

from __future__ import annotations

import asyncio
import secrets
import urllib.error
import urllib.request
from typing import Any

import aiohttp
import pytest

from tests.conftest import StartBackend, StartProxy
from tests.helpers import INIT, MCP_HEADERS, raw_initialize, tools_call
from tests.procs import Proxy, eventually
from tests.redis_server import RedisServer

KEY_PREFIX = "e2e:demo:session:"


@pytest.fixture
def proxy(start_backend: StartBackend, start_proxy: StartProxy, redis_server: RedisServer) -> Proxy:
    """A proxy with one backend, keeping sessions in ``redis_server``."""
    config = {
        "name": "demo",
        "backend_urls": [start_backend("alpha").url],
        "session_redis": {"address": redis_server.address, "key_prefix": "e2e"},
        "drain_delay": "0s",
    }
    return start_proxy(config, env={"THV_SESSION_REDIS_PASSWORD": redis_server.password})


def readyz(proxy: Proxy) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"{proxy.base}/readyz", timeout=1) as response:  # noqa: S310
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


async def call_in_session(http: aiohttp.ClientSession, proxy: Proxy, session_id: str) -> int:
    headers = {**MCP_HEADERS, "Mcp-Session-Id": session_id, "MCP-Protocol-Version": "2025-06-18"}
    async with http.post(proxy.url, json=tools_call(1, "whoami"), headers=headers) as response:
        await response.read()
        return response.status


async def initialize(http: aiohttp.ClientSession, proxy: Proxy) -> tuple[int, str | None]:
    async with http.post(proxy.url, json=INIT, headers=MCP_HEADERS) as response:
        await response.read()
        return response.status, response.headers.get("Mcp-Session-Id")


class HealthWatch:
    """Polls /health until stopped, keeping every status it got."""

    def __init__(self, http: aiohttp.ClientSession, proxy: Proxy) -> None:
        self.statuses: list[int] = []
        self._http = http
        self._url = f"{proxy.base}/health"
        self._task: asyncio.Task[None] | None = None

    async def _poll(self) -> None:
        while True:
            async with self._http.get(self._url) as response:
                self.statuses.append(response.status)
            await asyncio.sleep(0.02)

    async def __aenter__(self) -> HealthWatch:
        self._task = asyncio.create_task(self._poll())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        if self._task.done():
            self._task.result()  # a failed poll (connection refused...) fails the test
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


def background_failures(proxy: Proxy) -> list[dict[str, Any]]:
    return [e for e in proxy.log_events() if str(e.get("event", "")).startswith("background task")]


@pytest.mark.timeout(120)
async def test_health_stays_200_throughout_a_redis_outage(
    proxy: Proxy, redis_server: RedisServer
) -> None:
    async with aiohttp.ClientSession() as http:
        session_id = await raw_initialize(http, proxy.url)
        async with HealthWatch(http, proxy) as health:
            redis_server.kill()
            await eventually(lambda: readyz(proxy)[0] == 503, 10, "readyz 503")
            assert await call_in_session(http, proxy, session_id) == 200
            assert (await initialize(http, proxy))[0] == 200
            redis_server.start()
            await eventually(lambda: readyz(proxy)[0] == 200, 20, "readyz 200 again")
            assert await call_in_session(http, proxy, session_id) == 200
        assert len(health.statuses) >= 10
        assert set(health.statuses) == {200}, health.statuses
    assert proxy.alive()
    assert not background_failures(proxy)


@pytest.mark.timeout(120)
async def test_a_rotated_redis_password_is_an_outage_until_it_is_restored(
    proxy: Proxy, redis_server: RedisServer
) -> None:
    rotated = secrets.token_urlsafe(16)
    async with aiohttp.ClientSession() as http:
        session_id = await raw_initialize(http, proxy.url)
        redis_server.set_password(rotated)
        # The pooled connections are dropped (the subscription lives on, so the store
        # still takes Redis for usable): the next create must log in, and is refused.
        redis_server.kill_command_clients()
        status, first = await initialize(http, proxy)
        assert status == 200
        # A failover or restart would drop every connection: then all log in again.
        redis_server.kill_clients("normal", "pubsub")

        def unready_naming_authentication() -> bool:
            status, body = readyz(proxy)
            return status == 503 and "authentication failed" in body

        await eventually(unready_naming_authentication, 10, "readyz 503 naming authentication")
        _, body = readyz(proxy)
        assert redis_server.password not in body
        assert rotated not in body
        # Meanwhile: the existing session serves, and a burst of new ones is kept locally.
        assert await call_in_session(http, proxy, session_id) == 200
        burst = await asyncio.gather(*(initialize(http, proxy) for _ in range(20)))
        assert [status for status, _ in burst] == [200] * 20, burst
        created = [sid for _, sid in [(status, first), *burst] if sid is not None]
        assert len(created) == 21
        redis_server.restore_password()
        await eventually(lambda: readyz(proxy)[0] == 200, 20, "readyz 200 again")

        def all_in_redis() -> bool:
            return all(redis_server.integer("EXISTS", KEY_PREFIX + sid) == 1 for sid in created)

        await eventually(all_in_redis, 15, "the sessions created meanwhile to reach Redis")
        for sid in created[:3]:
            assert await call_in_session(http, proxy, sid) == 200
    assert proxy.alive()
    assert not background_failures(proxy)
    output = proxy.output()
    assert redis_server.password not in output
    assert rotated not in output
