"""The attach end of a kubelet, for the stdio tier: the test API server has no kubelet.

It serves ``/api/v1/namespaces/<ns>/pods/<pod>/attach`` as a WebSocket speaking
``v4.channel.k8s.io``, in front of a "container": a real stdio MCP server process that
runs independently of the attach streams (as a container with ``stdinOnce: false`` does).
Every attached stream writes into the server's stdin and receives all of its stdout, cut
into small frames so that the client must re-assemble lines. When the server exits, each
stream gets a Status on the error channel and is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from aiohttp import WSMsgType, web

FRAME: int = 7  # bytes of stdout per frame: small, so lines always span frames
TOKEN: str = "attach-test-token"


@dataclass
class FakeKubelet:
    base: str
    process: asyncio.subprocess.Process
    streams: list[web.WebSocketResponse] = field(default_factory=list)
    attaches: list[dict[str, str]] = field(default_factory=list)

    def kill_container(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)


async def _pump_stdout(kubelet: FakeKubelet, stdout: asyncio.StreamReader, channel: int) -> None:
    while chunk := await stdout.read(4096):
        for start in range(0, len(chunk), FRAME):
            frame = bytes((channel,)) + chunk[start : start + FRAME]
            for ws in list(kubelet.streams):
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await ws.send_bytes(frame)


@contextlib.asynccontextmanager
async def fake_kubelet(
    command: Sequence[str] = (sys.executable, "-m", "proxyrunner.demo"),
    identity: str = "pod-0",
    token: str = TOKEN,
) -> AsyncIterator[FakeKubelet]:
    process = await asyncio.create_subprocess_exec(
        *command,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "MCP_TRANSPORT": "stdio", "DEMO_BACKEND_ID": identity},
        start_new_session=True,
    )
    assert process.stdin is not None
    assert process.stdout is not None
    assert process.stderr is not None
    stdin = process.stdin

    async def attach(request: web.Request) -> web.StreamResponse:
        if request.headers.get("Authorization") != f"Bearer {token}":
            return web.json_response({"kind": "Status", "code": 403}, status=403)
        kubelet.attaches.append(dict(request.query))
        ws = web.WebSocketResponse(protocols=("v4.channel.k8s.io",))
        await ws.prepare(request)
        kubelet.streams.append(ws)
        try:
            async for message in ws:
                if message.type == WSMsgType.BINARY and message.data[:1] == b"\x00":
                    stdin.write(message.data[1:])
                    await stdin.drain()
        finally:
            kubelet.streams.remove(ws)
        return ws

    app = web.Application()
    app.router.add_get("/api/v1/namespaces/{namespace}/pods/{pod}/attach", attach)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = int(runner.addresses[0][1])
    kubelet = FakeKubelet(f"http://127.0.0.1:{port}", process)

    async def container() -> None:
        assert process.stdout is not None
        assert process.stderr is not None
        await asyncio.gather(
            _pump_stdout(kubelet, process.stdout, 1), _pump_stdout(kubelet, process.stderr, 2)
        )
        code = await process.wait()
        status = {"kind": "Status", "status": "Failure", "message": f"container exited with {code}"}
        for ws in list(kubelet.streams):
            with contextlib.suppress(ConnectionError, RuntimeError):
                await ws.send_bytes(b"\x03" + json.dumps(status).encode())
                await ws.close()

    watcher = asyncio.get_running_loop().create_task(container())
    try:
        yield kubelet
    finally:
        kubelet.kill_container()
        with contextlib.suppress(ProcessLookupError):
            await process.wait()
        await watcher
        await runner.cleanup()
