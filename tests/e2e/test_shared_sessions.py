"""Several proxyrunner processes sharing one Redis behave as one proxy: any replica serves
any session, deletes are seen everywhere, a replica can die, Redis can restart."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest
from mcp import Client

from proxyrunner.sessions.record import new_session_id
from tests.balancer import balancer
from tests.conftest import StartBackend, StartProxy
from tests.helpers import MCP_HEADERS, raw_initialize, tool_text, tools_call, whoami
from tests.procs import Proxy, eventually, http_status
from tests.redis_server import RedisServer


def shared_config(redis: RedisServer, backends: list[str], **extra: object) -> dict[str, Any]:
    return {
        "name": "demo",
        "backend_urls": backends,
        "session_redis": {"address": redis.address, "db": 0, "key_prefix": "e2e"},
        **extra,
    }


def start_replicas(
    start_proxy: StartProxy, redis: RedisServer, backends: list[str], count: int, **extra: object
) -> list[Proxy]:
    env = {"THV_SESSION_REDIS_PASSWORD": redis.password}
    return [
        start_proxy(shared_config(redis, backends, **extra), env=env, label=f"replica{i}")
        for i in range(count)
    ]


async def post_sse_json(
    http: aiohttp.ClientSession, url: str, session_id: str, body: dict[str, Any]
) -> tuple[int, str]:
    headers = {**MCP_HEADERS, "Mcp-Session-Id": session_id, "MCP-Protocol-Version": "2025-06-18"}
    async with http.post(url, json=body, headers=headers) as response:
        return response.status, await response.text()


@pytest.mark.parametrize("replicas", [2, 3])
@pytest.mark.timeout(120)
async def test_any_replica_serves_any_session_round_robin(
    replicas: int,
    start_backend: StartBackend,
    start_proxy: StartProxy,
    redis_server: RedisServer,
) -> None:
    alpha, beta = start_backend("alpha"), start_backend("beta")
    proxies = start_replicas(start_proxy, redis_server, [alpha.url, beta.url], replicas)
    async with balancer([p.base for p in proxies]) as lb:
        for _ in range(2):
            async with Client(f"{lb.url}/mcp", mode="legacy") as client:
                first = (await whoami(client))["id"]
                for _ in range(15):
                    assert (await whoami(client))["id"] == first
        assert all(count > 5 for count in lb.served.values()), lb.served


@pytest.mark.timeout(90)
async def test_delete_through_one_replica_is_404_on_another_within_a_second(
    start_backend: StartBackend, start_proxy: StartProxy, redis_server: RedisServer
) -> None:
    alpha = start_backend("alpha")
    one, two = start_replicas(start_proxy, redis_server, [alpha.url], 2)
    async with aiohttp.ClientSession() as http:
        session_id = await raw_initialize(http, one.url)
        status, _ = await post_sse_json(http, one.url, session_id, tools_call(1, "whoami"))
        assert status == 200  # replica one has it cached now
        async with http.delete(two.url, headers={"Mcp-Session-Id": session_id}) as response:
            assert response.status in (200, 204)
        deleted_at = time.monotonic()
        while True:
            status, body = await post_sse_json(http, one.url, session_id, tools_call(2, "whoami"))
            if status == 404:
                break
            assert time.monotonic() - deleted_at < 1.0, "replica one still served the session"
            await asyncio.sleep(0.02)
        assert '"code":-32001' in body.replace(" ", "")


@pytest.mark.timeout(120)
async def test_client_continues_through_another_replica_after_one_is_killed(
    start_backend: StartBackend, start_proxy: StartProxy, redis_server: RedisServer
) -> None:
    alpha = start_backend("alpha")
    proxies = start_replicas(start_proxy, redis_server, [alpha.url], 2)
    async with (
        balancer([p.base for p in proxies]) as lb,
        Client(f"{lb.url}/mcp", mode="legacy") as client,
    ):
        assert (await whoami(client))["id"] == "alpha"
        proxies[0].kill()
        await eventually(lambda: proxies[0].base not in lb.ready, 5, "the balancer to notice")
        for _ in range(5):
            assert (await whoami(client))["id"] == "alpha"
    assert proxies[1].alive()


@pytest.mark.timeout(120)
async def test_cached_sessions_survive_a_redis_restart(
    start_backend: StartBackend, start_proxy: StartProxy, redis_server: RedisServer
) -> None:
    alpha = start_backend("alpha")
    (proxy,) = start_replicas(start_proxy, redis_server, [alpha.url], 1)
    async with Client(proxy.url, mode="legacy") as client:
        assert "x" in tool_text(await client.call_tool("echo", {"text": "x"}))
        redis_server.kill()
        for i in range(5):
            assert str(i) in tool_text(await client.call_tool("echo", {"text": str(i)}))
        await eventually(lambda: http_status(f"{proxy.base}/readyz") == 503, 5, "readyz 503")
        redis_server.start()
        await eventually(lambda: http_status(f"{proxy.base}/readyz") == 200, 15, "readyz 200")
        assert "y" in tool_text(await client.call_tool("echo", {"text": "y"}))
    assert proxy.alive()


def test_wrong_redis_password_exits_3_naming_redis_not_the_password(
    start_backend: StartBackend, start_proxy: StartProxy, redis_server: RedisServer
) -> None:
    alpha = start_backend("alpha")
    wrong = "definitely-wrong-password-42"
    proxy = start_proxy(
        shared_config(redis_server, [alpha.url]),
        env={"THV_SESSION_REDIS_PASSWORD": wrong},
        wait=False,
    )
    output = proxy.exits_with(3)
    assert "Redis" in output
    assert "authentication failed" in output
    assert wrong not in output
    assert redis_server.password not in output


@pytest.mark.timeout(120)
async def test_warm_sessions_cost_at_most_005_redis_commands_per_request(
    start_backend: StartBackend, start_proxy: StartProxy, redis_server: RedisServer
) -> None:
    alpha = start_backend("alpha")
    # Short intervals so that refreshes and re-reads happen several times during the run:
    # the budget counts every command, background ones included.
    (proxy,) = start_replicas(
        start_proxy,
        redis_server,
        [alpha.url],
        1,
        session_local_max_age="2s",
        session_touch_interval="2s",
    )
    async with aiohttp.ClientSession() as http:
        sessions = [await raw_initialize(http, proxy.url) for _ in range(4)]
        before = redis_server.total_commands()
        requests = 0
        started = time.monotonic()

        async def worker(session_id: str) -> int:
            done = 0
            while done < 750:
                status, _ = await post_sse_json(
                    http, proxy.url, session_id, tools_call(done, text="k")
                )
                assert status == 200
                done += 1
            return done

        requests = sum(await asyncio.gather(*(worker(s) for s in sessions)))
        elapsed = time.monotonic() - started
    commands = redis_server.total_commands() - before
    per_request = commands / requests
    print(
        f"redis commands per request: {per_request:.4f} ({commands}/{requests} in {elapsed:.1f}s)"
    )
    assert requests == 3000
    assert per_request <= 0.05


async def test_session_ids_the_proxy_could_not_have_minted_cost_no_redis_command(
    start_backend: StartBackend, start_proxy: StartProxy, redis_server: RedisServer
) -> None:
    alpha = start_backend("alpha")
    (proxy,) = start_replicas(start_proxy, redis_server, [alpha.url], 1)
    garbage = ["nope", "x" * 2000, "!" * 43, "a" * 42, "a" * 44, "../../etc/passwd"]
    unknown = [new_session_id() for _ in range(10)]  # well formed, never issued

    async def all_not_found(ids: list[str], rounds: int) -> int:
        before = redis_server.total_commands()
        for _ in range(rounds):
            for session_id in ids:
                status, body = await post_sse_json(http, proxy.url, session_id, tools_call(1))
                assert status == 404, (session_id, body)
                assert '"code":-32001' in body.replace(" ", "")
        return redis_server.total_commands() - before

    async with aiohttp.ClientSession() as http:
        # 300 lookups of garbage: nothing reaches Redis (a background command or two may).
        assert await all_not_found(garbage, 50) <= 3
        # The contrast that shows the count is real: each plausible id is one GET.
        assert await all_not_found(unknown, 1) >= len(unknown)
