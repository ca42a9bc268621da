"""ToolHive's ``authz_config``: the Cedar policies and entities, as ToolHive writes them.

The shape (ToolHive ``pkg/authz/authorizers`` and its Cedar factory)::

    {"version": "1.0", "type": "cedarv1",
     "cedar": {"policies": ["permit(...);", ...], "entities_json": "[]",
               "group_claim_name": "...", "role_claim_name": "...",
               "group_entity_type": "...", "multi_valued_claims": ["scp"]}}

The same object sits inline under the RunConfig's ``authz_config``, or alone in the file
``authz_config_path`` names (JSON or YAML); ``proxyrunner.authz.files`` reads that file,
since config does no I/O. Keys match case-insensitively, as Go's encoding/json reads them.

Reading checks shapes only; whether each policy is valid Cedar is checked when the
authorizer is built (``CedarAuthorizer.from_config``), so the error names cedar's reason.
Unlike Go, an unknown key is a problem: in an authorization config a misspelt option
silently ignored changes what the policies mean.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from proxyrunner.config.fields import Kind, go_keys
from proxyrunner.config.problems import Problems, show
from proxyrunner.errors import ConfigError

CEDAR_V1: Final = "cedarv1"

_TOP_KEYS: Final = {"version": "version", "type": "type", "cedar": "cedar"}
_CEDAR_KEYS: Final = {
    name: name
    for name in (
        "policies",
        "entities_json",
        "group_claim_name",
        "role_claim_name",
        "group_entity_type",
        "multi_valued_claims",
        "primary_upstream_provider",
    )
}


@dataclass(frozen=True, slots=True)
class AuthzConfig:
    """One Cedar authorization config (``type`` is always ``cedarv1``)."""

    version: str
    """ToolHive requires it and ignores its value ("1.0" in its examples)."""
    type: str
    policies: tuple[str, ...]
    """Each string is one Cedar policy; the i-th is ``policy<i>`` to Cedar, as in ToolHive."""
    entities_json: str = "[]"
    """Cedar entities (JSON array, as a string) the policies may refer to (groups, ...)."""
    group_claim_name: str = ""
    """The claim naming the principal's groups; empty: ``groups``, ``roles`` or
    ``cognito:groups``, the first present."""
    role_claim_name: str = ""
    """A claim of roles, added to the groups; empty: none."""
    group_entity_type: str = ""
    """The entity type of those groups; empty: ``THVGroup``."""
    multi_valued_claims: tuple[str, ...] = ()
    """Claims (scopes) also given as a space-joined string and a ``claimset_<name>`` Set."""


def read_authz_config(value: object, path: str) -> AuthzConfig:
    """ToolHive's authz config object; ConfigError naming each bad field under ``path``."""
    if not isinstance(value, Mapping):
        raise ConfigError(f"{path}: must be an object with version, type and cedar")
    p = Problems()
    top = go_keys(value, _TOP_KEYS)
    _unknown(p, path, top, _TOP_KEYS)
    version = _string(p, f"{path}.version", top.get("version"), required=True)
    kind = _string(p, f"{path}.type", top.get("type"), required=True)
    if kind and kind != CEDAR_V1:
        p.add(f"{path}.type", f"must be {CEDAR_V1!r} (the only authorizer here); got {show(kind)}")
    cedar_path = f"{path}.cedar"
    raw_cedar = top.get("cedar")
    cedar: dict[str, Any] = {}
    if raw_cedar is None:
        p.add(cedar_path, "is required: an object with the policies")
    elif not isinstance(raw_cedar, Mapping):
        p.add(cedar_path, f"must be an object with the policies, got {show(raw_cedar)}")
    else:
        cedar = go_keys(raw_cedar, _CEDAR_KEYS)
        _unknown(p, cedar_path, cedar, _CEDAR_KEYS)
    policies = _strings(p, f"{cedar_path}.policies", cedar.get("policies"))
    if isinstance(raw_cedar, Mapping) and cedar.get("policies") is None:
        p.add(f"{cedar_path}.policies", "is required: at least one Cedar policy")
    elif cedar.get("policies") == []:
        p.add(f"{cedar_path}.policies", "must hold at least one policy")
    if cedar.get("primary_upstream_provider"):
        # ToolHive then takes claims from an embedded auth server's upstream token, which
        # this proxy does not have: evaluating the request token instead would change
        # what every claim-based policy means.
        p.add(f"{cedar_path}.primary_upstream_provider", "is not supported by proxyrunner")
    group_type = _string(p, f"{cedar_path}.group_entity_type", cedar.get("group_entity_type"))
    if "::" in group_type:
        p.add(f"{cedar_path}.group_entity_type", "must not be namespaced (no '::')")
    config = AuthzConfig(
        version=version,
        type=kind,
        policies=policies,
        entities_json=_entities(p, f"{cedar_path}.entities_json", cedar.get("entities_json")),
        group_claim_name=_string(
            p, f"{cedar_path}.group_claim_name", cedar.get("group_claim_name")
        ),
        role_claim_name=_string(p, f"{cedar_path}.role_claim_name", cedar.get("role_claim_name")),
        group_entity_type=group_type,
        multi_valued_claims=_strings(
            p, f"{cedar_path}.multi_valued_claims", cedar.get("multi_valued_claims")
        ),
    )
    p.raise_if_any()
    return config


def write_authz_config(config: AuthzConfig) -> dict[str, Any]:
    """The config as ToolHive writes it (options left out when empty, like omitempty)."""
    cedar: dict[str, Any] = {
        "policies": list(config.policies),
        "entities_json": config.entities_json,
    }
    for name in ("group_claim_name", "role_claim_name", "group_entity_type"):
        if getattr(config, name):
            cedar[name] = getattr(config, name)
    if config.multi_valued_claims:
        cedar["multi_valued_claims"] = list(config.multi_valued_claims)
    return {"version": config.version, "type": config.type, "cedar": cedar}


AUTHZ_CONFIG: Final = Kind(read_authz_config, write_authz_config)


def _unknown(p: Problems, path: str, doc: Mapping[str, Any], known: Mapping[str, str]) -> None:
    for key in doc:
        if key not in known:
            p.add(f"{path}.{key}", "is not a field of ToolHive's authorization config")


def _string(p: Problems, path: str, value: object, *, required: bool = False) -> str:
    if value is None or value == "":
        if required:
            p.add(path, "is required")
        return ""
    if not isinstance(value, str):
        p.add(path, f"must be a string, got {show(value)}")
        return ""
    return value


def _strings(p: Problems, path: str, value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        p.add(path, f"must be a list of strings, got {show(value)}")
        return ()
    out: list[str] = []
    for index, item in enumerate(value):
        if isinstance(item, str):
            out.append(item)
        else:
            p.add(f"{path}[{index}]", f"must be a string, got {show(item)}")
    return tuple(out)


def _entities(p: Problems, path: str, value: object) -> str:
    """ToolHive's field is a string holding JSON; an inline array is taken too (it can
    only mean the same), kept as its JSON text."""
    if value is None or value == "":
        return "[]"
    if isinstance(value, list):
        return json.dumps(value)
    if not isinstance(value, str):
        p.add(path, f"must be a string holding a JSON array of entities, got {show(value)}")
        return "[]"
    try:
        parsed = json.loads(value)
    except (ValueError, RecursionError):
        p.add(path, "is not valid JSON")
        return "[]"
    if not isinstance(parsed, list):
        p.add(path, f"must be a JSON array of entities, got {show(parsed)}")
    return value
