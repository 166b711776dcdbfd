"""The console's result page: tables, CSV, figures with their text alternatives, and notes.

Results are built from their fields as a coordinator would return them; the
figures are checked against the result's own table by reading back what the
Axes drew.
"""

from __future__ import annotations

import io
import re

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.axes import Axes
from matplotlib.collections import LineCollection
from matplotlib.container import ErrorbarContainer
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from pydantic import BaseModel

from oncofed.client.cli_query import frame_csv
from oncofed.client.console.results import figure_png, result_csv, result_view
from oncofed.tasks.base import DPReport
from oncofed.tasks.coxph import CoxPHResult
from oncofed.tasks.describe import DescribeResult, DescribeRow
from oncofed.tasks.glm import GLMResult
from oncofed.tasks.histogram import HistogramResult
from oncofed.tasks.kaplan_meier import KaplanMeierCurve, KaplanMeierResult
from oncofed.tasks.logrank import LogrankResult
from oncofed.tasks.training.model import RoundMetrics, TrainedModel
from oncofed.tasks.training.params import Standardisation

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def cox_result() -> CoxPHResult:
    se = [0.0092, 0.168, 0.114]
    return CoxPHResult(
        names=["age", "sex", "ph.ecog"],
        coef=[0.011, -0.553, 0.464],
        cov=np.diag(np.square(se)).tolist(),
        dataset="lung",
        duration="time",
        event="status",
        formula="age + sex + ph.ecog",
        log_likelihood=-730.2,
        log_likelihood_null=-743.9,
        n=227,
        events=164,
        strata=[],
        strata_levels=[],
        time_grid="exact times",
        grid=None,
        time_points=None,
        exact_times=True,
        alpha=0.05,
        concordance=0.637,
        concordance_bound=0.001,
        comparable_pairs=20_000,
        iterations=4,
        converged=True,
        round_trips=7,
        nodes=["centre-a", "centre-b"],
        rows_used={"centre-a": 113, "centre-b": 114},
        rows_dropped={"centre-a": 1, "centre-b": 0},
    )


def glm_result(family: str = "binomial") -> GLMResult:
    se = [0.91, 0.013, 0.29]
    link = {"binomial": "Logit", "poisson": "Log", "gaussian": "Identity"}[family]
    return GLMResult.model_validate(
        {
            "names": ["Intercept", "age", "C(sex)[T.2]"],
            "coef": [-1.2, 0.024, -0.81],
            "cov": np.diag(np.square(se)).tolist(),
            "dataset": "lung",
            "formula": "status ~ age + C(sex)",
            "family": family,
            "link": link,
            "deviance": 260.1,
            "null_deviance": 268.4,
            "pearson_chi2": 227.0,
            "scale": 1.0,
            "llf": -130.0,
            "aic": 266.1,
            "bic": 276.4,
            "df_model": 2,
            "df_resid": 225,
            "nobs": 228,
            "iterations": 5,
            "converged": True,
            "round_trips": 6,
            "nodes": ["centre-a", "centre-b"],
            "rows_used": {"centre-a": 114, "centre-b": 114},
            "rows_dropped": {"centre-a": 0, "centre-b": 0},
        }
    )


KM_CURVES = [
    # Group 1: four rows, an event at 30, 60 and 90 days and a censoring at 60.
    KaplanMeierCurve(
        group="1",
        n=4,
        total_events=3,
        median=60.0,
        median_ci_lower=30.0,
        median_ci_upper=None,
        time=[0.0, 30.0, 60.0, 90.0],
        at_risk=[4, 4, 3, 1],
        events=[0, 1, 1, 1],
        censored=[0, 0, 1, 0],
        survival=[1.0, 0.75, 0.5, 0.0],
        ci_lower=[1.0, 0.13, 0.06, 0.0],
        ci_upper=[1.0, 0.96, 0.85, 0.0],
    ),
    # Group 2: five rows, one event at 30 days; the rest censored, so no median.
    KaplanMeierCurve(
        group="2",
        n=5,
        total_events=1,
        median=None,
        median_ci_lower=None,
        median_ci_upper=None,
        time=[0.0, 30.0, 60.0],
        at_risk=[5, 5, 4],
        events=[0, 1, 0],
        censored=[0, 0, 4],
        survival=[1.0, 0.8, 0.8],
        ci_lower=[1.0, 0.2, 0.2],
        ci_upper=[1.0, 0.97, 0.97],
    ),
]


