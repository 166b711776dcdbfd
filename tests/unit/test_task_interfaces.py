"""Every installed task offers the same parameters in Python, on the command line and in the docs.

The three are derived from (or checked against) the task's declaration, so a
parameter added to a task's ``Params`` and forgotten anywhere fails here.
"""

from __future__ import annotations

import inspect
from typing import Any

import pytest
from click.testing import CliRunner

from oncofed.client.cli import command
from oncofed.client.cli_query import task_command
from oncofed.client.reference import reference_markdown, task_reference
from oncofed.client.session import Session
from oncofed.tasks import TASKS
from oncofed.tasks.base import TaskType
from tests.layout import ROOT

EMPTY = (None, (), {})


def _task(name: str) -> TaskType[Any, Any]:
    return TASKS[name]


@pytest.mark.parametrize("name", sorted(TASKS))
def test_the_session_method_takes_exactly_the_task_parameters(name: str) -> None:
    task = _task(name)
    method = getattr(Session, name)
    signature = inspect.signature(method)
    taken = {n: p for n, p in signature.parameters.items() if n != "self"}
    assert list(taken) != [] and method.__doc__
    assert set(taken) == set(task.params.researcher_interface())
    assert list(taken)[: len(task.arguments)] == list(task.arguments)
    assert signature.return_annotation in (task.result.__name__, task.result)
    for field_name, parameter in taken.items():
        info = task.params.model_fields[field_name]
        if field_name == "dataset":
            assert parameter.default is None  # the session's dataset
        elif info.is_required():
            assert parameter.default is inspect.Parameter.empty, field_name
        else:
            default = info.get_default(call_default_factory=True)
            assert parameter.default == default or (
                parameter.default is None and default in EMPTY
            ), f"{name}.{field_name}: {parameter.default!r} != {default!r}"


@pytest.mark.parametrize("name", sorted(TASKS))
def test_the_command_takes_every_task_parameter(name: str) -> None:
    task = _task(name)
    offered = {p.name for p in task_command(task).params}
    assert set(task.params.researcher_interface()) <= offered
    for field_name in task.params.researcher_interface():
        assert task.params.model_fields[field_name].description, f"{name}.{field_name}"


@pytest.mark.parametrize("name", sorted(TASKS))
def test_the_reference_documents_every_task_parameter(name: str) -> None:
    text = (ROOT / "docs" / "analyses" / "reference.md").read_text()
    assert task_reference(_task(name)) in text
    for field_name in _task(name).params.researcher_interface():
        assert f"| `{field_name}` |" in task_reference(_task(name))


def test_the_reference_is_what_the_declarations_say() -> None:
    text = (ROOT / "docs" / "analyses" / "reference.md").read_text()
    assert text == reference_markdown(), (
        "docs/analyses/reference.md is stale: "
        "python -m oncofed.client.reference > docs/analyses/reference.md"
    )


def test_query_help_lists_every_task_and_dp_and_masking_where_offered() -> None:
    runner = CliRunner()
    listing = runner.invoke(command(), ["query", "--help"], env={"COLUMNS": "200"})
    assert listing.exit_code == 0, listing.output
    for name in TASKS:
        assert name.replace("_", "-") in listing.output
    for name in ("describe", "train"):
        shown = runner.invoke(command(), ["query", name, "--help"], env={"COLUMNS": "200"})
        assert shown.exit_code == 0, shown.output
        assert "--dp " in shown.output and "--secure-aggregation" in shown.output
    for name, task in TASKS.items():
        shown = runner.invoke(
            command(), ["query", name.replace("_", "-"), "--help"], env={"COLUMNS": "200"}
        )
        # Offered exactly where the task has a DP release: nodes answer only with noise
        # unless a permit grants exact answers.
        assert ("--dp " in shown.output) == task.params.DP, name


def test_a_session_validates_before_anything_is_signed_or_sent(tmp_path: Any) -> None:
    from oncofed.governance.keys import Identity
    from oncofed.kernel.errors import QueryError

    ada = Identity.generate("ada", "researcher")
    session = Session.__new__(Session)  # no channel: nothing can be sent
    session.identity, session.permit, session.dataset = ada, "p1", "lung"
    request = session.request(
        "coxph",
        duration="time",
        event="status",
        covariates=["age", "C(sex)"],
        strata="ph.ecog",
        grid=30,
    )
    assert request.study == "p1" and request.dataset == "lung"
    assert request.covariates.text == "~ age + C(sex)"  # type: ignore[attr-defined]
    assert request.strata == ("ph.ecog",)  # type: ignore[attr-defined]
    with pytest.raises(QueryError) as caught:
        session.request("describe", columns=["age"], where="age >>= 3")
    assert caught.value.rule == "query.filter_syntax"
    with pytest.raises(QueryError) as caught:
        session.request("histogram", column="age", bins=[3, 1])
    assert caught.value.rule in ("task.params", "histogram.edges")
    with pytest.raises(QueryError) as caught:
        session.request("describe", columns=["age"], study="other")
    assert caught.value.rule == "task.params"
