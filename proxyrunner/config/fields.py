"""JSON fields: how one field of the flat ToolHive layout is read, where it goes, and
when a dump leaves it out.

A field table is a tuple of ``JsonField`` rows; ``read_fields`` and ``write_fields`` walk
one, so a JSON name is written once, in its row. Defaults are not in the rows: they are
the dataclass defaults, documented where the attribute is (an absent field simply is not
passed). Reading checks the JSON type only; the value's rules belong to the concern the
row targets, which checks them when it is built.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from proxyrunner.config.concerns import SessionRedisConfig
from proxyrunner.config.environment import REDIS_PASSWORD_ENV
from proxyrunner.config.problems import Problems, show
from proxyrunner.durations import format_duration, parse_duration
from proxyrunner.errors import ConfigError

Reader = Callable[[object, str], Any]
"""(JSON value, its path) -> the attribute's value; raises ConfigError naming the path."""
Writer = Callable[[Any], Any]
"""The attribute's value -> its JSON value."""
Omit = Callable[[Any], bool]
"""Whether a dump leaves the attribute's value out."""


def omit_empty(value: object) -> bool:
    """Go's omitempty: absent, empty and zero values are left out (false is not zero)."""
    return value is None or (value in ("", 0, (), {}) and not isinstance(value, bool))


def omit_absent(value: object) -> bool:
    """Only an absent value is left out: an explicit 0 says something (no replicas)."""
    return value is None


def never(value: object) -> bool:
    return False


def omit_false(value: object) -> bool:
    return value is False or omit_empty(value)


@dataclass(frozen=True, slots=True)
class Kind:
    """A JSON value type: how it is read and written, and its usual omit rule."""

    read: Reader
    write: Writer
    omit: Omit = omit_empty


@dataclass(frozen=True, slots=True)
class JsonField:
    """One row of a field table."""

    name: str
    """The JSON name."""
    kind: Kind
    """How the value is read and written."""
    target: str
    """The attribute it fills: ``concern.attribute``, or ``attribute`` on the object itself."""
    scaling: bool = False
    """May also be given under ``scaling_config`` (upstream's later, nested layout)."""
    omit: Omit | None = None
    """The dump's omit rule when not the kind's."""

    @property
    def concern(self) -> str:
        return self.target.rpartition(".")[0]

    @property
    def attribute(self) -> str:
        return self.target.rpartition(".")[2]

    def omits(self, value: object) -> bool:
        return (self.omit or self.kind.omit)(value)


def read_fields(
    table: tuple[JsonField, ...], doc: Mapping[str, Any], prefix: str, p: Problems
) -> tuple[dict[str, dict[str, Any]], set[str]]:
    """The values of ``doc``'s fields grouped by concern, and the concerns with a field
    that could not be read (its problem is in ``p``). Null counts as absent."""
    values: dict[str, dict[str, Any]] = {}
    unparsed: set[str] = set()
    for row in table:
        raw = doc.get(row.name)
        if raw is None:
            continue
        try:
            values.setdefault(row.concern, {})[row.attribute] = row.kind.read(
                raw, prefix + row.name
            )
        except ConfigError as exc:
            p.extend(exc)
            unparsed.add(row.concern)
    return values, unparsed


def write_fields(table: tuple[JsonField, ...], source: object) -> dict[str, Any]:
    """``source`` as JSON-ready data in the table's order, omitted fields left out."""
    out: dict[str, Any] = {}
    for row in table:
        value = source
        for part in row.target.split("."):
            value = getattr(value, part)
        if not row.omits(value):
            out[row.name] = row.kind.write(value)
    return out


def _problem(path: str, message: str) -> ConfigError:
    return ConfigError(f"{path}: {message}")


def _same(value: Any) -> Any:
    return value


def _read_string(value: object, path: str) -> str:
    if not isinstance(value, str):
        raise _problem(path, f"must be a string, got {show(value)}")
    return value


