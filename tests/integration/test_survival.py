"""Kaplan-Meier, log-rank and Cox through real processes and gRPC, against lifelines.

The oracle is lifelines on the pooled frame: on the raw durations where the
node policy allows exact event times, and on durations rounded up to the
agreed grid (computed here, independently of oncofed) otherwise.

lifelines' CoxPHFitter stops its Newton-Raphson early by default (its
coefficients move by ~1e-5 relative when it is run to convergence), so the
Cox oracle is CoxPHFitter with tight ``fit_options``: still lifelines, at
its maximum-likelihood estimate.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from io import StringIO

import numpy as np
import numpy.typing as npt
import pandas as pd
import pytest
from lifelines import CoxPHFitter, KaplanMeierFitter
from lifelines.statistics import logrank_test, multivariate_logrank_test
from lifelines.utils import concordance_index, median_survival_times

from oncofed.client.sandbox import Sandbox
from oncofed.kernel.errors import ExitCode, NodeRefusal, OncofedError, QueryError, TaskFailed
from oncofed.privacy.policy import NodePolicy
from oncofed.tasks.kaplan_meier import KaplanMeierResult

EXACT = NodePolicy(
    exact_event_times=True, min_cell_count=1, dominance_p=0.0, exact_complete_records=False
)
"""Exact event times and cells of one patient: these networks check the mathematics (a
node's exact Cox cells at exact times hold single patients, which the default refuses)."""
TIGHT = {"precision": 1e-14, "r_precision": 1e-15, "max_steps": 200}
LUNG_COX = ["age", "sex", "ph.ecog", "ph.karno", "wt.loss"]
GBSG_COX = ["age", "tsize", "pnodes", "progrec", "estrec"]
REL = 1e-6
WORST: dict[str, float] = {}


def relative_error(actual: object, expected: object) -> float:
    a = np.asarray(actual, dtype=float)
    b = np.asarray(expected, dtype=float)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300), initial=0.0))


def check(name: str, actual: object, expected: object, rel: float = REL) -> None:
    error = relative_error(actual, expected)
    WORST[name] = max(WORST.get(name, 0.0), error)
    assert error <= rel, f"{name}: relative error {error:.2e} > {rel:g}"


def on_grid(frame: pd.DataFrame, width: float, duration: str = "time") -> pd.DataFrame:
    return frame.assign(**{duration: np.ceil(frame[duration].to_numpy(float) / width) * width})


@pytest.fixture(scope="module")
def lung_cohorts(lung: pd.DataFrame) -> pd.DataFrame:
    """The lung data plus a grouping in which cohort C has rows but no events.

    ``ecog`` is ph.ecog as an integer column: a float column cannot define groups.
    """
    censored = lung.index[lung["status"] == 0][:12]
    cohort = np.where(lung["sex"] == 1, "A", "B").astype(object)
    cohort[lung.index.get_indexer(censored)] = "C"
    return lung.assign(
        cohort=cohort,
        always_dead=1,
        status_copy=lung["status"],
        ecog=lung["ph.ecog"].astype("Int64"),
    )


@pytest.fixture(scope="module")
def lung_exact(lung_cohorts: pd.DataFrame) -> Iterator[Sandbox]:
    """4 lung centres whose policy allows exact event times."""
    with Sandbox.from_frame(
        lung_cohorts, split_by="centre", dataset="lung", policy=EXACT, release="exact"
    ) as net:
        yield net


@pytest.fixture(scope="module")
def gbsg2_exact(gbsg2: pd.DataFrame) -> Iterator[Sandbox]:
    with Sandbox.from_frame(
        gbsg2, split_by="centre", dataset="gbsg2", policy=EXACT, release="exact"
    ) as net:
        yield net


@pytest.fixture(scope="module", autouse=True)
def report_worst() -> Iterator[None]:
    yield
    print("\nworst relative error against lifelines:")
    for name, error in sorted(WORST.items()):
        print(f"  {name:32s} {error:.2e}")


