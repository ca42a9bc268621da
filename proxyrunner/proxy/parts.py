"""Everything the data path needs, built once by the composition root."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import structlog

from proxyrunner.backends.directory import BackendDirectory
from proxyrunner.config import RunConfig
from proxyrunner.metrics import Metrics
from proxyrunner.proxy.forward import Forwarder
from proxyrunner.proxy.pipeline import Stage
from proxyrunner.proxy.protected_resource import ProtectedResource
from proxyrunner.sessions.store import SessionStore
from proxyrunner.traffic import Traffic

if TYPE_CHECKING:
    from proxyrunner.telemetry.runtime import Telemetry


@dataclass(frozen=True, slots=True)
class ProxyParts:
    config: RunConfig
    store: SessionStore
    directory: BackendDirectory
    metrics: Metrics
    traffic: Traffic
    forwarder: Forwarder
    log: structlog.stdlib.BoundLogger
    guard: Guard = field(default_factory=lambda: Guard())
    """Identity, authorization and audit; empty when the RunConfig asks for none."""
    telemetry: Telemetry | None = None
    """OpenTelemetry, when telemetry_config switches tracing or metrics on."""


@dataclass(frozen=True, slots=True)
class Guard:
    """The identity side of the pipeline, built by ``guard.build_guard``."""

    stages: Sequence[Stage] = ()
    """Audit, authentication, authorization: in this order, after the header check."""
    resource: ProtectedResource | None = None
    """The ProtectedResource (RFC 9728 metadata) when oidc_config is set."""
    health: Sequence[Callable[[], tuple[bool, str]]] = ()
    """(usable, reason) of what the stages depend on (the IdP), for /readyz."""
