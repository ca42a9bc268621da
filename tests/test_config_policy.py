"""``authz_config(_path)`` and ``audit_config(_path)`` in the RunConfig: ToolHive's JSON
accepted as it writes it, conflicts refused, and ``proxyrunner config`` checking the
Cedar policies too (exit 2 naming the policy)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from proxyrunner.cli import main
from proxyrunner.config import dump_config, parse_config
from proxyrunner.config.audit import AuditConfig
from proxyrunner.errors import ConfigError

AUTHZ = {
    "version": "1.0",
    "type": "cedarv1",
    "cedar": {
        "policies": ['permit(principal, action == Action::"call_tool", resource == Tool::"echo");'],
        "entities_json": "[]",
    },
}
# As ToolHive's operator renders a RunConfig: audit_config with pkg/audit's camelCase tags.
TOOLHIVE = {
    "schema_version": "v0.1.0",
    "name": "github",
    "remote_url": "http://127.0.0.1:9/mcp",
    "authz_config": AUTHZ,
    "audit_config": {
        "component": "github-mcp",
        "eventTypes": ["mcp_tool_call"],
        "includeRequestData": True,
        "maxDataSize": 4096,
        "logFile": "/var/log/audit.log",
        "detectApplicationErrors": True,
    },
}


def test_toolhive_authz_and_audit_json_is_accepted_as_written_and_dumped_back() -> None:
    config, unknown = parse_config(TOOLHIVE)
    assert unknown == ()
    assert config.policy.authz is not None
    assert config.policy.authz.policies == tuple(AUTHZ["cedar"]["policies"])  # type: ignore[index]
    assert config.policy.audit == AuditConfig(
        component="github-mcp",
        event_types=("mcp_tool_call",),
        include_request_data=True,
        max_data_size=4096,
        log_file="/var/log/audit.log",
    )
    dumped = dump_config(config)
    assert dumped["authz_config"] == AUTHZ
    assert dumped["audit_config"]["maxDataSize"] == 4096
    assert parse_config(dumped)[0] == config


def test_an_inline_config_and_a_path_to_one_are_refused_together() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(
            {
                **TOOLHIVE,
                "authz_config_path": "/etc/authz.json",
                "audit_config_path": "/etc/audit.json",
            }
        )
    assert caught.value.problems == [
        "authz_config_path: conflicts with authz_config; set one of them",
        "audit_config_path: conflicts with audit_config; set one of them",
    ]


def test_validating_a_config_checks_its_policy_files_and_names_a_bad_policy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    authz = tmp_path / "authz.yaml"
    authz.write_text(json.dumps({**AUTHZ, "cedar": {"policies": ["permit(principal,"]}}))
    audit = tmp_path / "audit.json"
    audit.write_text(json.dumps({"maxDataSize": 10}))
    run_config = tmp_path / "runconfig.json"
    doc = {"name": "demo", "remote_url": "http://127.0.0.1:9/mcp"}
    run_config.write_text(
        json.dumps({**doc, "authz_config_path": str(authz), "audit_config_path": str(audit)})
    )
    assert main(["config", "validate", str(run_config)]) == 2
    assert f"{authz}: authz_config.cedar.policies[0] (policy0" in capsys.readouterr().err
    authz.write_text(json.dumps(AUTHZ))
    assert main(["config", "validate", str(run_config)]) == 0
    audit.write_text(json.dumps({"maxDataSize": -1}))
    assert main(["config", "validate", str(run_config)]) == 2
    assert f"{audit}: audit_config.maxDataSize: must be >= 0" in capsys.readouterr().err
