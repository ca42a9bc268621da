"""Render the Helm chart with the helm binary scripts/kube-test-env builds."""

from __future__ import annotations

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