def _read_integer(value: object, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _problem(path, f"must be an integer, got {show(value)}")
    return value


def _read_boolean(value: object, path: str) -> bool:
    if not isinstance(value, bool):
        raise _problem(path, f"must be true or false, got {show(value)}")
    return value


def _read_strings(value: object, path: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _problem(path, f"must be a list of strings, got {show(value)}")
    return tuple(value)


def _read_string_map(value: object, path: str) -> dict[str, str]:
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        # Values may be secrets: name the field, never the content.
        raise _problem(path, "must be an object mapping names to string values")
    return dict(value)


def _read_secret_refs(value: object, path: str) -> dict[str, tuple[str, str]]:
    """``{"ENV": {"name": secret, "key": key}}``: what Kubernetes' secretKeyRef names."""
    if not isinstance(value, Mapping):
        raise _problem(path, 'must map variable names to {"name": secret, "key": key}')
    refs: dict[str, tuple[str, str]] = {}
    for env, ref in value.items():
        if (
            not isinstance(env, str)
            or not isinstance(ref, Mapping)
            or set(ref) != {"name", "key"}
            or not all(isinstance(v, str) and v for v in ref.values())
        ):
            raise _problem(f"{path}.{env}", 'must be {"name": secret, "key": key}')
        refs[env] = (ref["name"], ref["key"])
    return refs


def _write_secret_refs(value: Mapping[str, tuple[str, str]]) -> dict[str, dict[str, str]]:
    return {env: {"name": name, "key": key} for env, (name, key) in sorted(value.items())}


def _read_duration(value: object, path: str) -> float:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise _problem(path, f"{exc} (got {show(value)})") from None


def _read_json_object(value: object, path: str) -> str:
    """An object inline or as a JSON string; kept as the string (inline: keys sorted, so
    the same object is always the same text). The concern checks that it is an object."""
    if isinstance(value, Mapping):
        return json.dumps(value, sort_keys=True)
    if not isinstance(value, str):
        raise _problem(path, "must be a JSON object or a JSON string")
    return value


STRING: Final = Kind(_read_string, _same)
INTEGER: Final = Kind(_read_integer, _same)
BOOLEAN: Final = Kind(_read_boolean, _same, omit_false)
STRINGS: Final = Kind(_read_strings, list)
STRING_MAP: Final = Kind(_read_string_map, lambda value: dict(sorted(value.items())))
SECRET_REFS: Final = Kind(_read_secret_refs, _write_secret_refs)
DURATION: Final = Kind(_read_duration, format_duration, never)
"""Go duration strings ("30s", "1h30m") or seconds; always written, as Go strings."""
JSON_OBJECT: Final = Kind(_read_json_object, _same)

# SessionRedisConfig's attributes are named as its JSON fields.
SESSION_REDIS_FIELDS: Final = tuple(
    JsonField(name, kind, name)
    for name, kind in (
        ("address", STRING),
        ("db", INTEGER),
        ("key_prefix", STRING),
        ("username", STRING),
        ("tls", BOOLEAN),
        ("ca_file", STRING),
    )
)


def _read_session_redis(value: object, path: str) -> SessionRedisConfig:
    if not isinstance(value, Mapping):
        raise _problem(
            path, f"must be an object with address, db and key_prefix, got {show(value)}"
        )
    # Refuse before anything else and never echo the value: a password in a ConfigMap is
    # readable by everyone who can read the namespace.
    for key in value:
        if "password" in str(key).lower():
            raise _problem(
                f"{path}.{key}",
                "a password never goes in the RunConfig; "
                f"set the {REDIS_PASSWORD_ENV} environment variable instead",
            )
    p = Problems()
    values, _ = read_fields(SESSION_REDIS_FIELDS, value, f"{path}.", p)
    own = values.get("", {})
    if value.get("address") is None:
        p.add(f"{path}.address", "is required (host:port)")
    elif "address" in own:  # the fields that were read report their rules too
        try:
            redis = SessionRedisConfig(**own)
            if not p.items:
                return redis
        except ConfigError as exc:
            p.extend(exc)
    raise ConfigError(p.items)


def _write_session_redis(redis: SessionRedisConfig) -> dict[str, Any]:
    out = write_fields(SESSION_REDIS_FIELDS, redis)
    out.setdefault("db", redis.db)  # said even when 0: which database is never a guess
    return out


SESSION_REDIS: Final = Kind(_read_session_redis, _write_session_redis)


def go_keys(value: Mapping[str, Any], names: Mapping[str, str]) -> dict[str, Any]:
    """A ToolHive object's keys mapped to ours the way Go's encoding/json reads them:
    ``names`` maps each accepted JSON name (its json tag, its Go field name, our
    snake_case name) to our attribute, and keys match case-insensitively, as Go's do.
    Keys that match none are kept as they are (the caller reports them)."""
    folded = {name.lower(): attribute for name, attribute in names.items()}
    out: dict[str, Any] = {}
    for key, item in value.items():
        out[folded.get(str(key).lower(), str(key))] = item
    return out
