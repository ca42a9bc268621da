"""``authz_config`` / ``authz_config_path`` and ``audit_config`` / ``audit_config_path``:
what each request may do (Cedar policies) and the record of what it did (the audit trail).

Each comes inline or as the path of a file holding the same object, as in ToolHive's
RunConfig. Config does no I/O: a path is kept as given and read at startup
(``proxyrunner.proxy.policy``), where a problem in the file is a config error too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from proxyrunner.config.problems import Problems

if TYPE_CHECKING:  # at run time a cycle: run_config -> policy -> audit -> fields -> environment
    from proxyrunner.config.audit import AuditConfig
    from proxyrunner.config.authz import AuthzConfig


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    """Authorization and audit; everything absent: neither (the embedded default)."""

    authz: AuthzConfig | None = None
    """``authz_config``: ToolHive's Cedar authorization config, inline."""
    authz_path: str = ""
    """``authz_config_path``: a JSON or YAML file holding that object."""
    audit: AuditConfig | None = None
    """``audit_config``: ToolHive's audit config, inline."""
    audit_path: str = ""
    """``audit_config_path``: a JSON or YAML file holding that object."""

    def __post_init__(self) -> None:
        p = Problems()
        # Two sources of one policy would leave the operator guessing which one ran.
        if self.authz is not None and self.authz_path:
            p.add("authz_config_path", "conflicts with authz_config; set one of them")
        if self.audit is not None and self.audit_path:
            p.add("audit_config_path", "conflicts with audit_config; set one of them")
        p.raise_if_any()

    @property
    def authorizes(self) -> bool:
        return self.authz is not None or bool(self.authz_path)

    @property
    def audits(self) -> bool:
        """Whether an audit config is given (its ``enabled`` may still switch it off)."""
        return self.audit is not None or bool(self.audit_path)
