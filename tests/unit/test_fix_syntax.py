"""A fix names a request parameter once; Python and the command line each write it their way.

Issue 16: command-line users were told ``grid=30`` and ``permit=...``. Fixes carry
``Param`` markers instead, which cross processes inside the error; ``str(error)``
and ``.fix`` write them as keyword arguments, the ``oncofed`` command as options
(``client/cli_query.cli_syntax``, from the task declarations).
"""

from __future__ import annotations

import pytest

from oncofed.client.cli_query import cli_syntax
from oncofed.kernel.errors import (
    FederatedErrors,
    Hole,
    NodeRefusal,
    OncofedError,
    Param,
    QueryError,
)
from oncofed.kernel.schema import ColumnSpec, DatasetSchema
from oncofed.privacy.disclosure import check_subset
from oncofed.privacy.policy import NodePolicy
from oncofed.tasks.encoding import agreed_categories

SUGGESTIONS = [
    (Param("grid", 30.0), "grid=30", "--grid 30"),
    (Param("min_nodes"), "min_nodes", "--min-nodes"),
    (Param("categories", ["no", "yes"]), "categories=['no', 'yes']", "--categories no,yes"),
    (Param("categories", Hole.items()), "categories=[...]", "--categories A,B,..."),
    (
        Param("bounds", {"wt.loss": (Hole("lo"), Hole("hi"))}),
        "bounds={'wt.loss': (lo, hi)}",
        "--bounds wt.loss=lo,hi",
    ),
    (
        Param("strata_categories", {"ph.ecog": ["0", "1"], "sex": ["1", "2"]}),
        "strata_categories={'ph.ecog': ['0', '1'], 'sex': ['1', '2']}",
        "--strata-categories ph.ecog=0,1 --strata-categories sex=1,2",
    ),
    (
        Param("dp", {"epsilon": 2.53, "delta": 1e-05, "expected_rows": 190}),
        "dp={'epsilon': 2.53, 'delta': 1e-05, 'expected_rows': 190}",
        "--dp epsilon=2.53,delta=1e-05,expected_rows=190",
    ),
    (Param("exact_times", True), "exact_times=True", "--exact-times"),
    (Param("concordance", False), "concordance=False", "--no-concordance"),
    (Param("where", "time >= 0"), "where='time >= 0'", "--where 'time >= 0'"),
    (Param("family", "gaussian"), "family='gaussian'", "--family gaussian"),
    (Param("permit", "ID"), "permit='ID'", "--permit ID"),  # an option of every query command
]


@pytest.mark.parametrize(("param", "python", "cli"), SUGGESTIONS)
def test_each_interface_writes_a_suggested_parameter_in_its_own_syntax(
    param: Param, python: str, cli: str
) -> None:
    error = QueryError("detail", rule="some.rule", fix=f"use {param}")
    # Through JSON, as a refusal travels from a node to the researcher.
    received = OncofedError.from_json(error.to_json())
    assert received.fix == f"use {python}" and str(received).endswith(f"Fix: use {python}")
    assert received.one_line(cli_syntax).endswith(f"Fix: use {cli}")
    assert [p.name for p in received.params()] == [param.name]


def test_text_that_only_looks_like_a_marker_is_left_as_it_is() -> None:
    error = QueryError("filter '\u27e6x\u27e7' cannot be read", fix="correct it")
    assert error.one_line(cli_syntax) == error.one_line() == str(error)
    assert error.params() == []


def test_merged_refusals_are_counted_as_listed_and_keep_each_interfaces_syntax() -> None:
    same = [
        NodeRefusal(
            "too fine", rule="privacy.min_grid_width", node=f"n{i}", fix=f"{Param('grid', 30)}"
        )
        for i in range(24)
    ]
    other = NodeRefusal(
        "no bounds", rule="privacy.bounds_required", node="n0", fix=f"{Param('bounds')}"
    )
    merged = FederatedErrors.combine([*same, other])
    assert merged.detail.startswith("25 refusals or failures (2 distinct): [n0, n1, n10")
    assert "Fix: grid=30" in str(merged) and "Fix: bounds" in str(merged)
    cli = merged.one_line(cli_syntax)
    assert "Fix: --grid 30" in cli and "Fix: --bounds" in cli and "grid=" not in cli
    distinct = FederatedErrors.combine([same[0], other])
    assert distinct.detail.startswith("2 refusals or failures: ")


def test_categories_a_schema_declares_are_the_only_ones_a_request_may_name() -> None:
    schema = DatasetSchema(
        columns={
            "horTh": ColumnSpec(type="category", categories=("no", "yes")),
            "cens": ColumnSpec(type="integer"),
        }
    )
    with pytest.raises(QueryError) as caught:
        agreed_categories(
            "horTh",
            ["0", "1"],
            schema,
            "n1",
            option="categories",
            rule="describe.categories_required",
        )
    assert caught.value.rule == "schema.unknown_category"
    assert caught.value.fix == "use the declared ones: categories=['no', 'yes']"
    assert caught.value.one_line(cli_syntax).endswith(
        "Fix: use the declared ones: --categories no,yes"
    )
    assert agreed_categories("horTh", ["yes"], schema, "n1", option="categories", rule="r") == (
        "yes",
    )
    # Undeclared (integer codes): any labels may be agreed; the server says if none matched.
    assert agreed_categories("cens", ["7"], schema, "n1", option="categories", rule="r") == ("7",)
    with pytest.raises(QueryError) as strata:
        agreed_categories(
            "horTh", ["0"], schema, "n1", option="strata_categories", rule="r", per_column=True
        )
    assert strata.value.fix == "use the declared ones: strata_categories={'horTh': ['no', 'yes']}"


def test_the_subset_refusal_blames_a_filter_only_when_one_could_help() -> None:
    policy = NodePolicy()
    with pytest.raises(NodeRefusal) as small_node:
        check_subset(7, 7, policy, "tiny")  # no filter: the node has 7 usable records
    assert (
        "this node has fewer than 10 records complete on every variable" in small_node.value.detail
    )
    assert "where" not in small_node.value.detail + small_node.value.fix
    assert "merge this centre's records" in small_node.value.fix
    with pytest.raises(NodeRefusal) as filtered:
        check_subset(6, 200, policy, "big")
    assert filtered.value.detail == "the where filter selects fewer than 10 rows at this node"
    assert filtered.value.one_line(cli_syntax).endswith(
        "Fix: widen the --where filter so that it keeps more rows at every node"
    )
    check_subset(0, 200, policy, "big")  # selecting nothing releases nothing
