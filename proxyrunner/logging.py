"""structlog setup: JSON lines in containers, readable console output on a terminal.

Library loggers (aiohttp, redis, kubernetes_asyncio) go through the same renderer, so a
container's log stream is one format. A redaction step drops any value whose key names a
secret, as a last line of defence: secrets are never logged on purpose; another replaces
session ids with their short hash, so that a log line never hands out a usable session.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, Literal

import structlog
from aiohttp.http_exceptions import HttpProcessingError

from proxyrunner.principal import short_hash

LogFormat = Literal["json", "console", "auto"]

_SECRET_KEY_PARTS = ("password", "secret", "token", "authorization")
# Keys whose values identify a session: a log reader must be able to follow a session,
# never to use it, so they are logged as a short hash.
_SESSION_KEYS = frozenset({"session", "session_id", "client_session"})


def _redact_secrets(
    _logger: Any, _name: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key in list(event):
        if any(part in key.lower() for part in _SECRET_KEY_PARTS):
            event[key] = "[redacted]"
    return event


def _hash_session_ids(
    _logger: Any, _name: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key in _SESSION_KEYS.intersection(event):
        value = event[key]
        if isinstance(value, str):
            event[key] = short_hash(value)
    return event


class _ParserErrorsWithoutBytes(logging.Filter):
    """aiohttp's server logs a request it cannot parse at ERROR with the exception, whose
    message quotes the raw bytes around the fault: an ``Authorization`` header included.
    Such a record becomes one line naming the error class and status; the bytes and the
    traceback (aiohttp's parser, never ours) are dropped. Other records pass unchanged."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        while exc is not None and not isinstance(exc, HttpProcessingError):
            exc = exc.__cause__ or exc.__context__
        if isinstance(exc, HttpProcessingError):
            # A client's malformed request is the client's problem: info, not an error.
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.msg = "request rejected by the HTTP parser: %s (HTTP %s)"
            record.args = (exc.__class__.__name__, exc.code)
            record.exc_info = record.exc_text = None
            record.stack_info = None
            # The logger let the record through at ERROR; at INFO it must pass the level.
            return logging.getLogger().isEnabledFor(logging.INFO)
        return True


def configure_logging(fmt: LogFormat = "auto", level: str = "info") -> None:
    if fmt == "auto":
        fmt = "console" if sys.stderr.isatty() else "json"
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _redact_secrets,
        _hash_session_ids,
    ]
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                *([structlog.processors.format_exc_info] if fmt == "json" else []),
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    server = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, _ParserErrorsWithoutBytes) for f in server.filters):
        server.addFilter(_ParserErrorsWithoutBytes())
    root.setLevel(numeric)
    # aiohttp's access log would cost a line per request; errors still come through.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def get_logger(name: str = "proxyrunner") -> structlog.stdlib.BoundLogger:
    return structlog.stdlib.get_logger(name)
