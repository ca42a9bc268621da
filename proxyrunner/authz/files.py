"""The file ``authz_config_path`` names: ToolHive's authz config alone, in JSON or YAML.

Config does no I/O, so the RunConfig keeps the path and this reads it at startup; a
problem names the file, then the field (``/etc/authz.yaml: authz_config.cedar...``).
"""

from __future__ import annotations

from pathlib import Path

from proxyrunner.config.authz import AuthzConfig, read_authz_config
from proxyrunner.config.files import decode_document, read_config_text
from proxyrunner.errors import ConfigError


def load_authz_file(path: Path) -> AuthzConfig:
    text = read_config_text(path)
    try:
        return read_authz_config(decode_document(text), "authz_config")
    except ConfigError as exc:
        raise ConfigError([f"{path}: {problem}" for problem in exc.problems]) from None