def assert_km_matches(result: KaplanMeierResult, group: str, part: pd.DataFrame) -> None:
    """Every row of lifelines' survival function, band, event table and median."""
    fitter = KaplanMeierFitter().fit(part["time"], part["status"])
    table = result.curve(group).to_frame()
    expected = fitter.survival_function_.iloc[:, 0]
    np.testing.assert_array_equal(table.index.to_numpy(), expected.index.to_numpy())
    check("km survival", table["survival"], expected)
    check("km ci_lower", table["ci_lower"], fitter.confidence_interval_.iloc[:, 0])
    check("km ci_upper", table["ci_upper"], fitter.confidence_interval_.iloc[:, 1])
    events = fitter.event_table
    np.testing.assert_array_equal(table["at_risk"], events["at_risk"])
    np.testing.assert_array_equal(table["events"], events["observed"])
    np.testing.assert_array_equal(table["censored"], events["censored"])
    curve = result.curve(group)
    assert curve.median == fitter.median_survival_time_
    lower, upper = median_survival_times(fitter.confidence_interval_).iloc[0]
    assert (curve.median_ci_lower, curve.median_ci_upper) == (lower, upper)
    assert curve.n == len(part) and curve.total_events == part["status"].sum()


# ---- Kaplan-Meier -----------------------------------------------------------


def test_kaplan_meier_exact_times_equals_lifelines(lung_exact: Sandbox, lung: pd.DataFrame) -> None:
    with lung_exact.session(progress=False) as session:
        overall = session.kaplan_meier("time", "status", exact_times=True, min_nodes=4)
        by_sex = session.kaplan_meier(
            "time", "status", by="sex", categories=["1", "2"], exact_times=True
        )
    assert sorted(overall.nodes) == sorted(lung_exact.node_names)
    assert overall.exact_times and "exact" in overall.time_grid
    assert_km_matches(overall, "(all)", lung)
    for sex in ("1", "2"):
        assert_km_matches(by_sex, sex, lung[lung["sex"] == int(sex)])
    frame = by_sex.to_frame()
    assert frame.index.names == ["sex", "time"]
    assert list(by_sex.medians().index) == ["1", "2"]


def test_kaplan_meier_on_a_grid_equals_lifelines_on_rounded_up_durations(
    lung_net: Sandbox, lung: pd.DataFrame
) -> None:
    """The default policy: no exact times, and the result says which grid it used."""
    with lung_net.session(progress=False) as session:
        result = session.kaplan_meier("time", "status", by="sex", categories=["1", "2"], grid=30)
    assert result.grid == 30 and "multiples of 30" in result.time_grid
    coarse = on_grid(lung, 30.0)
    for sex in ("1", "2"):
        assert_km_matches(result, sex, coarse[coarse["sex"] == int(sex)])
    assert set(np.concatenate([c.time for c in result.curves])) <= set(np.arange(0, 1110, 30.0))


def test_kaplan_meier_on_agreed_time_points_ends_follow_up_at_the_last(
    lung_net: Sandbox, lung: pd.DataFrame
) -> None:
    points = [90.0, 180.0, 365.0, 540.0, 730.0]
    with lung_net.session(progress=False) as session:
        result = session.kaplan_meier("time", "status", time_points=points)
    index = np.searchsorted(points, lung["time"].to_numpy(float), side="left")
    beyond = index == len(points)
    expected = lung.assign(
        time=np.asarray(points)[np.minimum(index, len(points) - 1)],
        status=np.where(beyond, 0, lung["status"]),
    )
    assert_km_matches(result, "(all)", expected)
    assert result.curve().time == [0.0, *points]


