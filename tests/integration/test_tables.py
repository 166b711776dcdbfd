"""correlation, crosstab, histogram and quantiles through real processes and gRPC.

Each result is compared with numpy / scipy / pandas on the pooled frame: the
lung data in 4 centres (``lung_net``) and GBSG2 in 3 centres, whose text
columns ``horTh``, ``menostat`` and ``tgrade`` carry categories the sandbox
declares in every node's schema.
"""

from __future__ import annotations

from collections.abc import Iterator
from io import StringIO
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from scipy.stats import chi2_contingency

from oncofed.client.cli import command
from oncofed.client.sandbox import Sandbox
from oncofed.kernel.errors import QueryError
from oncofed.tasks.crosstab import CrosstabResult
from oncofed.tasks.quantiles import QuantilesResult

LUNG_NUMERIC = ["age", "ph.karno", "pat.karno", "meal.cal", "wt.loss"]
GBSG2_NUMERIC = ["age", "tsize", "pnodes", "progrec", "estrec", "time"]
REL = 1e-9


@pytest.fixture(scope="module")
def gbsg2_net(gbsg2: pd.DataFrame) -> Iterator[Sandbox]:
    with Sandbox.from_frame(gbsg2, split_by="centre", dataset="gbsg2", release="exact") as net:
        yield net


def _incomplete_by_centre(frame: pd.DataFrame, columns: list[str]) -> dict[str, int]:
    incomplete = frame[columns].isna().any(axis=1)
    return {str(k): int(v) for k, v in incomplete.groupby(frame["centre"]).sum().items()}


def _assert_crosstab_matches(result: CrosstabResult, pooled: pd.DataFrame) -> None:
    """Counts equal pd.crosstab; the test equals scipy's chi2_contingency with its defaults."""
    observed = pd.crosstab(pooled[result.row], pooled[result.col]).reindex(
        index=_typed(result.row_categories, pooled[result.row]),
        columns=_typed(result.col_categories, pooled[result.col]),
        fill_value=0,
    )
    np.testing.assert_array_equal(result.to_frame().to_numpy(), observed.to_numpy())
    expected = chi2_contingency(observed.to_numpy())
    np.testing.assert_allclose(result.statistic, expected.statistic, rtol=REL)
    np.testing.assert_allclose(result.pvalue, expected.pvalue, rtol=REL)
    assert result.dof == expected.dof
    np.testing.assert_allclose(result.expected_frame(), expected.expected_freq, rtol=REL)
    assert result.correction == (expected.dof == 1)
    margins = result.to_frame(margins=True)
    assert margins.loc["All", "All"] == result.n == observed.to_numpy().sum()


def _typed(labels: list[str], values: pd.Series) -> list[object]:
    """Agreed labels as the pooled column writes them (integers for integer columns)."""
    return [int(v) for v in labels] if pd.api.types.is_integer_dtype(values) else list(labels)


def _assert_quantiles_within_bound(result: QuantilesResult, values: pd.Series) -> None:
    pooled = values.dropna().to_numpy(dtype=float)
    exact = np.quantile(pooled, result.q, method=result.method)
    errors = np.abs(np.asarray(result.values) - exact)
    assert np.all(errors <= np.asarray(result.bounds)), (result.values, exact, result.bounds)
    # Useful, not just true: half the agreed tolerance, plus rounding.
    assert max(result.bounds) <= result.tolerance / 2 + 1e-12
    assert result.n == len(pooled)
    assert result.missing == int(values.isna().sum())


# ---- correlation -------------------------------------------------------------


def test_lung_correlation_equals_numpy_on_the_complete_cases(
    lung_net: Sandbox, lung: pd.DataFrame
) -> None:
    with lung_net.session(progress=False) as session:
        result = session.correlation(LUNG_NUMERIC, min_nodes=4)
    complete = lung[LUNG_NUMERIC].dropna().to_numpy(dtype=float)
    assert sorted(result.nodes) == sorted(lung_net.node_names)
    assert result.n == len(complete)
    assert result.rows_dropped == len(lung) - len(complete)
    assert result.rows_dropped_by_node == _incomplete_by_centre(lung, LUNG_NUMERIC)
    np.testing.assert_allclose(result.covariance, np.cov(complete, rowvar=False), rtol=REL)
    np.testing.assert_allclose(result.correlation, np.corrcoef(complete, rowvar=False), rtol=REL)
    np.testing.assert_allclose(result.means, complete.mean(axis=0), rtol=REL)
    assert list(result.correlation.columns) == LUNG_NUMERIC
    pairs = result.to_frame()
    assert len(pairs) == len(LUNG_NUMERIC) * (len(LUNG_NUMERIC) + 1) // 2
    assert pairs.loc[("age", "wt.loss"), "correlation"] == result.correlation.loc["age", "wt.loss"]


