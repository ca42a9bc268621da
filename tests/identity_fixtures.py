"""Fixtures for the OAuth tests: a real authorization server (oidc-provider).

- ``start_idp(**kwargs)``: an ``IdentityProvider`` (tests/identity_provider.py) in the
  test's tmp_path, started and returned; stopped (SIGTERM, then SIGKILL) at teardown.
  Skips, or fails in CI, when the npm packages are not installed.

Tests use it once conftest.py imports it (``from tests.identity_fixtures import start_idp``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import prerequisite_missing
from tests.identity_provider import IdentityProvider, node_missing

StartIdp = Callable[..., Awaitable[IdentityProvider]]


@pytest.fixture
async def start_idp(tmp_path: Path) -> AsyncIterator[StartIdp]:
    started: list[IdentityProvider] = []

    async def start(**kwargs: Any) -> IdentityProvider:
        if missing := node_missing():
            prerequisite_missing(missing)
        idp = IdentityProvider(tmp_path / f"idp-{len(started)}", **kwargs)
        started.append(idp)
        return await idp.start()

    yield start
    for idp in started:
        await idp.stop()
