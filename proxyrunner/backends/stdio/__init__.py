"""stdio servers behind HTTP: a pure multiplexer (one server conversation, many sessions)
and the loopback HTTP faces the data path talks to."""

from proxyrunner.backends.stdio.bridge import StdioBridge

__all__ = ["StdioBridge"]
