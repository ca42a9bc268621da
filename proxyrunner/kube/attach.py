"""A stdio server in a pod, reached through the pod's attach subresource.

``GET /api/v1/namespaces/<ns>/pods/<pod>/attach?stdin=true&stdout=true&stderr=true``
upgraded to a WebSocket speaking the ``v4.channel.k8s.io`` subprotocol: every binary
message starts with one byte naming its stream (0 stdin, 1 stdout, 2 stderr, 3 the error
channel, which carries a final JSON ``Status``), followed by that stream's bytes. Frames
are cut wherever the kubelet's buffers end, not at message boundaries, so stdout is
re-assembled into lines here.

The container is started with ``stdin: true, stdinOnce: false``: the server keeps running
when an attach stream ends, and every proxy replica may attach at the same time (each sees
all of stdout; the bridge's replica-unique ids keep their answers apart).
"""

from __future__ import annotations

import contextlib
import json
from typing import Any, Final

import aiohttp
import structlog
from kubernetes_asyncio import client
from kubernetes_asyncio.stream import WsApiClient

from proxyrunner.backends.channel import MAX_LINE, StderrTail

STDIN: Final = 0
STDOUT: Final = 1
STDERR: Final = 2
ERROR: Final = 3
CONTAINER: Final = "mcp"


def stdin_frame(line: bytes) -> bytes:
    """One message for the server's stdin: channel byte, the line, its newline."""
    return bytes((STDIN,)) + line + b"\n"


class LineAssembler:
    """stdout frames in, complete lines out; a line over MAX_LINE is dropped whole."""

    def __init__(self) -> None:
        self._partial = bytearray()
        self._skipping = False
        self.oversized = 0

    def feed(self, data: bytes) -> list[bytes]:
        lines: list[bytes] = []
        start = 0
        while (end := data.find(b"\n", start)) != -1:
            if not self._skipping:
                self._partial += data[start:end]
                lines.append(bytes(self._partial).rstrip(b"\r"))
            self._partial.clear()
            self._skipping = False
            start = end + 1
        if not self._skipping:
            self._partial += data[start:]
            if len(self._partial) > MAX_LINE:
                self._partial.clear()
                self._skipping = True
                self.oversized += 1
        return lines


def describe_status(payload: bytes) -> str:
    """The error channel's Status, in one line (it says why the stream ended)."""
    try:
        status: Any = json.loads(payload)
    except ValueError:
        return payload.decode("utf-8", "replace")[:300]
    if not isinstance(status, dict):
        return str(status)[:300]
    return str(status.get("message") or status.get("status") or status)[:300]


class AttachChannel:
    """A MessageChannel over an attach WebSocket."""

    def __init__(
        self,
        ws: aiohttp.ClientWebSocketResponse,
        log: structlog.stdlib.BoundLogger,
        owner: WsApiClient | None = None,
    ) -> None:
        self._ws = ws
        self._log = log
        self._owner = owner
        self._lines: list[bytes] = []
        self._stdout = LineAssembler()
        self.stderr = StderrTail()
        self.ended_because: str | None = None

    async def receive(self) -> bytes | None:
        while not self._lines:
            message = await self._ws.receive()
            if message.type != aiohttp.WSMsgType.BINARY:
                if message.type in (
                    aiohttp.WSMsgType.CLOSE,
                    aiohttp.WSMsgType.CLOSING,
                    aiohttp.WSMsgType.CLOSED,
                    aiohttp.WSMsgType.ERROR,
                ):
                    self.ended_because = self.ended_because or "the attach stream closed"
                    return None
                continue  # text or ping frames carry nothing for us
            data: bytes = message.data
            if not data:
                continue
            channel, payload = data[0], data[1:]
            if channel == STDOUT:
                self._lines.extend(self._stdout.feed(payload))
            elif channel == STDERR:
                self.stderr.add(payload, self._log)
            elif channel == ERROR and payload:
                self.ended_because = describe_status(payload)
                self._log.warning("attach stream reported an error", reason=self.ended_because)
        return self._lines.pop(0)

    async def send(self, line: bytes) -> None:
        if self._ws.closed:
            raise ConnectionError("the attach stream is closed")
        try:
            await self._ws.send_bytes(stdin_frame(line))
        except (ConnectionResetError, RuntimeError) as exc:
            raise ConnectionError("the attach stream is closed") from exc

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._ws.close()
        if self._owner is not None:
            await self._owner.close()


async def open_attach(
    api: client.ApiClient, namespace: str, pod: str, log: structlog.stdlib.BoundLogger
) -> AttachChannel:
    """Attach to the ``mcp`` container of ``pod`` with the API client's identity.
    A refused attach raises aiohttp's WSServerHandshakeError (its ``status`` says why:
    403 the Role, 400 a pod with no node), an unreachable API server an OSError: the
    WebSocket upgrade never goes through the generated client's status check, so no
    kubernetes_asyncio exception comes out of here."""
    ws_api = WsApiClient(configuration=api.configuration)
    try:
        # Typed as a plain API call; with a WsApiClient and _preload_content=False it
        # returns aiohttp's WebSocket connect context instead.
        core: Any = client.CoreV1Api(ws_api)
        connecting = await core.connect_get_namespaced_pod_attach(
            pod,
            namespace,
            container=CONTAINER,
            # Strings, not bools: the generated client would send Python's "True".
            stdin="true",
            stdout="true",
            stderr="true",
            tty="false",
            _preload_content=False,
        )
        ws = await connecting
    except BaseException:
        await ws_api.close()
        raise
    return AttachChannel(ws, log.bind(pod=pod), owner=ws_api)
