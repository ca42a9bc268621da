"""The pure parts of telemetry: W3C traceparent checks, ``_meta`` in and out, and the
bound on metric names a hostile client chooses."""

from __future__ import annotations

import pytest

from proxyrunner.telemetry import context, semconv

VALID = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.mark.parametrize(
    ("traceparent", "sampled"),
    [
        (VALID, True),
        (VALID[:-2] + "00", False),
        ("00-" + "0" * 32 + "-00f067aa0ba902b7-01", None),  # all-zero trace id
        ("ff" + VALID[2:], None),  # forbidden version
        ("00-4bf92f35-00f067aa0ba902b7-01", None),
        ("zz" + VALID[2:], None),
        ("x" * 1000, None),
    ],
)
def test_only_a_well_formed_traceparent_decides_sampling(
    traceparent: str, sampled: bool | None
) -> None:
    assert context.sampled_flag(traceparent) is sampled


def test_a_request_without_context_is_sampled_at_the_rate_and_one_with_follows_it() -> None:
    never, always = context.Sampling(0.0), context.Sampling(1.0)
    assert not never.decide(None)
    assert always.decide(None)
    assert never.decide({"traceparent": VALID})
    assert not always.decide({"traceparent": VALID[:-2] + "00"})


def test_meta_context_is_read_and_replaced_leaving_other_meta_alone() -> None:
    message = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "t", "_meta": {"traceparent": VALID, "progressToken": 7}},
    }
    assert context.from_meta(message) == {"traceparent": VALID}
    ours = VALID.replace("00f067aa0ba902b7", "1111111111111111")
    context.into_meta(message, {"traceparent": ours})
    assert message["params"] == {"name": "t", "_meta": {"traceparent": ours, "progressToken": 7}}
    bare: dict[str, object] = {"jsonrpc": "2.0", "id": 2, "method": "ping"}
    context.into_meta(bare, {"traceparent": ours})
    assert bare["params"] == {"_meta": {"traceparent": ours}}


def test_tool_names_past_the_bound_become_other_in_metrics() -> None:
    names = semconv.BoundedNames(limit=2)
    assert [names(n) for n in ("a", "b", "c", "a")] == ["a", "b", "_OTHER", "a"]


def test_an_error_answer_and_a_failed_tool_result_have_an_error_type() -> None:
    assert semconv.error_of({"id": 1, "error": {"code": -32602}}) == (-32602, "-32602")
    assert semconv.error_of({"id": 1, "result": {"isError": True}}) == (0, "tool_error")
    assert semconv.error_of({"id": 1, "result": {}}) is None
