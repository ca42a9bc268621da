"""The Helm chart: lint-clean, and what it renders is what a platform team relies on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from proxyrunner.config import parse_config
from tests.chart import CHART, CI_VALUES, REPO, by_kind, helm, render

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.stem)
def test_chart_lints_clean_and_renders_a_valid_runconfig(values: Path) -> None:
    lint = helm("lint", "--strict", str(CHART), "-f", str(values))
    assert lint.returncode == 0, lint.stdout + lint.stderr
    docs = render(values)
    (configmap,) = by_kind(docs, "ConfigMap")
    runconfig = json.loads(configmap["data"]["runconfig.json"])
    parse_config(runconfig)  # the proxy accepts exactly what the chart renders


def test_no_replicas_field_when_the_hpa_owns_the_count() -> None:
    docs = render(CHART / "ci" / "redis-hpa-values.yaml")
    (deployment,) = by_kind(docs, "Deployment")
    assert "replicas" not in deployment["spec"]
    (hpa,) = by_kind(docs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    fixed = by_kind(render(CHART / "ci" / "default-values.yaml"), "Deployment")[0]
    assert fixed["spec"]["replicas"] == 2


def test_redis_password_comes_from_the_secret_and_never_the_configmap() -> None:
    docs = render(CHART / "ci" / "redis-hpa-values.yaml")
    (deployment,) = by_kind(docs, "Deployment")
    env = {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    secret = env["THV_SESSION_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert secret == {"name": "redis-auth", "key": "password"}
    (configmap,) = by_kind(docs, "ConfigMap")
    assert "password" not in configmap["data"]["runconfig.json"].lower()
    assert "fieldRef" in json.dumps(env["THV_MCPSERVER_GENERATION"])
    assert "fieldRef" in json.dumps(env["POD_NAMESPACE"])


def test_a_runconfig_change_rolls_the_pods() -> None:
    def checksum(*sets: str) -> str:
        (deployment,) = by_kind(render(None, "default", *sets), "Deployment")
        return str(deployment["spec"]["template"]["metadata"]["annotations"]["checksum/runconfig"])

    assert checksum() == checksum()
    assert checksum() != checksum("runConfig.backend_replicas=3")


def test_role_grants_exactly_the_documented_rules() -> None:
    (role,) = by_kind(render(CHART / "ci" / "default-values.yaml"), "Role")
    documented = yaml.safe_load((REPO / "config" / "rbac" / "role.yaml").read_text())
    assert role["rules"] == documented["rules"]


def test_no_rbac_for_the_local_runtime() -> None:
    docs = render(CHART / "ci" / "local-remote-values.yaml")
    assert not by_kind(docs, "Role")
    assert not by_kind(docs, "RoleBinding")


def test_grace_period_exceeds_drain_timeout() -> None:
    (deployment,) = by_kind(render(), "Deployment")
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > 25
    result = helm("template", "r", str(CHART), "--set", "terminationGracePeriodSeconds=20")
    assert result.returncode != 0
    assert (
        "terminationGracePeriodSeconds (20) must be greater than runConfig.drain_timeout (25s)"
        in result.stderr
    ), result.stderr


def test_pods_run_with_secure_defaults() -> None:
    (deployment,) = by_kind(render(), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"


SCHEMA_REFUSAL = "values don't meet the specifications of the schema"


@pytest.mark.parametrize(
    ("setting", "where", "rule"),
    [
        ("runConfig.port=eighty", "at '/runConfig/port'", "want integer"),
        ("service.port=0", "at '/service/port'", "minimum"),
        ("unknownTopLevel=1", "at ''", "'unknownTopLevel' not allowed"),
    ],
)
def test_schema_rejects_bad_values_naming_where_and_why(
    setting: str, where: str, rule: str
) -> None:
    result = helm("template", "r", str(CHART), "--set", setting)
    assert result.returncode != 0
    assert SCHEMA_REFUSAL in result.stderr
    assert where in result.stderr, result.stderr
    assert rule in result.stderr, result.stderr


def test_a_password_in_session_redis_is_refused(tmp_path: Path) -> None:
    values = tmp_path / "v.yaml"
    values.write_text("runConfig:\n  name: x\n  session_redis:\n    password: hunter2\n")
    result = helm("template", "r", str(CHART), "-f", str(values))
    assert result.returncode != 0
    assert SCHEMA_REFUSAL in result.stderr
    assert "at '/runConfig/session_redis'" in result.stderr, result.stderr
    assert "hunter2" not in result.stderr
