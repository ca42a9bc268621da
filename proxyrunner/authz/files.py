"""The file ``authz_config_path`` names: ToolHive's authz config alone, in JSON or YAML.

Config does no I/O, so the RunConfig keeps the path and this reads it at startup; a
problem names the file, then the field (``/etc/authz.yaml: authz_config.cedar...``).
"""

from __future__ import annotations

from pathlib import Path

from proxyrunner.config.authz import AuthzConfig, read_authz_config
from proxyrunner.config.files import load_section_file


def load_authz_file(path: Path) -> AuthzConfig:
    config: AuthzConfig = load_section_file(path, read_authz_config, "authz_config")
    return config
