"""Relaying a backend's answer to the client: JSON whole, everything else as it arrives.

The SSE rule: bytes are written to the client as they arrive (no buffering), and the proxy
only ever ends a stream between two events, with a ``retry:`` hint, so that a client
following the spec reconnects (through another replica) without losing an event. Only
listen streams (a GET, or a 2026-07-28 ``subscriptions/listen``) end on drain; any other
POST answered with SSE carries the result of a request in flight and runs to completion
like any other request.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final, Protocol

import aiohttp
import structlog
from aiohttp import web

from proxyrunner.mcp import jsonrpc
from proxyrunner.proxy.errors import BackendClosedEarly, BackendMisbehaved
from proxyrunner.proxy.events import EventReader, EventRewriter, Rewrite
from proxyrunner.proxy.headers import client_response_headers
from proxyrunner.proxy.heartbeat import Heartbeat, Heartbeats, StreamClosing
from proxyrunner.proxy.pipeline import AnswerWatcher, Exchange
from proxyrunner.proxy.upstream import BackendResponse, UpstreamResponse
from proxyrunner.traffic import Traffic

# JSON answers up to this size are relayed in one write; larger ones stream.
BUFFERED_RESPONSE_LIMIT: Final = 1024 * 1024


class Relay:
    def __init__(
        self, traffic: Traffic, log: structlog.stdlib.BoundLogger, keepalive: float = 15.0
    ) -> None:
        self._traffic = traffic
        self._log = log
        self._heartbeats = Heartbeats(keepalive)

    async def answer(
        self,
        exchange: Exchange,
        upstream: BackendResponse,
        client_sid: str | None,
        *,
        prefix: bytes = b"",
    ) -> web.StreamResponse:
        """Send the backend's answer to the client and release it. ``prefix`` is written
        before the backend's bytes (the legacy transport's own endpoint event)."""
        request, watchers, rewrites = exchange.request, exchange.watchers, exchange.rewrites
        headers = client_response_headers(upstream.headers, client_sid)
        if watchers:
            for watcher in watchers:
                watcher.on_response(upstream.status, upstream.headers)
        response: web.StreamResponse | None = None
        error: BaseException | None = None
        try:
            length = upstream.content_length
            event_stream = upstream.content_type == "text/event-stream"
            small = length is not None and length <= BUFFERED_RESPONSE_LIMIT
            if (small or rewrites) and not event_stream and not prefix:
                body = await upstream.read()
                if rewrites:
                    body = _rewrite_json(rewrites, body, upstream.headers)
                if watchers:
                    _watch_json(watchers, body)
                return web.Response(status=upstream.status, body=body, headers=headers)
            if event_stream:
                # Proxies in front (nginx) must not buffer it either.
                headers["X-Accel-Buffering"] = "no"
            response = web.StreamResponse(status=upstream.status, headers=headers)
            # The response copied them; a stream is held for hours, a second copy with it.
            del headers
            await response.prepare(request)
            if prefix:
                await response.write(prefix)
            reader = EventReader() if watchers and event_stream else None
            content: _Content = upstream.content
            if rewrites and event_stream:
                content = _RewrittenEvents(upstream, rewrites)
            if isinstance(upstream, UpstreamResponse):
                # Everything that reads the backend's headers has: from here on only the
                # body is relayed, for as long as the stream lasts.
                upstream.drop_head()
            if not event_stream:
                while chunk := await content.readany():
                    await response.write(chunk)
            else:
                beat = self._heartbeats.beat(response, upstream.content)
                try:
                    listening = (
                        request.method == "GET" or exchange.rpc_method in jsonrpc.LISTEN_METHODS
                    )
                    if listening:
                        # A listen stream: the one kind drain ends early (with a retry hint).
                        # Its loop is here, not in a coroutine of its own: a frame less
                        # (~270 B) held for as long as the stream lasts.
                        traffic = self._traffic
                        traffic.stream_begin(beat)
                        try:
                            at_boundary = True
                            while not (beat.closing and at_boundary):
                                # The read is this task's own: drain and the heartbeat fail
                                # it to end the stream (see ``heartbeat``).
                                beat.waiting = True
                                try:
                                    chunk = await content.readany()
                                except StreamClosing:
                                    break  # at a boundary, or the event's grace ran out
                                finally:
                                    beat.waiting = False
                                if not chunk:
                                    break
                                await response.write(chunk)
                                _watch_events(watchers, reader, chunk)
                                at_boundary = beat.at_boundary = _ends_event(chunk)
                            if beat.closing and at_boundary:
                                await response.write(f"retry: {traffic.retry_ms}\n\n".encode())
                        finally:
                            traffic.stream_end(beat)
                    else:
                        await _copy_events(content, response, watchers, reader, beat)
                finally:
                    await beat.stop()
            await response.write_eof()
            return response
        except (aiohttp.ClientError, ConnectionResetError) as exc:
            # The backend or the client went away mid-body. Once headers are out there is
            # nothing more to say; before that, the client gets a 502.
            error = exc
            self._log.debug("relay ended early", error=exc.__class__.__name__)
            if response is not None:
                return response
            raise BackendClosedEarly("backend closed the response early") from exc
        except BaseException as exc:
            error = exc
            raise
        finally:
            upstream.release()
            if watchers:
                for watcher in watchers:
                    watcher.on_end(error)


async def _copy_events(
    content: _Content,
    downstream: web.StreamResponse,
    watchers: Sequence[AnswerWatcher],
    reader: EventReader | None,
    beat: Heartbeat,
) -> None:
    """Copy an SSE answer to the end; the heartbeat may comment between events."""
    beat.waiting = True
    while chunk := await content.readany():
        beat.waiting = False
        await downstream.write(chunk)
        _watch_events(watchers, reader, chunk)
        beat.at_boundary = _ends_event(chunk)
        beat.waiting = True
    beat.waiting = False


def _rewrite_all(rewrites: Sequence[Rewrite], message: Any) -> Any:
    for rewrite in rewrites:
        message = rewrite(message)
    return message


def _rewrite_json(rewrites: Sequence[Rewrite], body: bytes, headers: Any) -> bytes:
    if headers.get("Content-Encoding", "identity") != "identity":
        # The identity stage asks the backend for identity encoding when it rewrites; an
        # answer it cannot read must not pass unfiltered.
        raise BackendMisbehaved("backend compressed an answer the proxy must filter")
    try:
        message = jsonrpc.parse_json(body)
    except ValueError:
        return body
    rewritten = _rewrite_all(rewrites, message)
    return body if rewritten is message else jsonrpc.dumps(rewritten)


class _Content(Protocol):
    async def readany(self) -> bytes: ...


class _RewrittenEvents:
    """A backend's SSE body seen through an EventRewriter: the relay copies what this
    returns instead of the backend's bytes (each complete event rewritten)."""

    def __init__(self, upstream: BackendResponse, rewrites: Sequence[Rewrite]) -> None:
        if upstream.headers.get("Content-Encoding", "identity") != "identity":
            raise BackendMisbehaved("backend compressed an answer the proxy must filter")
        self._content = upstream.content
        self._events = EventRewriter(lambda message: _rewrite_all(rewrites, message))
        self._ended = False

    async def readany(self) -> bytes:
        while not self._ended:
            chunk = await self._content.readany()
            if not chunk:
                self._ended = True
                return self._events.flush()
            out = self._events.feed(chunk)
            if out:
                return out
        return b""


def _ends_event(chunk: bytes) -> bool:
    return chunk.endswith((b"\n\n", b"\r\n\r\n", b"\r\r"))


def _watch_json(watchers: Sequence[AnswerWatcher], body: bytes) -> None:
    if not body:
        return
    for watcher in watchers:
        needle = watcher.needle
        if needle is None or needle.search(body):
            break
    else:
        return  # each watcher would ignore this answer: it is not parsed
    try:
        message = jsonrpc.parse_json(body)
    except ValueError:
        return
    for watcher in watchers:
        watcher.on_message(message)


def _watch_events(
    watchers: Sequence[AnswerWatcher], reader: EventReader | None, chunk: bytes
) -> None:
    if reader is None:
        return
    for message in reader.feed(chunk):
        for watcher in watchers:
            watcher.on_message(message)