def test_where_filter_and_rows_dropped_for_missing_values(
    lung_exact: Sandbox, lung: pd.DataFrame
) -> None:
    with lung_exact.session(progress=False) as session:
        result = session.kaplan_meier(
            "time",
            "status",
            by="ecog",
            categories=["0", "1"],
            exact_times=True,
            where="age >= 60",
        )
    old = lung[lung["age"] >= 60]
    assert sum(result.rows_dropped.values()) == int(old["ph.ecog"].isna().sum())
    assert result.rows_outside_categories == int(old["ph.ecog"].isin([2, 3]).sum())
    for level in ("0", "1"):
        assert_km_matches(result, level, old[old["ph.ecog"] == int(level)])


# ---- log-rank --------------------------------------------------------------------


def test_logrank_equals_lifelines_for_two_and_more_groups(
    lung_exact: Sandbox, lung: pd.DataFrame
) -> None:
    with lung_exact.session(progress=False) as session:
        two = session.logrank("time", "status", "sex", categories=["1", "2"], exact_times=True)
        four = session.logrank(
            "time", "status", "ecog", categories=["0", "1", "2", "3"], exact_times=True
        )
    male, female = lung[lung["sex"] == 1], lung[lung["sex"] == 2]
    oracle = logrank_test(male["time"], female["time"], male["status"], female["status"])
    check("logrank statistic", two.statistic, oracle.test_statistic)
    check("logrank p", two.p_value, oracle.p_value)
    assert two.df == 1
    ecog = lung.dropna(subset=["ph.ecog"])
    oracle = multivariate_logrank_test(ecog["time"], ecog["ph.ecog"], ecog["status"])
    check("logrank statistic", four.statistic, oracle.test_statistic)
    check("logrank p", four.p_value, oracle.p_value)
    assert four.df == 3 == oracle.degrees_of_freedom
    assert four.to_frame()["observed"].sum() == ecog["status"].sum()
    assert four.to_frame()["expected"].sum() == pytest.approx(ecog["status"].sum(), rel=1e-12)


def test_logrank_on_a_grid_and_a_group_without_events(
    lung_exact: Sandbox, lung_cohorts: pd.DataFrame
) -> None:
    """A group where nobody had the event still has expected events: a valid test."""
    with lung_exact.session(progress=False) as session:
        result = session.logrank("time", "status", "cohort", categories=["A", "B", "C"], grid=30)
    coarse = on_grid(lung_cohorts, 30.0)
    oracle = multivariate_logrank_test(coarse["time"], coarse["cohort"], coarse["status"])
    assert result.to_frame().loc["C", "observed"] == 0
    assert result.to_frame().loc["C", "expected"] > 0
    check("logrank statistic", result.statistic, oracle.test_statistic)
    check("logrank p", result.p_value, oracle.p_value)


# ---- Cox -------------------------------------------------------------------------


def cox_oracle(frame: pd.DataFrame, duration: str, event: str, **options: object) -> CoxPHFitter:
    return CoxPHFitter().fit(frame, duration, event, fit_options=TIGHT, **options)


def assert_cox_matches(result: object, oracle: CoxPHFitter, names: list[str]) -> None:
    summary = oracle.summary
    check("cox coef", result.params.loc[names], oracle.params_.to_numpy())  # type: ignore[attr-defined]
    check("cox se", result.bse.loc[names], oracle.standard_errors_.to_numpy())  # type: ignore[attr-defined]
    check("cox p", result.pvalues.loc[names], summary["p"].to_numpy())  # type: ignore[attr-defined]
    check("cox hazard ratio", result.hazard_ratios.loc[names], summary["exp(coef)"])  # type: ignore[attr-defined]
    ci = result.conf_int()  # type: ignore[attr-defined]
    check("cox conf_int", ci.iloc[:, 0].loc[names], summary["coef lower 95%"].to_numpy())
    check("cox conf_int", ci.iloc[:, 1].loc[names], summary["coef upper 95%"].to_numpy())
    check("cox loglik", result.log_likelihood, oracle.log_likelihood_)  # type: ignore[attr-defined]
    statistic, df, p = result.log_likelihood_ratio_test()  # type: ignore[attr-defined]
    test = oracle.log_likelihood_ratio_test()
    check("cox likelihood ratio", statistic, test.test_statistic)
    check("cox likelihood ratio p", p, test.p_value)
    assert df == test.degrees_freedom


