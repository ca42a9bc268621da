"""The operator's manifests: one CRD in config/ and in the chart, the proxy Role the
operator grants equal to config/rbac/role.yaml, and the chart's operator mode."""

from __future__ import annotations

import pytest
import yaml

from proxyrunner.kube.rbac import proxy_role_rules
from tests.chart import CHART, REPO, by_kind, render

pytestmark = pytest.mark.timeout(120)

CRD = REPO / "config" / "crd" / "toolhive.stacklok.dev_mcpservers.yaml"


def test_the_chart_ships_the_same_crd_as_config() -> None:
    chart_copy = CHART / "files" / CRD.name
    assert chart_copy.read_text() == CRD.read_text()


def test_the_documented_role_is_the_rendered_one_for_a_server_named_mcp() -> None:
    role = yaml.safe_load((REPO / "config" / "rbac" / "role.yaml").read_text())
    assert role["rules"] == proxy_role_rules("mcp", runconfig_configmap="mcp-runconfig")


def test_the_proxy_role_names_its_objects_except_where_kubernetes_cannot() -> None:
    unnamed = {
        (resource, verb)
        for rule in proxy_role_rules("fetch")
        if "resourceNames" not in rule
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    # create: the name is unknown at authorization; pods: listed by label selector.
    assert unnamed == {("statefulsets", "create"), ("pods", "list"), ("pods", "watch")}
    named = {r for rule in proxy_role_rules("fetch") for r in rule.get("resourceNames", [])}
    assert named == {"fetch", "mcp-fetch", "mcp-fetch-headless", "fetch-0"}
    resources = {r for rule in proxy_role_rules("fetch") for r in rule["resources"]}
    assert "endpointslices" not in resources  # the code watches pods, never EndpointSlices


def test_operator_objects_render_only_when_enabled() -> None:
    plain = render()
    assert not by_kind(plain, "CustomResourceDefinition")
    assert not by_kind(plain, "ClusterRole")
    docs = render(None, "ops", "operator.enabled=true", "server.enabled=false")
    (crd,) = by_kind(docs, "CustomResourceDefinition")
    assert crd == yaml.safe_load(CRD.read_text())
    (deployment,) = by_kind(docs, "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["proxyrunner", "operator"]
    assert not by_kind(docs, "ConfigMap")  # no single server in operator-only mode


def test_the_operator_holds_every_rule_it_grants_and_deletes_nothing() -> None:
    docs = render(None, "ops", "operator.enabled=true")
    (role,) = by_kind(docs, "ClusterRole")
    held = {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    granted = {
        (group, resource, verb)
        for rule in proxy_role_rules("any")
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    assert granted <= held  # RBAC lets it create the proxy Role only so
    assert not {v for (_, _, v) in held} & {"delete", "deletecollection", "*", "escalate", "bind"}
    watched = render(None, "ops", "operator.enabled=true", "operator.watchNamespace=mcp")
    assert not by_kind(watched, "ClusterRole")
    assert "mcp" in {r["metadata"].get("namespace") for r in by_kind(watched, "RoleBinding")}
