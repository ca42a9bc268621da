"""Where audit events go: one JSON line each, to ``log_file`` or to stdout.

**A file** is opened once at startup (append, created 0600 like ToolHive's, line
buffered), so each event is one ``write()`` of one whole line with O_APPEND: lines never
interleave, and a log shipper tailing the file sees each line complete. A path that
cannot be opened stops the start (``StartupError`` naming ``audit_config.log_file``):
an operator who asked for an audit trail must not get a proxy that silently keeps none.

**Without a file** events go to stdout through the stdlib logger ``proxyrunner.audit``,
which has its own handler and does not propagate: the lines are the raw event JSON, not
wrapped in the structlog format of the main log (which goes to stderr), so a collector
can tell audit from diagnostics by the stream alone.

**Never in the way of traffic.** The write is a plain buffered write on the event loop,
with no fsync and no thread: it lands in the page cache, which a slow disk delays only
once the kernel's dirty-page limit is reached, and one line costs less than a thread
hand-off would. A failing write (disk full, a closed stdout) is logged once as a warning,
the event is lost, and the request goes on; later events are still tried.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Mapping
from typing import Any, Final, TextIO

from proxyrunner.config.audit import AuditConfig
from proxyrunner.errors import StartupError
from proxyrunner.logging import get_logger

AUDIT_LOGGER: Final = "proxyrunner.audit"
_FILE_MODE: Final = 0o600


class _Warned:
    """Logs a failed write once per sink: a full disk must not flood the main log."""

    __slots__ = ("_done", "_where")

    def __init__(self, where: str) -> None:
        self._where = where
        self._done = False

    def __call__(self, error: BaseException | None) -> None:
        if self._done:
            return
        self._done = True
        get_logger().warning(
            "audit events are being lost: the audit log cannot be written",
            audit_log=self._where,
            error=repr(error) if error is not None else None,
        )


class _StdoutHandler(logging.StreamHandler):  # type: ignore[type-arg]
    def __init__(self, warn: _Warned) -> None:
        super().__init__(sys.stdout)
        self.setFormatter(logging.Formatter("%(message)s"))
        self._warn = warn

    def handleError(self, record: logging.LogRecord) -> None:
        # The stdlib would print a traceback to stderr for every failed event.
        self._warn(sys.exc_info()[1])


class AuditLog:
    """Writes audit events as JSON lines. Build it with ``open``; ``close`` at shutdown."""

    __slots__ = ("_file", "_handler", "_logger", "_warn", "where")

    def __init__(self, file: TextIO | None, where: str) -> None:
        """``file`` receives the lines; None writes them to stdout via ``proxyrunner.audit``."""
        self.where = where
        """The file's path, or ``stdout``: for logs and the startup line."""
        self._file = file
        self._warn = _Warned(where)
        self._logger: logging.Logger | None = None
        self._handler: logging.Handler | None = None
        if file is None:
            logger = logging.getLogger(AUDIT_LOGGER)
            handler = _StdoutHandler(self._warn)
            # One sink owns the logger at a time: a second open (tests, a restart in
            # process) replaces the handler rather than doubling every line.
            logger.handlers[:] = [handler]
            logger.setLevel(logging.INFO)
            logger.propagate = False
            self._logger, self._handler = logger, handler

    @classmethod
    def open(cls, config: AuditConfig) -> AuditLog:
        """The sink ``config`` asks for; StartupError if its ``log_file`` cannot be opened."""
        if not config.log_file:
            return cls(None, "stdout")
        path = config.log_file
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, _FILE_MODE)
            file = os.fdopen(fd, "a", buffering=1, encoding="utf-8")
        except OSError as exc:
            raise StartupError(
                f"audit_config.log_file: cannot open {path!r} for appending: {exc.strerror or exc}"
            ) from exc
        return cls(file, path)

    def write(self, event: Mapping[str, Any]) -> None:
        """Write one event; never raises (a failure is warned about once)."""
        try:
            line = json.dumps(event, separators=(",", ":"), ensure_ascii=False, default=str)
        except (ValueError, RecursionError) as exc:  # a bug, but never the client's problem
            self._warn(exc)
            return
        if self._logger is not None:
            self._logger.info(line)
            return
        file = self._file
        if file is None:
            return
        try:
            file.write(line + "\n")
        except (OSError, ValueError) as exc:  # ValueError: written after close
            self._warn(exc)

    def close(self) -> None:
        if self._file is not None:
            file, self._file = self._file, None
            try:
                file.close()
            except OSError as exc:
                self._warn(exc)
        if self._logger is not None and self._handler is not None:
            self._handler.flush()
            if self._handler in self._logger.handlers:
                self._logger.removeHandler(self._handler)
            self._logger = None