def test_coxph_exact_times_equals_lifelines_on_lung(
    lung_exact: Sandbox, lung: pd.DataFrame
) -> None:
    with lung_exact.session(progress=False) as session:
        result = session.coxph("time", "status", LUNG_COX, exact_times=True)
    pooled = lung[["time", "status", *LUNG_COX]].dropna()
    oracle = cox_oracle(pooled, "time", "status")
    assert result.names == LUNG_COX
    assert_cox_matches(result, oracle, LUNG_COX)
    assert result.n == len(pooled) and result.events == pooled["status"].sum()
    assert sum(result.rows_dropped.values()) == len(lung) - len(pooled)
    assert result.converged and 2 <= result.iterations <= 10
    assert result.round_trips == result.iterations + 3  # setup, start, steps, concordance
    # Harrell's C from risk-score bins: within the stated bound of the exact value.
    exact_c = concordance_index(
        pooled["time"], -(pooled[LUNG_COX] @ result.params), pooled["status"]
    )
    assert result.concordance is not None and result.concordance_bound is not None
    assert abs(result.concordance - exact_c) <= result.concordance_bound < 0.01
    assert abs(result.concordance - oracle.concordance_index_) <= result.concordance_bound
    text = result.summary()
    assert "Efron" in text and "exp(coef)" in text and "time grid: exact" in text
    assert list(result.to_frame().columns[:3]) == ["coef", "exp(coef)", "se(coef)"]


def test_coxph_formula_with_strata_on_a_grid_equals_lifelines_on_gbsg2(
    gbsg2_exact: Sandbox, gbsg2: pd.DataFrame
) -> None:
    rhs = " + ".join([*GBSG_COX, "C(horTh)"])
    with gbsg2_exact.session(progress=False) as session:
        grid = session.coxph("time", "cens", rhs, strata="tgrade", grid=30)
        exact = session.coxph("time", "cens", GBSG_COX, exact_times=True, concordance=False)
    names = [*GBSG_COX, "C(horTh)[T.yes]"]
    assert grid.names == names and grid.strata == ["tgrade"]
    assert grid.strata_levels == ["tgrade=I", "tgrade=II", "tgrade=III"]
    coarse = on_grid(gbsg2, 30.0).assign(horTh=(gbsg2["horTh"] == "yes").astype(int))
    oracle = cox_oracle(
        coarse[["time", "cens", *GBSG_COX, "horTh", "tgrade"]], "time", "cens", strata=["tgrade"]
    )
    assert_cox_matches(grid, oracle, names)
    assert abs(grid.concordance - oracle.concordance_index_) <= grid.concordance_bound  # type: ignore[operator]
    oracle = cox_oracle(gbsg2[["time", "cens", *GBSG_COX]], "time", "cens")
    assert_cox_matches(exact, oracle, GBSG_COX)
    assert exact.concordance is None


# ---- privacy ---------------------------------------------------------------------


def test_default_policy_refuses_exact_times_naming_every_node(lung_net: Sandbox) -> None:
    with lung_net.session(progress=False) as session:
        calls = [
            lambda: session.kaplan_meier("time", "status", exact_times=True),
            lambda: session.logrank(
                "time", "status", "sex", categories=["1", "2"], exact_times=True
            ),
            lambda: session.coxph("time", "status", ["age"], exact_times=True),
        ]
        for call in calls:
            with pytest.raises(NodeRefusal) as caught:
                call()
            error = caught.value
            assert error.rule == "privacy.exact_event_times"
            assert sorted(e["node"] for e in error.context["errors"]) == sorted(lung_net.node_names)
            assert all(name in error.node for name in lung_net.node_names)
            assert "grid" in error.fix and "exact_event_times" in error.fix


