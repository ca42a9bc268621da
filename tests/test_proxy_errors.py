"""Every error of the data path knows its answer: the HTTP status, the JSON-RPC code and,
for a failed backend call, the metric label, as the README's errors table says."""

from __future__ import annotations

import json

import pytest

from proxyrunner.proxy import errors

ANSWERS = [
    (errors.ParseError, 400, -32700),
    (errors.InvalidRequest, 400, -32600),
    (errors.BodyIncomplete, 400, -32600),
    (errors.HeaderMismatch, 400, -32020),
    (errors.MethodNotAllowed, 405, -32600),
    (errors.MisdirectedHost, 421, -32600),
    (errors.ForeignOrigin, 403, -32600),
    (errors.BodyTooLarge, 413, -32004),
    (errors.ServiceUnavailable, 503, -32002),
    (errors.BackendUnreachable, 502, -32002),
    (errors.BackendClosedEarly, 502, -32002),
    (errors.BackendMisbehaved, 502, -32002),
    (errors.BackendTimeout, 504, -32003),
]


@pytest.mark.parametrize(("kind", "status", "code"), ANSWERS)
def test_each_error_answers_with_its_status_and_json_rpc_code(
    kind: type[errors.ProxyError], status: int, code: int
) -> None:
    response = kind("what went wrong", request_id=9).response()
    assert response.status == status
    assert response.content_type == "application/json"
    assert response.body is not None
    body = json.loads(bytes(response.body))  # type: ignore[arg-type]
    assert body == {
        "jsonrpc": "2.0",
        "id": 9,
        "error": {"code": code, "message": "what went wrong"},
    }


def test_an_unknown_session_is_404_with_minus_32001() -> None:
    response = errors.SessionNotFound().response()
    assert response.status == 404
    assert json.loads(bytes(response.body))["error"]["code"] == -32001  # type: ignore[arg-type]


def test_try_again_later_says_when() -> None:
    assert errors.ServiceUnavailable("no backend").response().headers["Retry-After"] == "1"
    assert "Retry-After" not in errors.BackendTimeout("slow").response().headers


@pytest.mark.parametrize(
    ("kind", "label"),
    [
        (errors.BackendUnreachable, "refused"),
        (errors.BackendMisbehaved, "refused"),
        (errors.BackendClosedEarly, "reset"),
        (errors.BackendTimeout, "timeout"),
    ],
)
def test_each_backend_failure_has_its_metric_label(
    kind: type[errors.BackendFailure], label: str
) -> None:
    assert kind.metric == label