def km_result() -> KaplanMeierResult:
    return KaplanMeierResult(
        dataset="lung",
        duration="time",
        event="status",
        by="sex",
        time_grid="30-day grid",
        grid=30.0,
        time_points=None,
        exact_times=False,
        alpha=0.05,
        curves=KM_CURVES,
        nodes=["centre-a", "centre-b"],
        rows_dropped={"centre-a": 1, "centre-b": 2},
        rows_outside_categories=0,
    )


def histogram_result() -> HistogramResult:
    return HistogramResult(
        dataset="lung",
        column="age",
        edges=[40.0, 55.0, 70.0, 85.0],
        counts=[50, 120, 55],
        below=2,
        above=0,
        missing=1,
        n=227,
        rows_missing_by_node={"centre-a": 1, "centre-b": 0},
        nodes=["centre-a", "centre-b"],
    )


def describe_result(privacy: DPReport | None = None) -> DescribeResult:
    return DescribeResult(
        dataset="lung",
        by=None,
        rows=[
            DescribeRow(
                group="all",
                column="age",
                count=228,
                missing=0,
                sum=14161.0,
                mean=62.1,
                variance=83.1,
                std=9.1,
            )
        ],
        nodes=["centre-a", "centre-b"],
        privacy=privacy,
    )


def logrank_result() -> LogrankResult:
    return LogrankResult(
        dataset="lung",
        duration="time",
        event="status",
        group="sex",
        time_grid="exact times",
        grid=None,
        time_points=None,
        exact_times=True,
        groups=["1", "2"],
        n=[138, 90],
        observed=[112, 53],
        expected=[91.6, 73.4],
        statistic=10.33,
        df=1,
        p_value=0.00131,
        nodes=["centre-a", "centre-b"],
        rows_dropped={"centre-a": 0, "centre-b": 0},
    )


def forest(figure: Figure | None) -> tuple[Axes, np.ndarray, np.ndarray, np.ndarray]:
    """The forest plot's Axes, its points and the two ends of each interval, top row first."""
    assert figure is not None
    (ax,) = figure.axes
    (container,) = (c for c in ax.containers if isinstance(c, ErrorbarContainer))
    points, _caps, (bars,) = container.lines
    assert isinstance(points, Line2D) and isinstance(bars, LineCollection)
    segments = bars.get_segments()
    lower = np.array([min(s[:, 0]) for s in segments])
    upper = np.array([max(s[:, 0]) for s in segments])
    # Each interval is drawn on its point's row.
    rows = np.asarray(points.get_ydata(), dtype=float)
    assert [s[0, 1] for s in segments] == pytest.approx(rows)
    order = np.argsort(rows)
    return ax, np.asarray(points.get_xdata(), dtype=float)[order], lower[order], upper[order]


def reference_lines(ax: Axes) -> list[float]:
    """The x of every vertical line drawn across the Axes."""
    return [float(line.get_xdata()[0]) for line in ax.lines if len(set(line.get_xdata())) == 1]


def alt_numbers(alt: str, term: str) -> list[float]:
    """The estimate and interval the text alternative gives for ``term``."""
    number = r"(-?[0-9.]+(?:e[-+][0-9]+)?)"
    found = re.search(rf"{re.escape(term)} {number} \({number}(?:\u2013| to ){number}\)", alt)
    assert found is not None, alt
    return [float(v) for v in found.groups()]


def tick_labels(ax: Axes) -> list[str]:
    labels = {
        tick: label.get_text()
        for tick, label in zip(ax.get_yticks(), ax.get_yticklabels(), strict=True)
    }
    return [labels[tick] for tick in sorted(labels)]


def test_the_csv_is_the_table_as_oncofed_query_csv_prints_it() -> None:
    cox = cox_result()
    frame = cox.to_frame()
    csv = result_csv(cox)
    assert csv == frame_csv(frame) == frame.to_csv()
    back = pd.read_csv(io.StringIO(csv), index_col="covariate")
    assert list(back.index) == ["age", "sex", "ph.ecog"]
    assert back["exp(coef)"].to_numpy() == pytest.approx(np.exp([0.011, -0.553, 0.464]))
    assert back.to_numpy() == pytest.approx(frame.to_numpy(), rel=1e-12)


def test_a_table_of_row_numbers_is_written_without_them() -> None:
    csv = result_csv(histogram_result())
    assert csv.splitlines()[0] == "left,right,count,density"
    back = pd.read_csv(io.StringIO(csv))
    assert back["count"].tolist() == [50, 120, 55]
    assert back["left"].tolist() == [40.0, 55.0, 70.0]


