"""The container image definition: lint-clean, non-root, exec-form entrypoint, and no
build tools in the final stage. (tests/e2e/test_entrypoint_signals.py runs the
entrypoint as PID 1.)"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = (REPO / "Dockerfile").read_text()


def final_stage() -> str:
    return re.split(r"^FROM ", DOCKERFILE, flags=re.MULTILINE)[-1]


def test_hadolint_finds_nothing() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run(
        [str(hadolint), str(REPO / "Dockerfile")], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_entrypoint_is_exec_form_proxyrunner_run() -> None:
    match = re.search(r"^ENTRYPOINT\s+(\[.*\])\s*$", DOCKERFILE, re.MULTILINE)
    assert match
    assert json.loads(match.group(1)) == ["proxyrunner", "run"]


def test_final_stage_runs_as_a_numeric_non_root_user() -> None:
    users = re.findall(r"^USER\s+(\S+)", final_stage(), re.MULTILINE)
    assert users
    uid = users[-1].split(":")[0]
    assert uid.isdigit()
    assert int(uid) != 0


def test_final_stage_has_no_build_tools_and_is_byte_compiled() -> None:
    stage = final_stage()
    for tool in ("gcc", "build-essential", "apt-get install", "pip install"):
        assert tool not in stage
    assert "compileall" in DOCKERFILE
    assert "PYTHONDONTWRITEBYTECODE=1" in stage
