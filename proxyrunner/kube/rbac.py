"""The Role one proxy needs for its server, and nothing more: a pure function, the one
source of config/rbac/role.yaml, the chart's rbac template and the operator's Role
(tests/test_operator_manifests.py and tests/test_chart.py keep them equal).

Every rule names its objects (``resourceNames``) where the API lets it:

- ``get``/``patch`` of the StatefulSet and both Services, and ``list``/``watch`` of the
  StatefulSet, which the proxy always does with ``fieldSelector=metadata.name=<name>``
  (RBAC authorizes such a list or watch against ``resourceNames``).
- ``create`` cannot be limited by name (the name is not known at authorization time):
  the StatefulSet is created with POST so that a racing creator fails (kube.apply).
  The Services are created by server-side apply: a PATCH that creates is authorized
  as ``create`` too, with the object's name, so that one can be named.
- ``list``/``watch`` of pods go by label selector and cannot be limited; which pods count
  as backends is decided by owner UID and name instead (kube.directory).
- ``pods/attach`` only on ``<name>-0``: a stdio backend is capped at one replica, so that
  is the only pod ever attached to (``<name>-0..N-1`` could not be expressed in general).
- Nothing for EndpointSlices: pods are watched directly (kube.directory says why).
- ``configmaps`` only when the proxy reads its RunConfig through the API
  (``--configmap``); the chart and the operator mount it as a volume instead.
"""

from __future__ import annotations

from typing import Final

from proxyrunner.kube.workload import headless_service_name, service_name

Rule = dict[str, list[str]]

STDIO_POD_ORDINAL: Final = 0


def proxy_role_rules(name: str, *, runconfig_configmap: str | None = None) -> list[Rule]:
    rules: list[Rule] = []
    if runconfig_configmap is not None:
        rules.append(
            {
                "apiGroups": [""],
                "resources": ["configmaps"],
                "resourceNames": [runconfig_configmap],
                "verbs": ["get"],
            }
        )
    rules += [
        {
            "apiGroups": ["apps"],
            "resources": ["statefulsets"],
            "resourceNames": [name],
            "verbs": ["get", "list", "watch", "patch"],
        },
        {"apiGroups": ["apps"], "resources": ["statefulsets"], "verbs": ["create"]},
        {
            "apiGroups": [""],
            "resources": ["services"],
            "resourceNames": [headless_service_name(name), service_name(name)],
            "verbs": ["create", "patch"],
        },
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]},
        {
            "apiGroups": [""],
            "resources": ["pods/attach"],
            "resourceNames": [f"{name}-{STDIO_POD_ORDINAL}"],
            "verbs": ["create", "get"],
        },
    ]
    return rules
