"""The pure parts of the Kubernetes runtime: apply bodies and the gate decision."""

from __future__ import annotations

import json
from typing import Any

import pytest

from proxyrunner.config import RunConfig, parse_config
from proxyrunner.errors import ConfigError
from proxyrunner.kube.workload import (
    GENERATION_ANNOTATION,
    decide_gate,
    is_statefulset_pod,
    merge_patch,
    owns_replicas,
    service_bodies,
    statefulset_body,
)


def config(**fields: Any) -> RunConfig:
    return parse_config({"name": "mcp", "runtime": "kubernetes", "image": "img:1", **fields})[0]


@pytest.mark.parametrize(
    ("existing", "ours", "apply", "stamp"),
    [
        (None, 0, True, False),
        ("7", 0, True, False),
        (None, 3, True, True),
        ("2", 3, True, True),
        ("3", 3, True, True),
        ("4", 3, False, False),
        ("x", 3, True, True),
    ],
)
def test_gate_decision(existing: str | None, ours: int, apply: bool, stamp: bool) -> None:
    decision = decide_gate(existing, ours)
    assert (decision.apply, decision.stamp) == (apply, stamp)


def test_replicas_appear_only_when_set_and_zero_is_kept() -> None:
    assert "replicas" not in statefulset_body(config(), "ns", stamp_generation=False)["spec"]
    assert (
        statefulset_body(config(backend_replicas=0), "ns", stamp_generation=False)["spec"][
            "replicas"
        ]
        == 0
    )
    assert (
        statefulset_body(config(backend_replicas=3), "ns", stamp_generation=False)["spec"][
            "replicas"
        ]
        == 3
    )


def test_stdio_is_capped_at_one_replica_and_gets_stdin() -> None:
    body = statefulset_body(
        config(transport="stdio", backend_replicas=3), "ns", stamp_generation=False
    )
    assert body["spec"]["replicas"] == 1
    assert body["spec"]["template"]["spec"]["containers"][0]["stdin"] is True


def test_template_is_deterministic_with_env_sorted() -> None:
    first = statefulset_body(config(env_vars={"Z": "1", "A": "2"}), "ns", stamp_generation=True)
    second = statefulset_body(config(env_vars={"A": "2", "Z": "1"}), "ns", stamp_generation=True)
    assert json.dumps(first, sort_keys=True) == json.dumps(second, sort_keys=True)
    env = [e["name"] for e in first["spec"]["template"]["spec"]["containers"][0]["env"]]
    assert env == sorted(env)


def test_generation_is_stamped_on_the_pod_template_only_when_asked() -> None:
    stamped = statefulset_body(config(mcpserver_generation=4), "ns", stamp_generation=True)
    plain = statefulset_body(config(mcpserver_generation=4), "ns", stamp_generation=False)
    assert stamped["spec"]["template"]["metadata"]["annotations"][GENERATION_ANNOTATION] == "4"
    assert "annotations" not in plain["spec"]["template"]["metadata"]


def test_pod_template_patch_merges_maps_and_containers_by_name() -> None:
    patch = {
        "spec": {
            "nodeSelector": {"pool": "mcp"},
            "containers": [{"name": "mcp", "resources": {"limits": {"memory": "1Gi"}}}],
        }
    }
    body = statefulset_body(
        config(k8s_pod_template_patch=json.dumps(patch)), "ns", stamp_generation=False
    )
    spec = body["spec"]["template"]["spec"]
    assert spec["nodeSelector"] == {"pool": "mcp"}
    (container,) = spec["containers"]
    assert container["image"] == "img:1"
    assert container["resources"]["limits"]["memory"] == "1Gi"
    assert merge_patch({"a": [1]}, {"a": [2]}) == {"a": [2]}


def test_services_have_no_client_ip_affinity_and_one_is_headless() -> None:
    headless, regular = service_bodies(config(), "ns")
    assert headless["metadata"]["name"] == "mcp-mcp-headless"
    assert headless["spec"]["clusterIP"] == "None"
    assert regular["spec"]["sessionAffinity"] == "None"


