"""Leader election on a coordination.k8s.io Lease, so two operator replicas never both
reconcile.

The rules, as client-go's leaderelection package has them:
- Every write carries the resourceVersion it was decided on (PUT, POST for creation), so
  of two candidates racing for a free Lease exactly one wins; the other gets 409.
- Expiry is judged on this process's monotonic clock, from when the holder's record was
  last seen to change, never from the timestamps in it: clocks of two nodes disagree.
- A leader that cannot renew within ``renew_deadline`` stops leading before its Lease can
  expire (``renew_deadline`` < ``lease_duration``), so a successor never overlaps it.
- Releasing on a clean stop empties the holder, so a successor need not wait it out.
"""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

import structlog

from proxyrunner.kube.errors import KubeConflict, KubeError
from proxyrunner.operator.objects import Objects

_LEASE: Final = "Lease"


@dataclass(frozen=True, slots=True)
class LeaseSettings:
    namespace: str
    name: str
    identity: str
    lease_duration: float = 15.0
    """Seconds a Lease counts as held after its holder last renewed it."""
    renew_deadline: float = 10.0
    """A leader that has not renewed for this long stops leading."""
    retry_period: float = 2.0
    """How often a candidate tries to acquire, and a leader renews."""

    def __post_init__(self) -> None:
        if not 0 < self.retry_period < self.renew_deadline < self.lease_duration:
            raise ValueError(
                "leader election: need 0 < retry_period < renew_deadline < lease_duration, "
                f"got {self.retry_period}, {self.renew_deadline}, {self.lease_duration}"
            )


class LostLeadership(Exception):
    """The Lease could not be renewed in time: another replica may lead now."""


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    def __init__(self, objects: Objects, settings: LeaseSettings, log: Any) -> None:
        self._objects = objects
        self._s = settings
        self._log: structlog.stdlib.BoundLogger = log.bind(
            lease=f"{settings.namespace}/{settings.name}", identity=settings.identity
        )
        self._observed: tuple[str, str] | None = None  # (holder, renewTime) last seen
        self._observed_at = 0.0
        self._lease: dict[str, Any] | None = None
        self.leading = False
        """True from acquiring the Lease until ``lead()`` has ended."""

    async def run(self, lead: Callable[[], Awaitable[None]]) -> None:
        """Wait to become leader, then run ``lead()`` while renewing. Returns when
        ``lead()`` returns (the Lease is released); raises LostLeadership if renewal
        fails first (``lead()`` is cancelled)."""
        await self._acquire()
        self.leading = True
        self._log.info("became the leader")
        work = asyncio.ensure_future(lead())
        renew = asyncio.ensure_future(self._keep_renewing())
        try:
            done, _ = await asyncio.wait({work, renew}, return_when=asyncio.FIRST_COMPLETED)
            if renew in done:
                work.cancel()
                await asyncio.gather(work, return_exceptions=True)
                renew.result()  # raises LostLeadership
            await work
        finally:
            for task in (work, renew):
                task.cancel()
            await asyncio.gather(work, renew, return_exceptions=True)
            self.leading = False
        await self._release()

    async def _acquire(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                if await self._try_acquire_or_renew(loop.time()):
                    return
            except KubeError as exc:
                self._log.warning("could not read or take the Lease", error=str(exc))
            await asyncio.sleep(self._s.retry_period)

    async def _keep_renewing(self) -> None:
        loop = asyncio.get_running_loop()
        last_renewed = loop.time()
        while True:
            await asyncio.sleep(self._s.retry_period)
            try:
                if await self._try_acquire_or_renew(loop.time()):
                    last_renewed = loop.time()
                    continue
            except KubeError as exc:
                self._log.warning("Lease renewal failed", error=str(exc))
            if loop.time() - last_renewed >= self._s.renew_deadline:
                raise LostLeadership(
                    f"Lease {self._s.namespace}/{self._s.name} not renewed within "
                    f"{self._s.renew_deadline:g}s"
                )

    def _spec(self, acquire_time: str, transitions: int) -> dict[str, Any]:
        return {
            "holderIdentity": self._s.identity,
            "leaseDurationSeconds": int(self._s.lease_duration),
            "acquireTime": acquire_time,
            "renewTime": _now(),
            "leaseTransitions": transitions,
        }

    async def _try_acquire_or_renew(self, now: float) -> bool:
        lease = await self._objects.get(_LEASE, self._s.namespace, self._s.name)
        if lease is None:
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": _LEASE,
                "metadata": {"name": self._s.name, "namespace": self._s.namespace},
                "spec": self._spec(_now(), 0),
            }
            try:
                self._lease = await self._objects.create(_LEASE, self._s.namespace, body)
            except KubeConflict:
                return False  # another candidate created it first
            return True
        spec = lease.get("spec") or {}
        holder = str(spec.get("holderIdentity") or "")
        record = (holder, str(spec.get("renewTime") or ""))
        if record != self._observed:
            self._observed, self._observed_at = record, now
        duration = float(spec.get("leaseDurationSeconds") or self._s.lease_duration)
        ours = holder == self._s.identity
        if holder and not ours and now - self._observed_at < duration:
            return False  # held by someone alive
        transitions = int(spec.get("leaseTransitions") or 0) + (0 if ours else 1)
        acquired = str(spec.get("acquireTime") or _now()) if ours else _now()
        body = {**lease, "spec": self._spec(acquired, transitions)}
        try:
            self._lease = await self._objects.replace(body)
        except KubeConflict:
            return False  # changed since we read it: decide again on fresh data
        if not ours:
            self._log.info("took over the Lease", previous=holder or None)
        return True

    async def _release(self) -> None:
        lease = self._lease
        if lease is None:
            return
        spec = dict(lease.get("spec") or {})
        if spec.get("holderIdentity") != self._s.identity:
            return
        spec.update(holderIdentity="", leaseDurationSeconds=1, renewTime=_now())
        try:
            await self._objects.replace({**lease, "spec": spec})
            self._log.info("released the Lease")
        except KubeError as exc:
            self._log.warning("could not release the Lease; it expires by itself", error=str(exc))
