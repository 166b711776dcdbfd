"""A node decodes each message once and hands every mod the same frozen request.

One node's ClientApp in this process, built as a real node builds it (audit
trail, permit checker, validation, secure aggregation, privacy), receives
the messages of one signed ``describe`` task.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from flwr.app import Message

from oncofed.governance.envelope import Authorisation, SignedTask
from oncofed.kernel.flower import (
    attach_authorisation,
    content_to_bytes,
    install_process_identity,
    node_context,
    params_content,
    reply_error,
    stamp,
)
from oncofed.kernel.schema import ColumnSpec
from oncofed.node.config import DatasetConfig
from oncofed.node.request import NodeRequest, current_request
from oncofed.privacy.policy import DatasetPrivacy, NodePolicy
from oncofed.tasks.describe import DescribeParams
from tests.node_harness import real_node

RUN = 99
SIGNED = {"dataset": "d", "columns": ["age"], "study": "p1"}


class Node:
    """One node as a real node is built, and the coordinator's side of its messages."""

    def __init__(self, work: Path, approval: str = "automatic") -> None:
        install_process_identity()
        rng = np.random.default_rng(3)
        pd.DataFrame({"age": rng.normal(60, 10, 400)}).to_parquet(work / "d.parquet")
        datasets = {
            "d": DatasetConfig(
                path=work / "d.parquet",
                columns={"age": ColumnSpec(type="float")},
                approval=approval,
            )
        }
        # Exact answers, as the permit grants and this node's policy allows.
        node = real_node(
            work,
            "n1",
            datasets,
            NodePolicy(dp={"d": DatasetPrivacy(allow_exact=True)}),
            permit_id="p1",
            task_types=("describe",),
            release="exact",
        )
        self.body, self.ada, self.permit = node.body, node.researcher, node.permit
        self.revocations, self.state = node.revocations, node.state
        self.audit, self.app = node.audit, node.app
        self.signed = self.sign(SIGNED)

    def sign(self, params: dict[str, Any]) -> SignedTask:
        return SignedTask.create(self.ada, "describe", json.dumps(params), "p1")

    def authorisation(self, signed: SignedTask) -> str:
        return Authorisation(
            task=signed, permit=self.permit, revocations=self.revocations
        ).model_dump_json()

    def send(
        self, message_id: str, params: str, run: int = RUN, signed: SignedTask | None = None
    ) -> Message:
        message = Message(params_content(params, participants=3), 7, "query.describe")
        stamp(message, run_id=run, message_id=message_id)
        attach_authorisation(message, self.authorisation(signed or self.signed))
        return self.app(message, node_context(7, run, {}))


@pytest.fixture
def node(tmp_path: Path) -> Callable[[str, str], Message]:
    """Send the node one message of the signed task (message id, parameters JSON)."""
    return Node(tmp_path).send


def _counting(monkeypatch: pytest.MonkeyPatch, model: type[Any], calls: Counter[str]) -> None:
    original = model.model_validate_json.__func__

    def counted(cls: type[Any], *args: Any, **kwargs: Any) -> Any:
        calls[model.__name__] += 1
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(model, "model_validate_json", classmethod(counted))


