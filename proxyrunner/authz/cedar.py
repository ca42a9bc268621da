"""Cedar authorization of MCP requests, with ToolHive's config, entities and decisions.

The Cedar request for a call is principal ``Client::"<sub>"`` (attributes: the claims as
``claim_<name>``; parents: its groups), the method's action and resource (see
``authz.methods``; the resource's attributes: ``name``, ``operation``, ``feature``, a
tool's annotation hints and arguments), and a context of the claims and the arguments
(``arg_<name>``; see ``authz.values``). The config's ``entities_json`` is added, the
request's own entities winning on the same id. A request without a principal (an
unauthenticated endpoint) is ToolHive's anonymous one: ``Client::"anonymous"``.

Cedar's default is deny; a ``forbid`` overrides any ``permit``; and, as in ToolHive, a
decision during which a policy failed to evaluate (a type error, a missing attribute
read without ``has``) is a denial even when another policy permits.

Cost: the policy set and the config's entities are parsed once; a decision is one
cedarpy call with the request's entities as one JSON text, about 75 µs on the test
machine (``tests/test_authz_cedar.py`` measures it); a list answer is decided in one
batch call, whatever its length.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import cedarpy

from proxyrunner.authz import values
from proxyrunner.authz.methods import ALWAYS_ALLOWED, DECIDED, FILTERED, LIST_FIELD, Target
from proxyrunner.config.authz import AuthzConfig
from proxyrunner.errors import ConfigError
from proxyrunner.principal import Principal

ANONYMOUS_CLAIMS: Final = {
    "sub": "anonymous",
    "iss": "toolhive-local",
    "aud": "toolhive",
    "email": "anonymous@localhost",
    "name": "Anonymous User",
}
"""What ToolHive's anonymous identity claims (less its timestamps, which change)."""

_HINTS: Final = ("readOnlyHint", "destructiveHint", "idempotentHint", "openWorldHint")
_MAX_ANNOTATED_TOOLS: Final = 10_000


@dataclass(frozen=True, slots=True)
class Decision:
    """One decision, for the client's error and the audit record."""

    allowed: bool
    method: str
    action: str | None = None
    """The Cedar action id (``call_tool``), None for a method that is not decided."""
    resource: str | None = None
    """The Cedar resource (``Tool::"echo"``), None for a method that is not decided."""
    reason: str = ""
    """For the client: what was refused (never a claim or a policy)."""
    errors: tuple[str, ...] = ()
    """Cedar's evaluation errors, for the operator's log only."""


