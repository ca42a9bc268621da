"""Which MCP methods the policies decide, and as what Cedar request: ToolHive's table.

- ``tools/call``, ``prompts/get``, ``resources/read`` (and ``resources/subscribe`` /
  ``unsubscribe``, which ToolHive treats as reading the resource) are decided: principal
  ``Client::"<sub>"``, action ``Action::"call_tool"`` / ``"get_prompt"`` /
  ``"read_resource"``, resource ``Tool::"<name>"`` / ``Prompt::"<name>"`` /
  ``Resource::"<uri>"``.
- ``tools/list``, ``prompts/list``, ``resources/list`` pass, and their answer keeps only
  the items the principal may call, get or read (the same decision, without arguments).
  ``resources/templates/list`` passes unfiltered, as in ToolHive. No ``list_*`` action is
  ever asked: ToolHive's middleware does not ask it either.
- Protocol methods pass unasked (``ALWAYS_ALLOWED``).
- Any other method (``tasks/*``, ``elicitation/create``, ``sampling/createMessage``, an
  unknown notification, a newer method) is refused: ToolHive denies by default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True, slots=True)
class Target:
    """How one decided method becomes a Cedar request."""

    action: str
    """The Cedar action id (``Action::"<action>"``)."""
    entity_type: str
    """The resource's entity type."""
    key: str
    """The param (and list item field) that names the resource."""
    feature: str
    operation: str
    takes_arguments: bool


TOOL: Final = Target("call_tool", "Tool", "name", "tool", "call", True)
PROMPT: Final = Target("get_prompt", "Prompt", "name", "prompt", "get", True)
RESOURCE: Final = Target("read_resource", "Resource", "uri", "resource", "read", False)

DECIDED: Final = {
    "tools/call": TOOL,
    "prompts/get": PROMPT,
    "resources/read": RESOURCE,
    "resources/subscribe": RESOURCE,
    "resources/unsubscribe": RESOURCE,
}

FILTERED: Final = {"tools/list": TOOL, "prompts/list": PROMPT, "resources/list": RESOURCE}
"""List methods whose answer is filtered, with the decision each item needs."""

LIST_FIELD: Final = {
    "tools/list": "tools",
    "prompts/list": "prompts",
    "resources/list": "resources",
}

ALWAYS_ALLOWED: Final = frozenset(
    {
        "initialize",
        "ping",
        "server/discover",
        "features/list",
        "roots/list",
        "subscriptions/listen",
        "logging/setLevel",
        "completion/complete",
        "resources/templates/list",
        "notifications/message",
        "notifications/initialized",
        "notifications/progress",
        "notifications/cancelled",
        "notifications/roots/list_changed",
        "notifications/tools/list_changed",
        "notifications/prompts/list_changed",
        "notifications/resources/list_changed",
        "notifications/resources/updated",
        "notifications/tasks/status",
    }
)
