"""RunConfig documents: JSON or YAML text, from a file or from text another source read
(a ConfigMap), and where to look for one when none is named."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml

from proxyrunner.config.fields import Reader
from proxyrunner.config.run_config import RunConfig
from proxyrunner.config.table import parse_config
from proxyrunner.errors import ConfigError

DEFAULT_CONFIG_PATHS: Final = (
    Path("/etc/runconfig/runconfig.json"),
    Path("/etc/toolhive/runconfig.json"),
    Path("runconfig.json"),
)


@dataclass(frozen=True, slots=True)
class LoadedConfig:
    config: RunConfig
    source: str
    """Where it came from, for the log line and as the prefix of every problem."""
    unknown_fields: tuple[str, ...]


def decode_document(text: str) -> object:
    """JSON or YAML text to Python data. JSON is tried first: it is what the operator writes.
    Errors do not name the source: the caller prefixes it."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    except RecursionError as exc:
        raise ConfigError("nested too deeply to parse") from exc
    try:
        return yaml.safe_load(text)
    except RecursionError as exc:
        raise ConfigError("nested too deeply to parse") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"not valid JSON or YAML{where}") from exc


def read_config_text(path: Path) -> str:
    """A config file's text; ConfigError naming the file when it cannot be read."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: no such file") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read it ({exc.__class__.__name__})") from exc


def load_config_file(path: Path) -> LoadedConfig:
    return load_config_text(read_config_text(path), str(path))


def load_config_text(text: str, source: str) -> LoadedConfig:
    try:
        config, unknown = parse_config(decode_document(text))
    except ConfigError as exc:
        raise ConfigError([f"{source}: {problem}" for problem in exc.problems]) from None
    return LoadedConfig(config=config, source=source, unknown_fields=unknown)


def load_section_file(path: Path, read: Reader, field: str) -> Any:
    """A file holding one RunConfig field's object alone (``authz_config_path`` holds an
    ``authz_config``), read with that field's reader; a problem names the file, then the
    field (``/etc/authz.yaml: authz_config.cedar...``)."""
    text = read_config_text(path)
    try:
        return read(decode_document(text), field)
    except ConfigError as exc:
        raise ConfigError([f"{path}: {problem}" for problem in exc.problems]) from None


def find_config_file(candidates: Sequence[Path] = DEFAULT_CONFIG_PATHS) -> Path:
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    tried = ", ".join(str(c) for c in candidates)
    raise ConfigError(
        f"no RunConfig given and none found (tried {tried}); "
        "pass --config PATH or --configmap NAMESPACE/NAME"
    )