def test_lung_correlation_with_where_equals_numpy_on_the_filtered_rows(
    lung_net: Sandbox, lung: pd.DataFrame
) -> None:
    columns = ["age", "time", "meal.cal"]
    with lung_net.session(progress=False) as session:
        result = session.correlation(columns, where="sex == 2 and ph.ecog <= 1")
    kept = lung[(lung["sex"] == 2) & (lung["ph.ecog"] <= 1)]
    complete = kept[columns].dropna().to_numpy(dtype=float)
    assert result.n == len(complete)
    assert result.rows_dropped == len(kept) - len(complete)
    np.testing.assert_allclose(result.covariance, np.cov(complete, rowvar=False), rtol=REL)
    np.testing.assert_allclose(result.correlation, np.corrcoef(complete, rowvar=False), rtol=REL)


def test_gbsg2_correlation_over_three_centres(gbsg2_net: Sandbox, gbsg2: pd.DataFrame) -> None:
    with gbsg2_net.session(progress=False) as session:
        result = session.correlation(GBSG2_NUMERIC, where="horTh == 'yes'", min_nodes=3)
    data = gbsg2.loc[gbsg2["horTh"] == "yes", GBSG2_NUMERIC].to_numpy(dtype=float)
    assert len(result.nodes) == 3
    assert result.n == len(data) and result.rows_dropped == 0
    np.testing.assert_allclose(result.covariance, np.cov(data, rowvar=False), rtol=REL)
    np.testing.assert_allclose(result.correlation, np.corrcoef(data, rowvar=False), rtol=REL)


# ---- crosstab ----------------------------------------------------------------


def test_lung_crosstab_2x2_equals_scipy_with_yates_correction(
    lung_net: Sandbox, lung: pd.DataFrame
) -> None:
    with lung_net.session(progress=False) as session:
        corrected = session.crosstab(
            "sex", "status", row_categories=["1", "2"], col_categories=["0", "1"]
        )
        plain = session.crosstab(
            "sex", "status", row_categories=["1", "2"], col_categories=["0", "1"], correction=False
        )
    _assert_crosstab_matches(corrected, lung)
    assert corrected.correction and corrected.dof == 1
    table = pd.crosstab(lung["sex"], lung["status"]).to_numpy()
    uncorrected = chi2_contingency(table, correction=False)
    np.testing.assert_allclose(plain.statistic, uncorrected.statistic, rtol=REL)
    np.testing.assert_allclose(plain.pvalue, uncorrected.pvalue, rtol=REL)
    assert not plain.correction
    assert corrected.rows_missing == corrected.rows_outside_categories == 0


def test_lung_crosstab_with_where(lung_open_net: Sandbox, lung: pd.DataFrame) -> None:
    with lung_open_net.session(progress=False) as session:
        result = session.crosstab(
            "sex",
            "status",
            row_categories=["1", "2"],
            col_categories=["0", "1"],
            where="age >= 60 and wt.loss is not null",
        )
    _assert_crosstab_matches(result, lung[(lung["age"] >= 60) & lung["wt.loss"].notna()])


def test_gbsg2_crosstab_on_schema_declared_categories(
    gbsg2_net: Sandbox, gbsg2: pd.DataFrame
) -> None:
    with gbsg2_net.session(progress=False) as session:
        grade = session.crosstab("tgrade", "horTh")
        meno = session.crosstab("menostat", "horTh", where="tsize > 20")
    assert grade.row_categories == ["I", "II", "III"] and grade.dof == 2
    assert not grade.correction
    _assert_crosstab_matches(grade, gbsg2)
    assert meno.dof == 1 and meno.correction
    _assert_crosstab_matches(meno, gbsg2[gbsg2["tsize"] > 20])


def test_rows_outside_agreed_categories_are_reported_not_hidden(
    gbsg2_net: Sandbox, gbsg2: pd.DataFrame
) -> None:
    with gbsg2_net.session(progress=False) as session:
        result = session.crosstab("tgrade", "horTh", row_categories=["I", "II"])
    outside = gbsg2["tgrade"] == "III"
    assert result.rows_outside_categories == int(outside.sum())
    by_centre = outside.groupby(gbsg2["centre"]).sum()
    assert result.rows_outside_by_node == {str(k): int(v) for k, v in by_centre.items()}
    _assert_crosstab_matches(result, gbsg2[~outside])