def test_each_message_is_decoded_once_and_its_authorisation_once_per_run(
    node: Callable[[str, str], Message], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: Counter[str] = Counter()
    _counting(monkeypatch, DescribeParams, calls)
    _counting(monkeypatch, Authorisation, calls)
    params = DescribeParams(dataset="d", columns=("age",), study="p1").model_dump_json()
    for i in range(3):
        reply = node(f"m{i}", params)
        assert not reply.has_error(), reply_error(reply).one_line()
    # Three messages: three decodes of their parameters, one of the signed task's (kept
    # per signature), one of the authorisation (kept per run). It was five per message.
    assert calls == Counter({"DescribeParams": 4, "Authorisation": 1})


def test_every_mod_and_the_handler_read_the_one_request_the_node_decoded(
    node: Callable[[str, str], Message], monkeypatch: pytest.MonkeyPatch
) -> None:
    import oncofed.node.app as app
    import oncofed.node.mods as mods
    import oncofed.node.secure as secure

    seen: list[NodeRequest] = []

    def spying(real: Callable[[], NodeRequest]) -> Callable[[], NodeRequest]:
        def spy() -> NodeRequest:
            seen.append(real())
            return seen[-1]

        return spy

    for module in (app, mods, secure):
        monkeypatch.setattr(module, "current_request", spying(current_request))
    params = DescribeParams(dataset="d", columns=("age",), study="p1").model_dump_json()
    assert not node("m1", params).has_error()
    # validation, secure aggregation, privacy and the handler
    assert len(seen) == 4 and all(request is seen[0] for request in seen)
    request = seen[0]
    assert request.grant is not None and request.grant.task.researcher == "ada"
    with pytest.raises(AttributeError):
        request.params = request.params  # type: ignore[misc]
    with pytest.raises(RuntimeError, match="request mod"):
        current_request()  # outside a message there is none


def test_a_message_the_signature_does_not_cover_is_refused_once_decoded(
    node: Callable[[str, str], Message],
) -> None:
    altered = DescribeParams(dataset="d", columns=("age",), study="p1", min_nodes=2)
    reply = node("m1", altered.model_dump_json())
    assert reply.has_error()
    assert reply_error(reply).rule == "task.altered"


# ---- what a review playing the compromised coordinator tried ---------------------------


def test_a_genuine_signature_on_an_altered_envelope_cannot_plant_parameters(
    tmp_path: Path,
) -> None:
    """The node keeps signed parameters by what was signed, not by the signature.

    The attack: first relay an envelope with other parameters under the researcher's genuine
    signature (refused, task.signature), then the genuine envelope with the message carrying
    those other parameters. With the cache keyed by signature, the second was released:
    exact grouped means where the researcher signed one DP mean.
    """
    node = Node(tmp_path)
    wanted = {"dataset": "d", "columns": ["age"], "study": "p1", "min_nodes": 2}
    forged = SignedTask(
        task=node.signed.task.model_copy(update={"params_json": json.dumps(wanted)}),
        signature=node.signed.signature,
    )
    altered = DescribeParams.model_validate(wanted).model_dump_json()
    first = node.send("m1", altered, signed=forged)
    assert reply_error(first).rule == "task.signature"
    second = node.send("m2", altered)
    assert reply_error(second).rule == "task.altered"


def test_two_signed_tasks_under_one_run_at_once_never_both_bind(tmp_path: Path) -> None:
    """One run, one signed task, even when two workers take both at the same instant.

    An operator's approval is per run: if two tasks could bind to one run, approving the
    one shown would release the other, never shown.
    """
    node = Node(tmp_path, approval="manual")
    params = DescribeParams(dataset="d", columns=("age",), study="p1").model_dump_json()
    for run in range(1000, 1020):
        tasks = [node.sign(SIGNED), node.sign(SIGNED)]
        gate = threading.Barrier(2)
        outcomes: list[str] = []

        def send(
            signed: SignedTask,
            run: int = run,
            gate: threading.Barrier = gate,
            outcomes: list[str] = outcomes,
        ) -> None:
            gate.wait()
            reply = node.send(f"{run}-{signed.task.nonce}", params, run=run, signed=signed)
            outcomes.append(reply_error(reply).rule)

        workers = [threading.Thread(target=send, args=(signed,)) for signed in tasks]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        assert sorted(outcomes) == ["node.approval_pending", "task.replay"], (run, outcomes)
        node.state.decide(run, "approved")
        released = [
            node.send(f"{run}-again-{i}", params, run=run, signed=s) for i, s in enumerate(tasks)
        ]
        assert sorted(r.has_error() for r in released) == [False, True]


def test_a_waiting_task_is_audited_once_however_often_it_is_asked(tmp_path: Path) -> None:
    node = Node(tmp_path, approval="manual")
    params = DescribeParams(dataset="d", columns=("age",), study="p1").model_dump_json()
    before = len(list(node.audit.entries()))
    for i in range(5):
        assert reply_error(node.send(f"ask-{i}", params)).rule == "node.approval_pending"
    entries = list(node.audit.entries())[before:]
    assert [e.outcome for e in entries] == ["ApprovalPending"]
    node.state.decide(RUN, "approved")
    assert not node.send("after", params).has_error()
    assert [e.outcome for e in list(node.audit.entries())[before:]] == [
        "ApprovalPending",
        "released",
    ]


@pytest.mark.parametrize(
    ("run", "where", "rule"),
    [
        (2**63, None, "task.run_id"),
        (RUN, "deep", "task.params"),
    ],
)
def test_malformed_messages_are_refused_by_rule_and_audited(
    tmp_path: Path, run: int, where: str | None, rule: str
) -> None:
    node = Node(tmp_path)
    params: dict[str, Any] = {"dataset": "d", "columns": ["age"], "study": "p1"}
    if where == "deep":
        nested: dict[str, Any] = {"kind": "compare", "column": "age", "op": ">", "value": 1}
        for _ in range(300):
            nested = {"kind": "not", "item": nested}
        params["where"] = nested
    before = len(list(node.audit.entries()))
    reply = node.send("m1", json.dumps(params), run=run)
    assert reply_error(reply).rule == rule
    assert len(list(node.audit.entries())) == before + 1


def test_a_stored_release_comes_back_only_to_the_message_that_asked_for_it(
    tmp_path: Path,
) -> None:
    """A re-sent message gets its stored release; another task under the same message id
    does not (a coordinator chooses message ids: it would get a reply it never asked for,
    e.g. the unmasked one of a secure-aggregation task)."""
    node = Node(tmp_path)
    first = {**SIGNED, "dp": {"epsilon": 0.5}, "bounds": {"age": [0.0, 120.0]}}
    other = {**first, "bounds": {"age": [0.0, 150.0]}}
    first_signed, other_signed = node.sign(first), node.sign(other)
    released = node.send("m1", json.dumps(first), run=1, signed=first_signed)
    again = node.send("m1", json.dumps(first), run=1, signed=first_signed)
    assert not released.has_error(), reply_error(released).one_line()
    assert content_to_bytes(again.content) == content_to_bytes(released.content)
    answer = node.send("m1", json.dumps(other), run=2, signed=other_signed)
    assert not answer.has_error(), reply_error(answer).one_line()
    assert content_to_bytes(answer.content) != content_to_bytes(released.content)
    scales = [dict(r.content.config_records["oncofed.privacy"]) for r in (released, answer)]
    assert scales[0] != scales[1]  # wider bounds: its own release, with its own noise scale