class CedarAuthorizer:
    """Decides MCP requests with one immutable policy set. Safe to share between
    requests; the only state it keeps is the tool annotations seen in ``tools/list``
    answers (ToolHive reads them into later ``tools/call`` decisions)."""

    def __init__(
        self,
        config: AuthzConfig,
        policies: cedarpy.PolicySet,
        entities: Mapping[tuple[str, str], str],
        server_name: str | None = None,
    ) -> None:
        self._config = config
        self._policies = policies
        self._base = dict(entities)
        self._base_text = ",".join(self._base.values())
        self._server_name = server_name
        self._group_type = config.group_entity_type or "THVGroup"
        self._annotations: dict[str, dict[str, bool]] = {}

    @classmethod
    def from_config(cls, config: AuthzConfig, server_name: str | None = None) -> CedarAuthorizer:
        """Parse every policy and the entities once; ConfigError naming what is wrong
        (``server_name``, when given, makes each resource a child of ``MCP::"<name>"``,
        as in ToolHive)."""
        problems: list[str] = []
        for index, text in enumerate(config.policies):
            problem = _policy_problem(text)
            if problem:
                first = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
                problems.append(
                    f"authz_config.cedar.policies[{index}] (policy{index}, {first[:60]!r}): "
                    f"{problem}"
                )
        entities = _entity_pieces(config.entities_json, problems)
        if problems:
            raise ConfigError(problems)
        policies = cedarpy.PolicySet.from_str("\n".join(config.policies))
        return cls(config, policies, entities, server_name)

    # ------------------------------------------------------------------ decisions

    def authorize(
        self, principal: Principal | None, method: str, params: Mapping[str, Any] | None
    ) -> Decision:
        """The decision for one request (``params`` as the client sent them)."""
        if method in ALWAYS_ALLOWED or method in FILTERED:
            return Decision(True, method)
        target = DECIDED.get(method)
        if target is None:
            return Decision(False, method, reason=f"method {method!r} is not allowed by policy")
        params = params if isinstance(params, Mapping) else {}
        name = params.get(target.key)
        name = name if isinstance(name, str) else ""
        asker = _Asker(self, principal)
        arguments = params.get("arguments") if target.takes_arguments else None
        annotations = self._annotations.get(name) if target is DECIDED["tools/call"] else None
        (decision,) = asker.decide(method, target, [(name, annotations)], arguments)
        return decision

    def filter_list(
        self, principal: Principal | None, method: str, result: Mapping[str, Any]
    ) -> Mapping[str, Any]:
        """``result`` of a list answer with only the items the principal may use; the
        same object when nothing is removed (or the method is not filtered)."""
        target = FILTERED.get(method)
        items = result.get(LIST_FIELD.get(method, ""))
        if target is None or not isinstance(items, list) or not items:
            return result
        named: list[tuple[str, dict[str, bool] | None]] = []
        for item in items:
            name = item.get(target.key) if isinstance(item, Mapping) else None
            hints = _hints(item) if target.feature == "tool" and isinstance(item, Mapping) else None
            named.append((name if isinstance(name, str) else "", hints))
            if hints is not None and isinstance(name, str):
                self._remember(name, hints)
        decisions = _Asker(self, principal).decide(method, target, named, None)
        kept = [
            item
            for item, decision in zip(items, decisions, strict=True)
            if decision.allowed and isinstance(item, Mapping)
        ]
        if len(kept) == len(items):
            return result
        return {**result, LIST_FIELD[method]: kept}

    def _remember(self, tool: str, hints: dict[str, bool]) -> None:
        if len(self._annotations) >= _MAX_ANNOTATED_TOOLS and tool not in self._annotations:
            self._annotations.clear()  # a bound, not a policy: a backend's tools are few
        self._annotations[tool] = hints


class _Asker:
    """The principal's part of Cedar requests, built once for one call or one list."""

    def __init__(self, authorizer: CedarAuthorizer, principal: Principal | None) -> None:
        self._authz = authorizer
        config = authorizer._config
        if principal is None:
            subject, claims = "anonymous", dict(ANONYMOUS_CLAIMS)
        else:
            subject, claims = principal.subject, dict(principal.claims)
            claims.setdefault("sub", principal.subject)
            claims.setdefault("iss", principal.issuer)
        self.subject = subject
        self.claims = values.claim_attributes(claims, config.multi_valued_claims)
        groups = values.groups_of(claims, config.group_claim_name, config.role_claim_name)
        self.uid = {"type": "Client", "id": subject}
        self.entity = json.dumps(
            {
                "uid": self.uid,
                "attrs": self.claims,
                "parents": [{"type": authorizer._group_type, "id": g} for g in groups],
            }
        )

    def decide(
        self,
        method: str,
        target: Target,
        names: Sequence[tuple[str, dict[str, bool] | None]],
        arguments: object,
    ) -> list[Decision]:
        """One decision per resource name, in one cedarpy call."""
        authz = self._authz
        args = values.argument_attributes(arguments)
        action = {"type": "Action", "id": target.action}
        context = {**self.claims, **args}
        pieces: dict[tuple[str, str], str] = {
            ("Client", self.subject): self.entity,
            ("Action", target.action): json.dumps(
                {"uid": action, "attrs": {"operation": target.action}, "parents": []}
            ),
        }
        parents = [{"type": "MCP", "id": authz._server_name}] if authz._server_name else []
        requests: list[dict[str, Any]] = []
        for name, hints in names:
            uid = {"type": target.entity_type, "id": name}
            if (target.entity_type, name) not in pieces:
                pieces[(target.entity_type, name)] = json.dumps(
                    {
                        "uid": uid,
                        "attrs": _resource_attrs(target, name, hints, args),
                        "parents": parents,
                    }
                )
            requests.append(
                {"principal": self.uid, "action": action, "resource": uid, "context": context}
            )
        if not subject_ok(self.subject):
            return [_decision(method, target, name, False, ()) for name, _ in names]
        base = authz._base_text
        if any(key in authz._base for key in pieces):  # the request's own entities win
            base = ",".join(text for key, text in authz._base.items() if key not in pieces)
        entities = "[" + ",".join(filter(None, [base, *pieces.values()])) + "]"
        results = cedarpy.is_authorized_batch(requests, authz._policies, entities)
        return [
            _decision(
                method, target, name, r.allowed and not r.diagnostics.errors, r.diagnostics.errors
            )
            for (name, _), r in zip(names, results, strict=True)
        ]


