"""OTLP/HTTP: POST an encoded export request to the collector, on an exporting thread.

Blocking on purpose (``http.client``, one keep-alive connection per signal): it runs on
the span worker or the metrics thread, never on the event loop. The OTLP specification's
rules: ``application/x-protobuf``, a 2xx is success, 429, 502, 503 and 504 are worth
retrying (with backoff, honouring ``Retry-After``), anything else is final. The whole
attempt, retries included, fits in ``timeout``: a dead collector holds the thread no
longer, and what it could not send is the caller's to count.

Errors never carry the configured headers (they may hold a token): only the status, or
the exception's class.
"""

from __future__ import annotations

import http.client
import ssl
import time
from collections.abc import Mapping
from typing import Final
from urllib.parse import urlsplit

_RETRYABLE: Final = frozenset((429, 502, 503, 504))
_FIRST_BACKOFF: Final = 0.25
_MAX_BACKOFF: Final = 2.0


class OtlpHttp:
    def __init__(
        self, url: str, headers: Mapping[str, str], timeout: float, user_agent: str
    ) -> None:
        parts = urlsplit(url)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or "localhost"
        self._port = parts.port
        self._path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._headers = {
            **headers,
            "Content-Type": "application/x-protobuf",
            "User-Agent": user_agent,
        }
        self._timeout = timeout
        self._connection: http.client.HTTPConnection | None = None
        self.last_failure = ""
        """What the latest failed export met: a status or an exception's class name."""

    def post(self, body: bytes) -> bool:
        """Send one export request; True when the collector took it."""
        deadline = time.monotonic() + self._timeout
        backoff = _FIRST_BACKOFF
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            status, retry_after = self._send(body, remaining)
            if status is not None and 200 <= status < 300:
                return True
            self.last_failure = str(status) if status is not None else self.last_failure
            if status is not None and status not in _RETRYABLE:
                return False
            wait = retry_after if retry_after is not None else backoff
            if time.monotonic() + wait >= deadline:
                return False
            time.sleep(wait)
            backoff = min(backoff * 2, _MAX_BACKOFF)

    def _send(self, body: bytes, timeout: float) -> tuple[int | None, float | None]:
        try:
            connection = self._connection or self._connect(timeout)
            connection.timeout = timeout
            if connection.sock is not None:
                connection.sock.settimeout(timeout)
            connection.request("POST", self._path, body, self._headers)
            response = connection.getresponse()
            response.read()  # the connection is reusable only once the body is consumed
        except (OSError, http.client.HTTPException) as exc:
            self.last_failure = type(exc).__name__
            self.close()
            return None, None
        if response.will_close:
            self.close()
        return response.status, _retry_after(response.getheader("Retry-After"))

    def _connect(self, timeout: float) -> http.client.HTTPConnection:
        if self._https:
            self._connection = http.client.HTTPSConnection(
                self._host, self._port, timeout=timeout, context=ssl.create_default_context()
            )
        else:
            self._connection = http.client.HTTPConnection(self._host, self._port, timeout=timeout)
        return self._connection

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def _retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` in seconds (the HTTP-date form is not worth
    parsing here: the backoff applies instead)."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if 0 <= seconds <= 60 else None
