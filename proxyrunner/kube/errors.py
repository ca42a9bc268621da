"""Kubernetes API errors as project errors, classified by what the caller should do.

kubernetes_asyncio's ApiException never leaves this package: ``translate`` maps the HTTP
status to a class and writes a plain message (a 403 names the verb and resource the
Role is missing), with the server's answer truncated before it can reach a log line.
"""

from __future__ import annotations

import json
from typing import Final

from kubernetes_asyncio.client.exceptions import ApiException

from proxyrunner.errors import ProxyRunnerError

_DETAIL_LIMIT: Final = 300


class KubeError(ProxyRunnerError):
    """An API call failed; ``retryable`` says whether trying again later can help."""

    retryable = False

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class KubeNotFound(KubeError):
    pass


class KubeConflict(KubeError):
    """The object changed since we read it (resourceVersion precondition) or exists."""

    retryable = True


class KubeForbidden(KubeError):
    pass


class KubeUnavailable(KubeError):
    """The API server is unreachable, overloaded or timed out."""

    retryable = True


def _detail(exc: ApiException) -> str:
    raw: object = exc.body
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw or "")
    try:
        message = json.loads(text).get("message", "") if text else ""
    except (ValueError, AttributeError):
        message = text
    return str(message)[:_DETAIL_LIMIT]


def translate(exc: Exception, verb: str, resource: str, namespace: str) -> KubeError:
    """The project error for a failed ``verb`` on ``resource`` (e.g. "statefulsets/x")."""
    if not isinstance(exc, ApiException):
        return KubeUnavailable(
            f"cannot reach the Kubernetes API to {verb} {resource} in {namespace}: "
            f"{exc.__class__.__name__}"
        )
    status = exc.status or 0
    where = f"{resource} in namespace {namespace}"
    if status == 403:
        kind = resource.split("/")[0]
        return KubeForbidden(
            f"forbidden: the proxy's Role does not allow '{verb}' on {kind} "
            f"(namespace {namespace}); see config/rbac/role.yaml",
            status,
        )
    if status == 404:
        return KubeNotFound(f"{where} not found", status)
    if status == 409:
        return KubeConflict(f"conflict on {where}: {_detail(exc)}", status)
    if status in (429, 500, 502, 503, 504):
        return KubeUnavailable(f"API server answered {status} for {verb} {where}", status)
    return KubeError(f"{verb} {where} failed with HTTP {status}: {_detail(exc)}", status)


def short_reason(exc: BaseException) -> str:
    """Why a call failed, in a few words for a log line (never a response body)."""
    if isinstance(exc, ApiException):
        return f"{exc.status} {exc.reason}"
    if isinstance(exc, ProxyRunnerError):
        return str(exc)[:_DETAIL_LIMIT]
    return f"{exc.__class__.__name__}: {str(exc)[:200]}"
