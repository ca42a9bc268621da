"""Everything the data path needs, built once by the composition root."""

from __future__ import annotations

from dataclasses import dataclass

import structlog

from proxyrunner.backends.directory import BackendDirectory
from proxyrunner.config import RunConfig
from proxyrunner.metrics import Metrics
from proxyrunner.proxy.forward import Forwarder
from proxyrunner.sessions.store import SessionStore
from proxyrunner.traffic import Traffic


@dataclass(frozen=True, slots=True)
class ProxyParts:
    config: RunConfig
    store: SessionStore
    directory: BackendDirectory
    metrics: Metrics
    traffic: Traffic
    forwarder: Forwarder
    log: structlog.stdlib.BoundLogger