def test_a_grid_finer_than_the_policy_allows_is_refused(lung_net: Sandbox) -> None:
    """Otherwise grid=1 on durations in days would be exact event times again."""
    with lung_net.session(progress=False) as session:
        with pytest.raises(NodeRefusal) as fine:
            session.kaplan_meier("time", "status", grid=1)
        with pytest.raises(NodeRefusal) as close_points:
            session.coxph("time", "status", ["age"], time_points=[100, 110, 400])
    for caught in (fine, close_points):
        assert caught.value.rule == "privacy.min_grid_width"
        assert len(caught.value.context["errors"]) == 4


# ---- bad input -------------------------------------------------------------------


def test_no_grid_agreed_is_refused_before_any_node_reads_data(lung_net: Sandbox) -> None:
    with lung_net.session(progress=False) as session, pytest.raises(QueryError) as caught:
        session.kaplan_meier("time", "status")
    assert caught.value.rule == "task.params" and "grid" in str(caught.value)


def test_unknown_column_and_text_covariate_are_refused(
    lung_net: Sandbox, gbsg2_exact: Sandbox
) -> None:
    with lung_net.session(progress=False) as session:
        with pytest.raises(QueryError) as unknown:
            session.kaplan_meier("survival_days", "status", grid=30)
        with pytest.raises(QueryError) as unknown_covariate:
            session.coxph("time", "status", ["age", "tumour_size"], grid=30)
    for caught, column in ((unknown, "survival_days"), (unknown_covariate, "tumour_size")):
        assert caught.value.rule == "schema.unknown_column"
        assert column in str(caught.value)
        assert sorted(e["node"] for e in caught.value.context["errors"]) == sorted(
            lung_net.node_names
        )
    with gbsg2_exact.session(progress=False) as session, pytest.raises(QueryError) as text:
        session.coxph("time", "cens", ["age", "horTh"], grid=30)
    assert text.value.rule == "schema.column_role" and "horTh" in str(text.value)


def test_event_column_must_be_zero_or_one(lung_exact: Sandbox) -> None:
    with lung_exact.session(progress=False) as session, pytest.raises(QueryError) as caught:
        session.kaplan_meier("time", "ph.ecog", grid=30)
    assert caught.value.rule == "survival.event_values" and "ph.ecog" in str(caught.value)


def test_empty_group_and_no_events_are_refused(lung_exact: Sandbox) -> None:
    with lung_exact.session(progress=False) as session:
        with pytest.raises(QueryError) as empty:
            session.kaplan_meier("time", "status", by="sex", categories=["1", "2", "3"], grid=30)
        with pytest.raises(QueryError) as no_events:
            session.logrank(
                "time", "status", "sex", categories=["1", "2"], grid=30, where="status == 0"
            )
        with pytest.raises(QueryError) as no_cox_events:
            session.coxph("time", "status", ["age"], grid=30, where="status == 0")
    assert empty.value.rule == "survival.empty_group" and "'3'" in str(empty.value)
    assert no_events.value.rule == "logrank.no_events"
    assert no_cox_events.value.rule == "coxph.no_events"


def test_exact_cox_cells_meet_the_cell_rule(lung_net: Sandbox) -> None:
    """A cell's covariate sums are its rows' covariates: at the default cell rule a fit on a
    fine grid is refused, with the fix; under DP it is not (noise protects the cells)."""
    with lung_net.session(progress=False) as session, pytest.raises(OncofedError) as refused:
        session.coxph("time", "status", ["age"], grid=30, concordance=False)
    assert refused.value.rule == "privacy.min_cell_count"
    assert "coarser grid" in str(refused.value)
    with lung_net.session(progress=False, permit="dp-cox") as session:
        noisy = session.coxph(
            "time",
            "status",
            ["age"],
            time_points=[90.0 * k for k in range(1, 13)],
            bounds={"age": (18.0, 100.0)},
            dp={"epsilon": 1.0},
        )
    assert noisy.privacy is not None and noisy.concordance is None