def test_replica_ownership_is_read_from_managed_fields() -> None:
    def entry(manager: str, operation: str) -> dict[str, Any]:
        return {
            "manager": manager,
            "operation": operation,
            "fieldsV1": {"f:spec": {"f:replicas": {}}},
        }

    alone = {"metadata": {"managedFields": [entry("me", "Apply")]}}
    shared = {"metadata": {"managedFields": [entry("me", "Apply"), entry("hpa", "Update")]}}
    assert owns_replicas(alone, "me") == (True, False)
    assert owns_replicas(shared, "me") == (True, True)
    assert owns_replicas({"metadata": {}}, "me") == (False, False)


def test_only_an_unparsable_annotation_is_flagged_for_replacement() -> None:
    assert decide_gate("not-a-number", 3).unparsable
    assert not any(decide_gate(existing, 3).unparsable for existing in (None, "2", "3", "4"))


def _pod(name: str, **ref: Any) -> dict[str, Any]:
    owner = {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "mcp", "uid": "u1"}
    owner["controller"] = True
    return {"metadata": {"name": name, "ownerReferences": [{**owner, **ref}]}}


@pytest.mark.parametrize(
    ("pod", "ours"),
    [
        (_pod("mcp-0"), True),
        (_pod("mcp-12"), True),
        (_pod("mcp-01"), False),  # no StatefulSet names a pod so
        (_pod("mcp-x"), False),
        (_pod("mcp-extra-0"), False),
        (_pod("other-0"), False),
        (_pod("mcp-0", uid="u0"), False),  # an older StatefulSet's pod
        (_pod("mcp-0", kind="ReplicaSet"), False),
        (_pod("mcp-0", controller=False), False),
        ({"metadata": {"name": "mcp-0", "labels": {"app": "mcp"}}}, False),
    ],
)
def test_only_pods_named_by_and_controlled_by_the_applied_statefulset_are_backends(
    pod: dict[str, Any], ours: bool
) -> None:
    assert is_statefulset_pod(pod, "mcp", "u1") is ours
    assert is_statefulset_pod(pod, "mcp", None) is False


def test_env_secrets_become_secret_key_refs_and_never_values() -> None:
    cfg = config(
        env_vars={"PLAIN": "1"},
        env_secrets={"API_TOKEN": {"name": "fetch-api", "key": "token"}},
    )
    (container,) = statefulset_body(cfg, "ns", stamp_generation=False)["spec"]["template"]["spec"][
        "containers"
    ]
    env = {e["name"]: e for e in container["env"]}
    assert env["API_TOKEN"] == {
        "name": "API_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": "fetch-api", "key": "token"}},
    }
    assert env["PLAIN"] == {"name": "PLAIN", "value": "1"}
    assert [e["name"] for e in container["env"]] == sorted(env)


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"runtime": "local", "remote_url": "http://h:1/mcp"}, "env_secrets: needs the kubernetes"),
        ({"env_vars": {"API_TOKEN": "x"}}, "env_secrets.API_TOKEN: is also set in env_vars"),
    ],
)
def test_env_secrets_are_refused_where_they_cannot_work(
    fields: dict[str, Any], problem: str
) -> None:
    doc = {"name": "mcp", "runtime": "kubernetes", "image": "img:1", **fields}
    doc["env_secrets"] = {"API_TOKEN": {"name": "s", "key": "k"}}
    if doc["runtime"] == "local":
        doc.pop("image")
    with pytest.raises(ConfigError, match=problem):
        parse_config(doc)


def test_a_malformed_env_secret_names_the_variable_not_a_value() -> None:
    doc = {"name": "mcp", "runtime": "kubernetes", "image": "img:1"}
    with pytest.raises(ConfigError, match=r"env_secrets\.API_TOKEN"):
        parse_config({**doc, "env_secrets": {"API_TOKEN": {"name": "s"}}})
