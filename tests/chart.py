"""Render the Helm chart with the helm binary scripts/kube-test-env builds."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "charts" / "proxyrunner"
CI_VALUES = sorted((CHART / "ci").glob("*.yaml"))


def helm_binary() -> str:
    explicit = os.environ.get("HELM")
    if explicit:
        return explicit
    result = subprocess.run(
        [str(REPO / "scripts" / "kube-test-env"), "--print-env"],
        capture_output=True,
        text=True,
        check=False,
    )
    for line in result.stdout.splitlines():
        if line.startswith("HELM=") and Path(line[5:]).exists():
            return line[5:]
    if os.environ.get("PROXYRUNNER_REQUIRE_KUBE") == "1":
        pytest.fail("helm not built: run scripts/kube-test-env")
    pytest.skip("helm not built: run scripts/kube-test-env")


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [helm_binary(), *args], capture_output=True, text=True, check=False, timeout=60
    )


def render(
    values: Path | None = None, namespace: str = "default", *sets: str
) -> list[dict[str, Any]]:
    args = ["template", "release", str(CHART), "--namespace", namespace]
    if values is not None:
        args += ["-f", str(values)]
    for item in sets:
        args += ["--set", item]
    result = helm(*args)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def only(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    """The one manifest of that kind (and name)."""
    (doc,) = [d for d in by_kind(docs, kind) if name is None or d["metadata"]["name"] == name]
    return doc


def runconfig_of(docs: list[dict[str, Any]]) -> dict[str, Any]:
    configmap = only(docs, "ConfigMap", "release-proxyrunner-runconfig")
    return dict(json.loads(configmap["data"]["runconfig.json"]))


def proxy_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (container,) = only(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    return dict(container)


def secret_env(docs: list[dict[str, Any]]) -> dict[str, tuple[str, str]]:
    """Each variable the Deployment fills from a Secret: (Secret name, key)."""
    out: dict[str, tuple[str, str]] = {}
    for env in proxy_container(docs)["env"]:
        ref = env.get("valueFrom", {}).get("secretKeyRef")
        if ref is not None:
            out[env["name"]] = (ref["name"], ref["key"])
    return out


def mounted_source(docs: list[dict[str, Any]], path: str) -> tuple[str, str, str]:
    """What the proxy container reads at ``path``: (configMap | secret, name, key),
    resolved through its volumeMounts and the pod's volumes as the kubelet would."""
    pod = only(docs, "Deployment")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    for mount in proxy_container(docs)["volumeMounts"]:
        directory = mount["mountPath"].rstrip("/") + "/"
        if not path.startswith(directory):
            continue
        assert mount.get("readOnly") is True, mount
        volume = volumes[mount["name"]]
        for kind, name_field in (("configMap", "name"), ("secret", "secretName")):
            if kind in volume:
                source = volume[kind]
                relative = path[len(directory) :]
                items = {i["path"]: i["key"] for i in source.get("items", [])}
                key = items[relative] if items else relative
                return kind, source[name_field], key
    raise AssertionError(f"{path} is on no ConfigMap or Secret volume of the proxy")


SCHEMA_REFUSAL = "values don't meet the specifications of the schema"


def schema_refusal(*args: str) -> str:
    """What helm says refusing the values of ``helm template r CHART *args`` by the
    schema (it must refuse them)."""
    result = helm("template", "r", str(CHART), *args)
    assert result.returncode != 0, result.stdout
    assert SCHEMA_REFUSAL in result.stderr, result.stderr
    return result.stderr
