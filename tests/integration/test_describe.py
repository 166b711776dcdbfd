"""describe through real processes and gRPC, against pandas on the pooled data."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from oncofed.client.sandbox import Sandbox
from oncofed.governance.audit import AuditTrail
from oncofed.kernel.errors import PermitRefused, QueryError, TaskCancelled, UnknownTask
from tests.oracle import assert_describe_matches

LUNG_NUMERIC = ["time", "age", "ph.ecog", "ph.karno", "pat.karno", "meal.cal", "wt.loss"]


def test_lung_describe_equals_pooled_pandas(lung_net: Sandbox, lung: pd.DataFrame) -> None:
    with lung_net.session(progress=False) as session:
        result = session.describe(LUNG_NUMERIC, min_nodes=4)
    assert sorted(result.nodes) == sorted(lung_net.node_names)
    assert len(result.nodes) == 4
    assert_describe_matches(result, lung, LUNG_NUMERIC)


def test_lung_describe_by_sex_equals_pandas_groupby(lung_net: Sandbox, lung: pd.DataFrame) -> None:
    with lung_net.session(progress=False) as session:
        result = session.describe(["age", "meal.cal"], by="sex", categories=["1", "2"])
    frame = result.to_frame()
    for sex in (1, 2):
        part = lung[lung["sex"] == sex]
        for column in ("age", "meal.cal"):
            row = frame.loc[(str(sex), column)]
            assert row["count"] == part[column].count()
            assert row["missing"] == part[column].isna().sum()
            np.testing.assert_allclose(row["mean"], part[column].mean(), rtol=1e-9)
            np.testing.assert_allclose(row["variance"], part[column].var(), rtol=1e-9)
    assert result.rows_group_missing == 0
    assert result.rows_outside_categories == 0


def test_rows_outside_agreed_categories_are_reported_not_hidden(
    lung_net: Sandbox, lung: pd.DataFrame
) -> None:
    with lung_net.session(progress=False) as session:
        result = session.describe(["age"], by="sex", categories=["1"])
    assert result.rows_outside_categories == int((lung["sex"] == 2).sum())
    assert result.to_frame().loc[("1", "age"), "count"] == int((lung["sex"] == 1).sum())


def test_gbsg2_three_centres_grouped_by_declared_categories(gbsg2: pd.DataFrame) -> None:
    columns = ["age", "tsize", "pnodes", "progrec", "estrec", "time"]
    with (
        Sandbox.from_frame(gbsg2, split_by="centre", dataset="gbsg2", release="exact") as net,
        net.session(progress=False) as session,
    ):
        overall = session.describe(columns, min_nodes=3)
        # horTh is text: the sandbox declares its categories in each node's schema.
        grouped = session.describe(["tsize", "time"], by="horTh")
    assert_describe_matches(overall, gbsg2, columns)
    frame = grouped.to_frame()
    assert set(frame.index.get_level_values("group")) == {"no", "yes"}
    for label, part in gbsg2.groupby("horTh"):
        np.testing.assert_allclose(
            frame.loc[(label, "tsize"), "mean"], part["tsize"].mean(), rtol=1e-9
        )
        np.testing.assert_allclose(frame.loc[(label, "time"), "std"], part["time"].std(), rtol=1e-9)


def test_unknown_column_is_refused_by_every_node_naming_node_and_column(
    lung_net: Sandbox,
) -> None:
    with lung_net.session(progress=False) as session, pytest.raises(QueryError) as caught:
        session.describe(["age", "tumour_size"])
    error = caught.value
    assert error.rule == "schema.unknown_column"
    assert "tumour_size" in str(error)
    refusals = error.context["errors"]
    assert sorted(r["node"] for r in refusals) == sorted(lung_net.node_names)
    assert all(r["context"]["column"] == "tumour_size" for r in refusals)
    assert "Fix:" in str(error)


def test_text_column_in_numeric_role_is_refused(gbsg2: pd.DataFrame) -> None:
    small = gbsg2.iloc[:60].assign(centre=["x", "y", "z"] * 20)
    with (
        Sandbox.from_frame(small, split_by="centre", dataset="gbsg2", release="exact") as net,
        net.session(progress=False) as session,
        pytest.raises(QueryError) as caught,
    ):
        session.describe(["horTh"])
    assert caught.value.rule == "schema.column_role"
    assert "horTh" in str(caught.value)


def test_unknown_dataset_and_unknown_task_and_bad_parameters(lung_net: Sandbox) -> None:
    with lung_net.session(progress=False) as session:
        with pytest.raises(PermitRefused) as not_granted:
            session.describe(["age"], dataset="melanoma")
        # The coordinator runs the nodes' permit rules first: nothing was sent to a node.
        assert (not_granted.value.rule, not_granted.value.node) == ("permit.dataset", "")
    lung_net.grant("lung-and-melanoma", datasets=["lung", "melanoma"])
    with lung_net.session(permit="lung-and-melanoma", progress=False) as session:
        with pytest.raises(QueryError) as missing_dataset:
            session.describe(["age"], dataset="melanoma")
        assert missing_dataset.value.rule == "node.dataset_offered"
        with pytest.raises(UnknownTask) as unknown:
            session.submit("reidentify", dataset="lung")
        assert unknown.value.rule == "task.installed"
        with pytest.raises(QueryError) as bad:
            session.submit("describe", dataset="lung", columns=[])
        assert bad.value.rule == "task.params"
        assert "columns" in str(bad.value)


def test_operator_listing_shows_schemas_and_never_data(lung_net: Sandbox) -> None:
    with lung_net.session(progress=False) as session:
        nodes = session.nodes()
    assert set(nodes["name"]) == set(lung_net.node_names)
    assert nodes["online"].all()
    assert all(datasets == ["lung"] for datasets in nodes["datasets"])


def test_every_release_and_refusal_is_in_the_node_audit_log(lung_net: Sandbox) -> None:
    with lung_net.session(progress=False) as session:
        session.describe(["age"])
        with pytest.raises(QueryError):
            session.describe(["no_such_column"])
    for name in lung_net.node_names:
        trail = AuditTrail.open_sqlite(lung_net.workdir / name / "state" / "audit.sqlite")
        entries = list(trail.entries())
        assert trail.verify(lung_net.node_identity(name)) == []
        outcomes = {e.outcome for e in entries}
        assert {"released", "QueryError"} <= outcomes
        released = [e for e in entries if e.outcome == "released"]
        # The network is shared: other tests' releases are in the trail too.
        assert all(e.released_bytes > 0 for e in released)
        assert all(e.permit_id == "sandbox" and e.actor == lung_net.researcher for e in released)
        assert any(
            e.action == "describe" and json.loads(e.details["params"])["columns"] == ["age"]
            for e in released
        )
        refused = [e for e in entries if e.outcome == "QueryError"]
        assert any(
            json.loads(e.details["params"])["columns"] == ["no_such_column"] for e in refused
        )


def test_cancel_a_waiting_task(lung_net: Sandbox) -> None:
    with lung_net.session(progress=False) as session:
        task_id = session.submit("describe", dataset="lung", columns=["age"], min_nodes=50)
        assert session.cancel(task_id) == "cancelled"
        with pytest.raises(TaskCancelled):
            session.wait(task_id)


def test_where_filter_equals_pandas_on_the_filtered_pooled_frame(
    lung_net: Sandbox, lung: pd.DataFrame
) -> None:
    where = "age >= 60 and ph.ecog is not null and (sex == 2 or wt.loss > 5)"
    expected = lung[
        (lung["age"] >= 60) & lung["ph.ecog"].notna() & ((lung["sex"] == 2) | (lung["wt.loss"] > 5))
    ]
    with lung_net.session(progress=False) as session:
        result = session.describe(["time", "meal.cal"], where=where)
        with pytest.raises(QueryError) as caught:
            session.describe(["time"], where="stage == 'IV'")
    assert_describe_matches(result, expected, ["time", "meal.cal"])
    assert caught.value.rule == "schema.unknown_column" and "stage" in str(caught.value)
