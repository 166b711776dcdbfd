"""Typed releases and the release gate: no number leaves a node without its kind, unchecked.

The attack: a task's handler (a new one, or one with a bug) tries to send a
patient's value as a plain number. Without the gate a handler's reply was
whatever RecordDict it built, so the value left; with it, a release class
that holds an untyped number cannot even be defined, and a reply that is not
one of the task's declared releases never becomes a message.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from flwr.app import Array, ArrayRecord, Message, RecordDict

from oncofed.kernel.errors import TaskFailed
from oncofed.kernel.flower import (
    install_process_identity,
    node_context,
    params_content,
    reply_error,
)
from oncofed.kernel.schema import infer_schema
from oncofed.node.app import build_client_app
from oncofed.node.data import FrameCatalogue
from oncofed.privacy.gate import check_release
from oncofed.privacy.policy import DatasetPrivacy, NodePolicy
from oncofed.privacy.release import (
    AgreedValues,
    Count,
    Counts,
    Kind,
    Moments,
    Release,
    UntypedRelease,
    Weights,
)
from oncofed.tasks import TASKS, describe
from oncofed.tasks.base import LocalDataset, TaskType
from oncofed.tasks.describe import DescribeParams
from tests.oracle import PERMISSIVE


class Table(Release):
    labels: tuple[str, ...]
    counts: Counts
    times: AgreedValues
    rows: Count


class Model(Release):
    weights: Weights
    examples: Count
    means: Moments


def test_a_release_class_with_an_untyped_number_cannot_be_defined() -> None:
    with pytest.raises(UntypedRelease, match="age"):

        class Leaky(Release):
            age: float  # a patient's value, not a statistic of a kind the gate knows

    with pytest.raises(UntypedRelease, match="values"):

        class AlsoLeaky(Release):
            values: list[float]


def test_a_release_crosses_the_wire_with_every_number_typed() -> None:
    table = Table(labels=("a", "b"), counts=[[3, 0], [5, 7]], times=[30.0, 60.0], rows=15)
    assert {key: kind for key, kind, _ in table.numbers()} == {
        "counts": Kind.COUNT,
        "times": Kind.AGREED,
        "rows": Kind.COUNT,
    }
    back = Table.from_content(table.to_content("centre-A"))
    assert back.labels == ("a", "b") and back.rows == 15
    np.testing.assert_array_equal(back.counts, table.counts)
    model = Model(
        weights={"0.weight": np.ones((2, 3)), "0.bias": [0.5, 1.5]}, examples=9, means=[1.0]
    )
    content = model.to_content("centre-B")
    assert sorted(content.array_records["oncofed.release"]) == [
        "examples",
        "means",
        "weights.0.bias",
        "weights.0.weight",
    ]
    again = Model.from_content(content)
    np.testing.assert_array_equal(again.weights["0.weight"], np.ones((2, 3)))
    with pytest.raises(ValueError, match="not a Table"):
        Table.from_content(content)


@pytest.mark.parametrize(
    ("release", "rule"),
    [
        (Table(labels=(), counts=[[1, -2]], times=[1.0], rows=1), "release.count"),
        (Table(labels=(), counts=[[1]], times=[np.nan], rows=1), "release.finite"),
        (Model(weights={"w": [np.inf]}, examples=1, means=[0.0]), "release.finite"),
    ],
)
def test_the_gate_refuses_numbers_that_are_not_what_their_kind_says(
    release: Release, rule: str
) -> None:
    with pytest.raises(TaskFailed) as caught:
        check_release(release, (Table, Model), task="t", node="centre-A")
    assert caught.value.rule == rule and caught.value.node == "centre-A"


def test_noisy_counts_may_be_negative_and_undeclared_releases_never_pass() -> None:
    noisy = Table(labels=(), counts=[[-1]], times=[1.0], rows=3, privacy={"epsilon": 1.0})
    assert check_release(noisy, (Table,), task="t", node="n") is noisy
    with pytest.raises(TaskFailed) as caught:
        check_release(noisy, (Model,), task="t", node="n")
    assert caught.value.rule == "release.undeclared"


def _leaky_task() -> TaskType[Any, Any]:
    """describe, but its handler sends the first patient's age in a hand-built RecordDict."""

    def leak(params: DescribeParams, local: Any) -> Any:
        first = float(local.frame[params.columns[0]].iloc[0])
        return RecordDict({"oops": ArrayRecord({"age": Array(np.array([first]))})})

    return TaskType(
        name="describe",
        params=DescribeParams,
        result=describe.DescribeResult,
        serve=describe.describe_serve,
        node_handlers={"describe": leak},
        releases=describe.TASK.releases,
    )


def test_a_handler_that_builds_its_own_reply_sends_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    install_process_identity()
    frame = pd.DataFrame({"age": [61.0, 70.0, 55.0, 48.0] * 5})
    catalogue = FrameCatalogue("centre-A", {"d": (infer_schema(frame), frame)}, PERMISSIVE)
    leaky = _leaky_task()
    # Without the gate the handler's RecordDict was the reply: the first age left the node.
    local = LocalDataset("centre-A", "d", infer_schema(frame), frame, PERMISSIVE)
    direct = leaky.node_handlers["describe"](DescribeParams(dataset="d", columns=("age",)), local)
    assert direct.array_records["oops"]["age"].numpy().tolist() == [61.0]
    monkeypatch.setitem(TASKS, "describe", leaky)
    app = build_client_app(lambda _c: catalogue)
    params = DescribeParams(dataset="d", columns=("age",), min_nodes=1).model_dump_json()
    reply = app(
        Message(params_content(params, participants=3), 1, "query.describe"), node_context(1, 1, {})
    )
    assert reply.has_error()
    error = reply_error(reply)
    assert error.rule == "release.undeclared" and "61" not in error.one_line()


def _noiseless_task() -> TaskType[Any, Any]:
    """describe, but its handler ignores dp= and releases the exact moments."""

    def exact(params: DescribeParams, local: LocalDataset) -> Any:
        return describe.describe_node(params.model_copy(update={"dp": None}), local)

    return TaskType(
        name="describe",
        params=DescribeParams,
        result=describe.DescribeResult,
        serve=describe.describe_serve,
        node_handlers={"describe": exact},
        releases=describe.TASK.releases,
    )


@pytest.mark.parametrize("allow_exact", [False, True])
def test_a_reply_without_dp_noise_never_leaves_where_noise_was_due(
    monkeypatch: pytest.MonkeyPatch, allow_exact: bool
) -> None:
    """Whatever a task's handler does, a DP request or a DP-only dataset gets noise or nothing.

    Every installed task has a DP release; this one's handler forgets it.
    """
    install_process_identity()
    frame = pd.DataFrame({"age": [61.0, 70.0, 55.0, 48.0] * 5})
    policy = NodePolicy(min_nodes=1, dp={"d": DatasetPrivacy(allow_exact=allow_exact)})
    catalogue = FrameCatalogue("centre-A", {"d": (infer_schema(frame), frame)}, policy)
    monkeypatch.setitem(TASKS, "describe", _noiseless_task())
    app = build_client_app(lambda _c: catalogue)
    params = DescribeParams(
        dataset="d", columns=("age",), dp={"epsilon": 0.5}, bounds={"age": (0.0, 100.0)}
    ).model_dump_json()
    reply = app(
        Message(params_content(params, participants=3), 1, "query.describe"), node_context(1, 1, {})
    )
    assert reply.has_error()
    assert reply_error(reply).rule == "privacy.dp_unsupported"
