"""Span batching that can never slow traffic down: a bounded queue, one exporting
thread, and drops (counted) when the collector falls behind.

An ended span is encoded at once, on the event loop (a few microseconds: ``otlp``), and
its bytes appended to a deque (thread-safe, O(1)); export, retries and the collector's
latency stay on the worker thread, which runs little Python and so rarely takes the GIL
from the loop. Queued spans are small bytes, not objects holding dicts. When the queue
is full the *new* span is dropped: the queued ones are older, part of traces already
partly exported.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Sequence

from proxyrunner.telemetry.spans import Span

DropCounter = Callable[[int], None]
Encode = Callable[[Span], bytes]
Export = Callable[[Sequence[bytes]], bool]
"""Send one batch of encoded spans; True when the collector took it."""


class BoundedBatchProcessor:
    def __init__(
        self,
        encode: Encode,
        export: Export,
        *,
        max_queue_size: int = 2048,
        max_batch_size: int = 512,
        schedule_delay: float = 1.0,
        on_drop: DropCounter = lambda count: None,
        on_export_failure: Callable[[], None] = lambda: None,
    ) -> None:
        self._encode = encode
        self._export = export
        self._max_queue = max_queue_size
        self._max_batch = min(max_batch_size, max_queue_size)
        self._delay = schedule_delay
        self._on_drop = on_drop
        self._on_failure = on_export_failure
        self._queue: collections.deque[bytes] = collections.deque()
        self._wake = threading.Event()
        self._export_lock = threading.Lock()
        self._stopped = False
        self._worker = threading.Thread(
            target=self._run, name="proxyrunner-span-export", daemon=True
        )
        self._worker.start()

    def on_end(self, span: Span) -> None:
        """A span ended (on the event loop): encode it and queue its bytes."""
        queue = self._queue
        if self._stopped or len(queue) >= self._max_queue:
            self._on_drop(1)
            return
        try:
            encoded = self._encode(span)
        except Exception:  # an encoding bug loses the span, never the request
            self._on_drop(1)
            return
        queue.append(encoded)
        if len(queue) >= self._max_batch and not self._wake.is_set():
            self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait(self._delay)
            self._wake.clear()
            if self._stopped:  # set by shutdown(), on another thread
                return
            self._export_all(deadline=None)

    def _export_all(self, deadline: float | None) -> bool:
        """Export what is queued; False if the deadline passed first."""
        with self._export_lock:
            queue = self._queue
            while queue:
                if deadline is not None and time.monotonic() >= deadline:
                    return False
                count = min(self._max_batch, len(queue))
                batch = [queue.popleft() for _ in range(count)]
                try:
                    sent = self._export(batch)
                except Exception:  # an exporter bug must not kill the worker
                    sent = False
                if not sent:
                    # The exporter already retried within its timeout: the batch is lost.
                    self._on_drop(count)
                    self._on_failure()
            return True

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Blocking: call it from a thread, never from the event loop."""
        return self._export_all(time.monotonic() + timeout_millis / 1000)

    def shutdown(self) -> None:
        self._stopped = True
        self._wake.set()
        self._worker.join(timeout=1.0)
        left = len(self._queue)
        if left:
            self._queue.clear()
            self._on_drop(left)

    @property
    def queued(self) -> int:
        return len(self._queue)