def subject_ok(subject: str) -> bool:
    """ToolHive refuses a principal without a subject (it cannot be named to Cedar)."""
    return bool(subject)


def _resource_attrs(
    target: Target, name: str, hints: Mapping[str, bool] | None, args: Mapping[str, Any]
) -> dict[str, Any]:
    own: dict[str, Any] = {"name": name, "operation": target.operation, "feature": target.feature}
    if target.feature == "tool":  # ToolHive: hints, then arguments, then its own names
        return {**(hints or {}), **args, **own}
    if target.feature == "resource":
        own["uri"] = name
    return {**own, **args}  # a prompt's arguments override, as in ToolHive


def _decision(
    method: str, target: Target, name: str, allowed: bool, errors: Sequence[str]
) -> Decision:
    resource = f"{target.entity_type}::{json.dumps(name)}"
    reason = "" if allowed else f"{method} of {name!r} denied by policy"
    return Decision(allowed, method, target.action, resource, reason, tuple(errors))


def _hints(item: Mapping[str, Any]) -> dict[str, bool] | None:
    annotations = item.get("annotations")
    if not isinstance(annotations, Mapping):
        return None
    hints = {k: annotations[k] for k in _HINTS if isinstance(annotations.get(k), bool)}
    return hints or None


def _policy_problem(text: str) -> str | None:
    """Why one config string is not exactly one Cedar policy (ToolHive parses each as
    one policy, so the i-th is ``policy<i>``), or None."""
    try:
        parsed = cedarpy.PolicySet.from_str(text).to_pst()
    except ValueError as exc:
        return f"not valid Cedar: {exc}"
    count = len(parsed.static_policies) + len(parsed.templates)
    if parsed.templates:
        return "is a template (it has ?principal or ?resource); only policies are allowed"
    if count != 1:
        return f"must be exactly one policy, holds {count}"
    return None


def _entity_pieces(text: str, problems: list[str]) -> dict[tuple[str, str], str]:
    """The config's entities, each as its JSON text by (type, id); problems appended."""
    path = "authz_config.cedar.entities_json"
    try:
        cedarpy.Entities.from_json_str(text)
        parsed = json.loads(text)
    except ValueError as exc:
        problems.append(f"{path}: not valid Cedar entities: {exc}")
        return {}
    pieces: dict[tuple[str, str], str] = {}
    for entity in parsed:
        uid = entity["uid"]
        uid = uid.get("__entity", uid) if isinstance(uid, Mapping) else uid
        key = (
            (str(uid.get("type")), str(uid.get("id")))
            if isinstance(uid, Mapping)
            else (str(uid), "")
        )
        pieces[key] = json.dumps(entity)
    return pieces
