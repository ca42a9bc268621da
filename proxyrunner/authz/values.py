"""Token claims and tool arguments as Cedar sees them, the way ToolHive presents them.

A policy written for ToolHive must mean the same here, so the conversions follow
ToolHive's Cedar authorizer rather than what would be most natural in Python:

- every claim becomes ``claim_<name>`` (principal attribute and context), every tool or
  prompt argument ``arg_<name>`` (context, and attribute of the tool); an argument that is
  not a string, number or boolean becomes ``arg_<name>_present = true`` instead;
- numbers are Cedar ``decimal`` values, not ``Long``: Go decodes every JSON number as a
  float64 and ToolHive converts floats to decimals (four fractional digits; out of range:
  left out). A policy compares ``context.arg_count == decimal("5.0")`` there and here;
- lists are Sets, objects Records (nested at most ten deep), null is left out;
- the groups of the principal (``groups``, ``roles`` or ``cognito:groups``, or the
  configured claims) become its parents ``THVGroup::"<group>"``;
- a multi-valued claim (configured, e.g. ``scp``) is also a space-joined string in
  ``claim_<name>`` and a Set in ``claimset_<name>``.

Values are built as Cedar's JSON form (``{"__extn": ...}`` for a decimal), ready for
cedarpy. An object key ``__entity``/``__extn``/``__expr`` is dropped: in Cedar's JSON
form it would turn claim content into an entity reference.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

MAX_DEPTH: Final = 10
DEFAULT_GROUP_CLAIMS: Final = ("groups", "roles", "cognito:groups")
_DECIMAL_LIMIT: Final = 922337203685477.5807
_ESCAPES: Final = frozenset({"__entity", "__extn", "__expr"})


def decimal(number: float) -> dict[str, Any] | None:
    """A number as a Cedar decimal (four fractional digits), None when out of range."""
    value = round(float(number), 4)
    if not math.isfinite(value) or abs(value) > _DECIMAL_LIMIT:
        return None
    text = f"{value:.4f}".rstrip("0")
    return {"__extn": {"fn": "decimal", "arg": text + "0" if text.endswith(".") else text}}


def cedar_value(value: object, depth: int = 0) -> Any:
    """A JSON value as Cedar JSON; None for what ToolHive leaves out."""
    if depth > MAX_DEPTH:
        return None
    if isinstance(value, bool | str):
        return value
    if isinstance(value, int | float):
        return decimal(value)
    if isinstance(value, list | tuple):
        items = (cedar_value(item, depth + 1) for item in value)
        return [item for item in items if item is not None]
    if isinstance(value, Mapping):
        return record(value, depth + 1)
    return None


def record(values: Mapping[str, Any], depth: int = 0) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, item in values.items():
        converted = cedar_value(item, depth)
        if converted is not None and key not in _ESCAPES:
            out[str(key)] = converted
    return out


def claim_attributes(claims: Mapping[str, Any], multi_valued: Sequence[str]) -> dict[str, Any]:
    """``claim_<name>`` (and ``claimset_<name>``) for every claim, as Cedar JSON."""
    out: dict[str, Any] = {}
    for name, value in claims.items():
        if name in multi_valued and isinstance(value, list):
            value = " ".join(_strings(value))
        converted = cedar_value(value, 0)
        if converted is not None:
            out[f"claim_{name}"] = converted
    for name in multi_valued:
        value = claims.get(name)
        if isinstance(value, str):
            out[f"claimset_{name}"] = value.split()
        elif isinstance(value, list):
            out[f"claimset_{name}"] = _strings(value)
    return out


def argument_attributes(arguments: object) -> dict[str, Any]:
    """``arg_<name>`` for each scalar argument, ``arg_<name>_present`` for the others."""
    if not isinstance(arguments, Mapping):
        return {}
    out: dict[str, Any] = {}
    for name, value in arguments.items():
        converted = cedar_value(value) if isinstance(value, bool | str | int | float) else None
        if converted is not None:
            out[f"arg_{name}"] = converted
        elif not isinstance(value, bool | str | int | float):
            out[f"arg_{name}_present"] = True
    return out


def groups_of(claims: Mapping[str, Any], group_claim: str, role_claim: str) -> list[str]:
    """The principal's groups then roles, each once: the configured group claim, else (as
    ToolHive does, also when it is configured but absent) the first usual one present."""
    found = _claim_list(claims, group_claim)
    if found is None:
        for name in DEFAULT_GROUP_CLAIMS:
            found = _claim_list(claims, name)
            if found is not None:
                break
    roles = _claim_list(claims, role_claim) or []
    return list(dict.fromkeys([*(found or []), *roles]))


def _claim_list(claims: Mapping[str, Any], name: str) -> list[str] | None:
    """A list claim by name, or by dotted path into nested objects (Keycloak's
    ``realm_access.roles``); None when absent or not a list."""
    if not name:
        return None
    value: Any = claims.get(name)
    if value is None and "." in name:
        value = claims
        for part in name.split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
    return _strings(value) if isinstance(value, list) else None


def _strings(values: Iterable[object]) -> list[str]:
    return [value for value in values if isinstance(value, str)]