def test_category_present_at_no_node_is_a_typed_refusal(lung_net: Sandbox) -> None:
    with lung_net.session(progress=False) as session, pytest.raises(QueryError) as caught:
        session.crosstab("sex", "status", row_categories=["1", "2"], col_categories=["0", "1", "2"])
    error = caught.value
    assert error.rule == "crosstab.empty_category"
    assert error.context["column"] == "status" and error.context["categories"] == ["2"]
    assert "col_categories" in error.fix


def test_crosstab_without_agreed_categories_is_refused_by_every_node(lung_net: Sandbox) -> None:
    with lung_net.session(progress=False) as session, pytest.raises(QueryError) as caught:
        session.crosstab("sex", "status")
    assert caught.value.rule == "crosstab.categories"
    assert sorted(r["node"] for r in caught.value.context["errors"]) == sorted(lung_net.node_names)
    assert "row_categories" in caught.value.fix


# ---- histogram ---------------------------------------------------------------


def test_lung_histogram_on_agreed_edges_equals_numpy(
    lung_open_net: Sandbox, lung: pd.DataFrame, tmp_path: Path
) -> None:
    edges = [0.0, 500.0, 1000.0, 1500.0, 2000.0, 2500.0]
    with lung_open_net.session(progress=False) as session:
        result = session.histogram("meal.cal", edges)
        equal = session.histogram("age", 12, range=(40, 82), where="sex == 1")
    values = lung["meal.cal"].dropna()
    assert result.counts == np.histogram(values, bins=edges)[0].tolist()
    assert result.edges == edges
    assert result.missing == int(lung["meal.cal"].isna().sum())
    assert result.below == int((values < 0).sum())
    assert result.above == int((values > 2500).sum()) > 0
    assert sorted(result.rows_missing_by_node) == sorted(lung_open_net.node_names)
    ages = lung.loc[lung["sex"] == 1, "age"]
    counts, bin_edges = np.histogram(ages, bins=12, range=(40, 82))
    assert equal.counts == counts.tolist()
    np.testing.assert_array_equal(equal.edges, bin_edges)
    assert equal.below == int((ages < 40).sum()) and equal.above == int((ages > 82).sum())
    frame = equal.to_frame()
    assert list(frame.columns) == ["left", "right", "count", "density"]
    figure = equal.plot()
    figure.savefig(tmp_path / "age.png")
    assert (tmp_path / "age.png").stat().st_size > 1000


def test_gbsg2_histogram_with_where(gbsg2_net: Sandbox, gbsg2: pd.DataFrame) -> None:
    edges = [0, 20, 30, 40, 120]  # wide enough that no node has a bin of 1-4 patients
    with gbsg2_net.session(progress=False) as session:
        result = session.histogram("tsize", edges, where="menostat == 'Post' and pnodes > 2")
    kept = gbsg2.loc[(gbsg2["menostat"] == "Post") & (gbsg2["pnodes"] > 2), "tsize"]
    assert result.counts == np.histogram(kept, bins=edges)[0].tolist()
    assert result.n == len(kept)


def test_edges_not_increasing_are_refused_before_any_node_is_asked(lung_net: Sandbox) -> None:
    with lung_net.session(progress=False) as session:
        with pytest.raises(QueryError) as caught:
            session.histogram("age", [40, 60, 50, 80])
        with pytest.raises(QueryError) as no_range:
            session.histogram("age", 10)
    assert caught.value.rule == "histogram.edges"
    assert "not strictly increasing" in str(caught.value) and caught.value.fix
    assert no_range.value.rule == "histogram.edges" and "range" in no_range.value.fix


# ---- quantiles ---------------------------------------------------------------


@pytest.mark.parametrize("method", ["linear", "inverted_cdf", "lower"])
def test_lung_quantiles_within_the_stated_bound_of_numpy(
    lung_net: Sandbox, lung: pd.DataFrame, method: str
) -> None:
    qs = [0.1, 0.25, 0.5, 0.75, 0.9]
    with lung_net.session(progress=False) as session:
        result = session.quantiles(
            "wt.loss",
            qs,
            lower=-50,
            upper=100,
            tolerance=0.01,
            method=method,  # type: ignore[arg-type]
        )
    _assert_quantiles_within_bound(result, lung["wt.loss"])
    assert result.below == 0 and result.above == 0
    assert 14 <= result.rounds <= 15  # R = ceil(log2(150 / 0.01)) = 14
    assert list(result.to_frame().index) == qs


def test_quantiles_with_where_and_default_tolerance(lung_net: Sandbox, lung: pd.DataFrame) -> None:
    with lung_net.session(progress=False) as session:
        result = session.quantiles("time", [0.5, 0.8], lower=0, upper=1200, where="sex == 2")
    _assert_quantiles_within_bound(result, lung.loc[lung["sex"] == 2, "time"])
    assert result.tolerance == pytest.approx(1.2)