def test_non_convergence_separation_and_collinearity_are_clear_errors(
    lung_exact: Sandbox,
) -> None:
    with lung_exact.session(progress=False) as session:
        with pytest.raises(TaskFailed) as capped:
            session.coxph("time", "status", LUNG_COX, grid=30, max_iter=1)
        # status_copy is the event indicator itself: it separates events from the rest.
        with pytest.raises(TaskFailed) as separated:
            session.coxph("time", "status", ["age", "status_copy"], grid=30)
        with pytest.raises(QueryError) as constant:
            session.coxph("time", "status", ["age", "always_dead"], grid=30)
    assert capped.value.rule == "coxph.not_converged" and "converge in 1" in str(capped.value)
    assert separated.value.rule == "coxph.separation"
    assert separated.value.context["terms"] == ["status_copy"]
    assert constant.value.rule == "coxph.collinear"
    assert "always_dead" in str(constant.value)


# ---- command line ------------------------------------------------------------------


def _cli(net: Sandbox, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "oncofed", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={"COLUMNS": "160", "PATH": "/usr/bin:/bin", **net.researcher_env()},
    )


def test_query_commands_print_tables_and_csv(
    lung_net: Sandbox, lung_exact: Sandbox, lung: pd.DataFrame
) -> None:
    common = ("-c", lung_net.address, "--dataset", "lung", "--grid", "30")
    km = _cli(
        lung_net,
        "query",
        "kaplan-meier",
        "time",
        "status",
        "--by",
        "sex",
        "--categories",
        "1,2",
        *common,
    )
    assert km.returncode == ExitCode.OK, km.stderr
    assert "median survival" in km.stdout and "multiples of 30" in km.stdout
    csv = _cli(lung_net, "query", "kaplan-meier", "time", "status", "--csv", *common)
    frame = pd.read_csv(StringIO(csv.stdout)).set_index("time")
    expected = KaplanMeierFitter().fit(np.ceil(lung["time"] / 30) * 30, lung["status"])
    check("km survival", frame["survival"], expected.survival_function_.iloc[:, 0])
    lr = _cli(lung_net, "query", "logrank", "time", "status", "sex", "--categories", "1,2", *common)
    assert lr.returncode == ExitCode.OK, lr.stderr
    assert "chi-square" in lr.stdout and "on 1 df" in lr.stdout
    # Cells of single patients: the network whose policy allows them (see EXACT).
    cox = _cli(
        lung_exact,
        "query",
        "coxph",
        "time",
        "status",
        "age",
        "C(sex, levels=[1, 2])",
        *common[2:],
        "-c",
        lung_exact.address,
    )
    assert cox.returncode == ExitCode.OK, cox.stderr
    assert "C(sex)[T.2]" in cox.stdout and "concordance" in cox.stdout
    refused = _cli(
        lung_net,
        "query",
        "coxph",
        "time",
        "status",
        "age",
        "-c",
        lung_net.address,
        "--dataset",
        "lung",
        "--exact-times",
    )
    assert refused.returncode == ExitCode.REFUSED
    assert "rule: privacy.exact_event_times" in refused.stderr and "Traceback" not in refused.stderr


def test_plot_draws_curves_with_bands(lung_net: Sandbox) -> None:
    pytest.importorskip("matplotlib")
    with lung_net.session(progress=False) as session:
        result = session.kaplan_meier("time", "status", by="sex", categories=["1", "2"], grid=30)
    figure = result.plot()
    ax = figure.axes[0]
    assert len(ax.get_lines()) == 2 and len(ax.collections) == 2
    xs: npt.NDArray[np.float64] = np.asarray(ax.get_lines()[0].get_xdata(), dtype=float)
    assert list(xs) == result.curve("1").time