def test_hazard_ratios_are_drawn_as_the_table_gives_them_on_a_log_axis() -> None:
    cox = cox_result()
    frame = cox.to_frame()
    view = result_view("coxph", cox)
    pd.testing.assert_frame_equal(view.tables[0][1], frame)
    ax, points, lower, upper = forest(view.figure)
    assert ax.get_xscale() == "log"
    assert tick_labels(ax) == ["age", "sex", "ph.ecog"]
    assert points == pytest.approx(frame["exp(coef)"].to_numpy())
    assert lower == pytest.approx(frame["exp(coef lower 95%)"].to_numpy())
    assert upper == pytest.approx(frame["exp(coef upper 95%)"].to_numpy())
    assert reference_lines(ax) == [1.0]
    assert view.figure_alt.startswith("Forest plot of hazard ratios with 95% confidence intervals")
    for term in ("age", "sex", "ph.ecog"):
        written = alt_numbers(view.figure_alt, term)
        row = frame.loc[term, ["exp(coef)", "exp(coef lower 95%)", "exp(coef upper 95%)"]]
        assert written == pytest.approx(row.to_list(), rel=5e-3)


def test_odds_ratios_leave_out_the_intercept() -> None:
    glm = glm_result("binomial")
    frame = glm.to_frame().drop(index="Intercept")
    view = result_view("glm", glm)
    ax, points, lower, upper = forest(view.figure)
    assert tick_labels(ax) == ["age", "C(sex)[T.2]"]
    assert "Intercept" not in view.figure_alt
    assert ax.get_xscale() == "log"
    assert points == pytest.approx(np.exp(frame["coef"].to_numpy()))
    assert lower == pytest.approx(np.exp(frame["[0.025"].to_numpy()))
    assert upper == pytest.approx(np.exp(frame["0.975]"].to_numpy()))
    assert reference_lines(ax) == [1.0]
    assert "odds ratios" in view.figure_alt


def test_a_poisson_fit_shows_rate_ratios() -> None:
    view = result_view("glm", glm_result("poisson"))
    ax, points, _, _ = forest(view.figure)
    assert ax.get_xscale() == "log"
    assert points == pytest.approx(np.exp([0.024, -0.81]))
    assert "rate ratios" in view.figure_alt


def test_gaussian_coefficients_are_drawn_as_they_are_against_zero() -> None:
    glm = glm_result("gaussian")
    frame = glm.to_frame().drop(index="Intercept")
    view = result_view("glm", glm)
    ax, points, lower, upper = forest(view.figure)
    assert ax.get_xscale() == "linear"
    assert points == pytest.approx(frame["coef"].to_numpy())
    assert lower == pytest.approx(frame["[0.025"].to_numpy())
    assert upper == pytest.approx(frame["0.975]"].to_numpy())
    assert reference_lines(ax) == [0.0]
    assert "ratio" not in view.figure_alt and "coefficients" in view.figure_alt
    written = alt_numbers(view.figure_alt, "C(sex)[T.2]")
    assert written == pytest.approx(
        frame.loc["C(sex)[T.2]", ["coef", "[0.025", "0.975]"]].to_list(), rel=5e-3
    )


def test_a_model_with_only_an_intercept_has_no_forest() -> None:
    glm = glm_result().model_copy(update={"names": ["Intercept"], "coef": [0.5], "cov": [[0.04]]})
    view = result_view("glm", glm)
    assert view.figure is None and view.figure_alt == ""


def test_kaplan_meier_draws_one_banded_curve_per_group_and_gives_the_medians() -> None:
    km = km_result()
    view = result_view("kaplan_meier", km)
    assert view.figure is not None
    (ax,) = view.figure.axes
    curves = [line for line in ax.lines if line.get_drawstyle() == "steps-post"]
    assert [list(c.get_ydata()) for c in curves] == [c.survival for c in KM_CURVES]
    assert len(ax.collections) == 2  # a band under each curve
    assert "curves of time with 95% confidence bands for sex = 1, 2" in view.figure_alt
    assert "1: 60 (95% CI 30\u2013not reached)" in view.figure_alt
    assert "2: not reached" in view.figure_alt
    caption, medians = view.tables[1]
    assert caption == "Median survival"
    assert medians.loc["1", "median"] == 60.0 and np.isnan(medians.loc["2", "median"])