def test_gbsg2_quantiles_over_three_centres(gbsg2_net: Sandbox, gbsg2: pd.DataFrame) -> None:
    with gbsg2_net.session(progress=False) as session:
        result = session.quantiles("estrec", [0.25, 0.5, 0.75], lower=0, upper=1200, tolerance=0.5)
    _assert_quantiles_within_bound(result, gbsg2["estrec"])
    assert result.above == int((gbsg2["estrec"] > 1200).sum())


def test_quantile_outside_the_agreed_bounds_is_refused(lung_net: Sandbox) -> None:
    with lung_net.session(progress=False) as session, pytest.raises(QueryError) as caught:
        session.quantiles("age", [0.5], lower=0, upper=50)
    assert caught.value.rule == "quantiles.out_of_bounds"
    assert "above upper" in str(caught.value)


# ---- bad input -----------------------------------------------------------------


def test_text_column_in_numeric_role_is_refused(gbsg2_net: Sandbox) -> None:
    with gbsg2_net.session(progress=False) as session:
        with pytest.raises(QueryError) as correlation:
            session.correlation(["age", "horTh"])
        with pytest.raises(QueryError) as histogram:
            session.histogram("tgrade", [0, 1, 2])
        with pytest.raises(QueryError) as quantiles:
            session.quantiles("menostat", [0.5], lower=0, upper=1)
    for caught, column in ((correlation, "horTh"), (histogram, "tgrade"), (quantiles, "menostat")):
        assert caught.value.rule == "schema.column_role"
        assert column in str(caught.value) and caught.value.fix
        assert len(caught.value.context["errors"]) == 3


def test_unknown_column_is_refused_naming_node_and_column(lung_net: Sandbox) -> None:
    with lung_net.session(progress=False) as session:
        refusals = []
        for call in (
            lambda: session.correlation(["age", "stage"]),
            lambda: session.crosstab("sex", "stage", row_categories=["1", "2"]),
            lambda: session.histogram("stage", [0, 1]),
            lambda: session.quantiles("stage", [0.5], lower=0, upper=4),
        ):
            with pytest.raises(QueryError) as caught:
                call()
            refusals.append(caught.value)
    for error in refusals:
        assert error.rule == "schema.unknown_column"
        assert "stage" in str(error) and "Fix:" in str(error)
        assert sorted(r["node"] for r in error.context["errors"]) == sorted(lung_net.node_names)


# ---- command line --------------------------------------------------------------


def test_query_commands_print_tables_and_csv(lung_open_net: Sandbox, lung: pd.DataFrame) -> None:
    runner = CliRunner()
    common = ["-c", lung_open_net.address, "--dataset", "lung"]

    def run(*args: str) -> str:
        outcome = runner.invoke(
            command(),
            ["query", *args, *common],
            env={"COLUMNS": "160", **lung_open_net.researcher_env()},
        )
        assert outcome.exit_code == 0, outcome.output
        return outcome.output

    assert "correlation lung" in run("correlation", "age", "wt.loss")
    corr = pd.read_csv(StringIO(run("correlation", "age", "wt.loss", "--csv")), index_col=[0, 1])
    complete = lung[["age", "wt.loss"]].dropna().to_numpy(dtype=float)
    expected = np.corrcoef(complete, rowvar=False)[0, 1]
    assert corr.loc[("age", "wt.loss"), "correlation"] == pytest.approx(expected, rel=1e-12)

    table = run("crosstab", "sex", "status", "--row-categories", "1,2", "--col-categories", "0,1")
    assert "chi-square" in table and "Yates" in table
    crosstab_csv = run(
        "crosstab", "sex", "status", "--row-categories", "1,2", "--col-categories", "0,1", "--csv"
    )
    counts = pd.read_csv(StringIO(crosstab_csv), index_col=0)
    assert counts.to_numpy().sum() == len(lung)

    assert "histogram lung: age" in run("histogram", "age", "--bins", "6", "--range", "30,90")
    hist = pd.read_csv(StringIO(run("histogram", "age", "--bins", "40,60,80", "--csv")))
    assert hist["count"].tolist() == np.histogram(lung["age"], bins=[40, 60, 80])[0].tolist()

    assert "±" in run("quantiles", "age", "--lower", "0", "--upper", "120")
    quant = pd.read_csv(
        StringIO(run("quantiles", "age", "--lower", "0", "--upper", "120", "--q", "0.5", "--csv"))
    )
    assert abs(quant["value"][0] - np.quantile(lung["age"], 0.5)) <= quant["bound"][0]
