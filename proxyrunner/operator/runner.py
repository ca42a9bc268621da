"""``proxyrunner operator``: leader election around the controller, and a clean stop.

Only the leader reconciles. SIGTERM stops the controller between reconciles and
releases the Lease, so a successor takes over at once instead of after its expiry.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Final

import structlog
from kubernetes_asyncio import client

from proxyrunner.errors import StartupError
from proxyrunner.kube.errors import KubeError, KubeNotFound
from proxyrunner.lifecycle import StopSignals
from proxyrunner.operator.children import FIELD_MANAGER
from proxyrunner.operator.controller import Controller, ControllerSettings
from proxyrunner.operator.leader import LeaderElector, LeaseSettings, LostLeadership
from proxyrunner.operator.objects import Objects
from proxyrunner.operator.reconcile import ProxySettings, Reconciler
from proxyrunner.operator.spec import KIND

EXIT_OK: Final = 0
EXIT_LOST_LEADERSHIP: Final = 4


@dataclass(frozen=True, slots=True)
class OperatorSettings:
    proxy: ProxySettings
    lease: LeaseSettings
    controller: ControllerSettings


async def _check_crd(objects: Objects, namespace: str | None) -> None:
    try:
        await objects.list(KIND, namespace)
    except KubeNotFound as exc:
        raise StartupError(
            "the MCPServer CRD (mcpservers.toolhive.stacklok.dev) is not installed; "
            "apply config/crd/ or install the chart with operator.enabled=true"
        ) from exc
    except KubeError as exc:
        raise StartupError(f"cannot list MCPServers: {exc}") from exc


async def run_operator(
    api: client.ApiClient, settings: OperatorSettings, log: structlog.stdlib.BoundLogger
) -> int:
    """Run until SIGTERM/SIGINT (exit 0) or until leadership is lost (exit 4)."""
    objects = Objects(api, FIELD_MANAGER)
    await _check_crd(objects, settings.controller.namespace)
    reconciler = Reconciler(objects, settings.proxy, log, identity=settings.lease.identity)
    controller = Controller(api, objects, reconciler.reconcile, settings.controller, log)
    elector = LeaderElector(objects, settings.lease, log)
    signals = StopSignals(log)
    signals.install()

    async def lead() -> None:
        # Returning (on a stop request) makes the elector release the Lease.
        work = asyncio.ensure_future(controller.run())
        stop = asyncio.ensure_future(signals.stop_requested.wait())
        try:
            await asyncio.wait({work, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (work, stop):
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await work  # a controller that crashed raises here

    election = asyncio.ensure_future(elector.run(lead))
    waiting = asyncio.ensure_future(signals.stop_requested.wait())
    try:
        await asyncio.wait({election, waiting}, return_when=asyncio.FIRST_COMPLETED)
        # A leader's lead() ends on the same stop request and the elector then releases
        # the Lease: wait for that. A candidate that is stopped before it leads just goes.
        if not election.done() and not elector.leading:
            election.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await election
    except LostLeadership as exc:
        log.error(
            "lost the leader Lease; exiting so that only one replica reconciles", error=str(exc)
        )
        return EXIT_LOST_LEADERSHIP
    finally:
        waiting.cancel()
        signals.uninstall()
    log.info("operator stopped")
    return EXIT_OK