def test_a_histogram_is_drawn_with_its_counts_in_words() -> None:
    view = result_view("histogram", histogram_result())
    assert view.figure is not None
    (ax,) = view.figure.axes
    (stairs,) = ax.patches
    assert list(stairs.get_data().values) == [50, 120, 55]
    assert "40\u201355: 50, 55\u201370: 120, 70\u201385: 55" in view.figure_alt
    assert "2 below and 0 above" in view.figure_alt
    assert "values outside the agreed range: 2 below, 0 above" in view.notes


def test_figures_stay_out_of_pyplot() -> None:
    """The console draws from several threads for hours: pyplot would keep every figure."""
    before = plt.get_fignums()
    for name, result in [("kaplan_meier", km_result()), ("histogram", histogram_result())]:
        assert result_view(name, result).figure is not None
    assert plt.get_fignums() == before


def test_a_figure_renders_to_png_and_stays_usable() -> None:
    figure = result_view("coxph", cox_result()).figure
    assert figure is not None
    first = figure_png(figure)
    assert first.startswith(PNG_SIGNATURE)
    assert figure_png(figure).startswith(PNG_SIGNATURE)


@pytest.mark.parametrize(
    ("name", "result"),
    [("describe", describe_result()), ("logrank", logrank_result())],
)
def test_a_task_without_a_natural_plot_has_no_figure(name: str, result: BaseModel) -> None:
    view = result_view(name, result)
    assert view.figure is None and view.figure_alt == ""
    assert len(view.tables) == 1


def test_the_dp_note_names_every_node_and_its_epsilon() -> None:
    report = DPReport(
        mechanism="zCDP Gaussian (OpenDP)",
        epsilon={"centre-a": 0.5, "centre-b": 0.25},
        delta=1e-6,
        noise_std={"sum.age": 3.0},
    )
    notes = result_view("describe", describe_result(report)).notes
    assert (
        "differential privacy: zCDP Gaussian (OpenDP), epsilon charged per node: "
        "centre-a 0.5, centre-b 0.25; delta 1e-06"
    ) in notes
    assert not any(
        "differential privacy" in n for n in result_view("describe", describe_result()).notes
    )


def test_a_trained_models_dp_sgd_loss_is_noted() -> None:
    model = TrainedModel(
        model="logistic",
        features="age",
        columns=["age"],
        levels={},
        hidden=[],
        label="status",
        standardisation=Standardisation(columns=("age",), mean=(62.0,), std=(9.0,)),
        state={"0.weight": [[0.1]], "0.bias": [0.0]},
        strategy="fedavg",
        rounds=1,
        study="default",
        nodes=["centre-a"],
        epsilon={"centre-a": 2.0},
        delta=1e-5,
        history=[RoundMetrics(round=1, nodes=["centre-a"], eval_auc=0.61)],
    )
    view = result_view("train", model)
    assert view.figure is None
    assert "differential privacy: DP-SGD, epsilon charged per node: centre-a 2; delta 1e-05" in (
        view.notes
    )


def test_notes_give_rows_left_out_per_node_and_the_nodes_that_answered() -> None:
    notes = result_view("kaplan_meier", km_result()).notes
    assert "rows left out for a missing value: 3 (centre-a 1, centre-b 2)" in notes
    assert "nodes that answered (2): centre-a, centre-b" in notes
    assert "time grid: 30-day grid" in notes
    # No one was outside the agreed categories: not worth a line.
    assert not any("outside" in n for n in notes)


def test_a_cox_fit_notes_the_rows_it_used_and_warns_when_it_did_not_converge() -> None:
    cox = cox_result()
    notes = result_view("coxph", cox).notes
    assert "rows used: 227 (centre-a 113, centre-b 114)" in notes
    assert not any("converge" in n for n in notes)
    stalled = result_view("coxph", cox.model_copy(update={"converged": False})).notes
    assert any(n.startswith("the fit did not converge in 4 iterations") for n in stalled)


def test_the_log_rank_test_is_noted_since_its_table_has_no_p() -> None:
    notes = result_view("logrank", logrank_result()).notes
    assert notes[0] == "log-rank test: chi-square 10.33 on 1 df, p = 0.00131"


def test_an_unknown_task_is_refused_with_the_installed_ones() -> None:
    from oncofed.kernel.errors import UnknownTask

    with pytest.raises(UnknownTask):
        result_view("no_such_task", describe_result())
