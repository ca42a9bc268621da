"""Authorization and audit, built from the RunConfig's ``authz_config(_path)`` and
``audit_config(_path)``: the stages ``guard.build_guard`` puts around authentication.

``load_policies`` reads the files and parses the Cedar policies once, at startup (and
for ``proxyrunner config``); a bad policy, entity list or file is a ConfigError naming it,
so the process exits 2 before it listens. ``open_policy_stages`` then builds the stages
and opens the audit log, which the caller closes at shutdown.

Authorization without ``oidc_config`` is allowed, as in ToolHive: every request is then
ToolHive's anonymous principal, so policies on tools, prompts and resources still hold
(an allowlist of tools) while policies on claims deny everything. The startup log says so.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import structlog

from proxyrunner.audit.events import Origin
from proxyrunner.audit.sink import AuditLog
from proxyrunner.authz.cedar import CedarAuthorizer
from proxyrunner.authz.files import load_authz_file
from proxyrunner.config import RunConfig
from proxyrunner.config.audit import AUDIT_CONFIG, AUDIT_CONFIG_FIELD, AuditConfig
from proxyrunner.config.files import load_section_file
from proxyrunner.errors import ConfigError
from proxyrunner.metrics import Metrics
from proxyrunner.proxy.pipeline import Stage
from proxyrunner.proxy.stages.audit import Audit
from proxyrunner.proxy.stages.authz import Authorization


@dataclass(frozen=True, slots=True)
class Policies:
    """What ``load_policies`` read: each None when off."""

    authorizer: CedarAuthorizer | None = None
    audit: AuditConfig | None = None


def load_policies(config: RunConfig) -> Policies:
    """The authorizer and the audit settings ``config`` asks for, files read. Raises
    ConfigError naming the file, field or policy at fault."""
    policy = config.policy
    authorizer = None
    if policy.authz is not None:
        authorizer = CedarAuthorizer.from_config(policy.authz, server_name=config.name)
    elif policy.authz_path:
        path = Path(policy.authz_path)
        try:
            authorizer = CedarAuthorizer.from_config(load_authz_file(path), config.name)
        except ConfigError as exc:
            # Name the file once: problems from reading it already start with it.
            prefix = f"{path}: "
            raise ConfigError(
                [p if p.startswith(prefix) else prefix + p for p in exc.problems]
            ) from None
    audit = policy.audit
    if policy.audit_path:
        audit = load_section_file(Path(policy.audit_path), AUDIT_CONFIG.read, AUDIT_CONFIG_FIELD)
    return Policies(authorizer, audit if audit is not None and audit.enabled else None)


@dataclass(frozen=True, slots=True)
class PolicyStages:
    """The stages that go before and after authentication, and what closes the audit log."""

    before: tuple[Stage, ...] = ()
    """The audit: before authentication, so that its refusals are recorded too."""
    after: tuple[Stage, ...] = ()
    """Authorization: it needs the principal authentication found."""
    close: Callable[[], Awaitable[None]] | None = None


def open_policy_stages(
    config: RunConfig,
    policies: Policies,
    metrics: Metrics,
    log: structlog.stdlib.BoundLogger,
    replica: str,
) -> PolicyStages:
    """The stages for ``policies``; opens the audit log (StartupError when its file cannot
    be opened), which ``close`` closes."""
    after: tuple[Stage, ...] = ()
    if policies.authorizer is not None:
        after = (Authorization(policies.authorizer, metrics, log.bind(component="authz")),)
        if not config.identity.authenticated:
            log.warning(
                "authz_config without oidc_config: every request is the anonymous "
                "principal, so only policies that need no identity can permit anything"
            )
    audit = policies.audit
    if audit is None:
        return PolicyStages(after=after)
    sink = AuditLog.open(audit)
    transport = "sse" if config.backend.served_protocol == "sse" else "http"
    origin = Origin(component=audit.component or config.name, replica=replica, transport=transport)
    log.info("audit trail on", audit_log=sink.where, replica=replica)

    async def close() -> None:
        sink.close()

    return PolicyStages(before=(Audit(audit, sink, origin),), after=after, close=close)
