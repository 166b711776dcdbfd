"""DP log-rank and correlation: noisy, charged, and within the noise they state.

The oracles are lifelines and numpy on the pooled rows (durations on the
same time grid). A released total must lie within six standard deviations
of the noise the result states -- a bound a correct mechanism breaks with
probability about 2e-9 per value. Where the noise enters a statistic
non-linearly (the log-rank chi-square), the tolerance comes from simulating
the nodes' noise, at the scale the result states, on the exact tables.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from lifelines.statistics import multivariate_logrank_test

from oncofed.client.sandbox import Sandbox
from oncofed.kernel.errors import OncofedError
from oncofed.privacy.dp import DPRequest
from oncofed.privacy.policy import DatasetPrivacy
from oncofed.tasks.correlation import CorrelationParams, correlation_serve
from oncofed.tasks.logrank import count_noise_covariance, logrank_test
from oncofed.tasks.survival import EventTable, event_table
from tests.oracle import PERMISSIVE
from tests.unit.test_tables_math import LocalGrid

DP = {"epsilon": 1.0, "delta": 1e-6}
POINTS = [180.0, 365.0, 550.0, 730.0, 1100.0]
"""Agreed time points past the longest follow-up (1022 days), so no row is cut off."""
BOUNDS = {"age": (18.0, 100.0), "wt.loss": (-50.0, 100.0)}
"""Public ranges from domain knowledge (adult patients; weight lost in pounds), not the data."""
SIMULATIONS = 2000


def _on_grid(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.assign(time=np.asarray(POINTS)[np.searchsorted(POINTS, frame["time"])])


def _tables(cells: pd.DataFrame) -> list[EventTable]:
    """Pooled event tables per sex from (sex, time)-indexed events and censorings."""
    tables = []
    for sex in (1, 2):
        d = cells.loc[sex, "events"].to_numpy(dtype=np.int64)
        c = cells.loc[sex, "censored"].to_numpy(dtype=np.int64)
        tables.append(event_table(np.asarray(POINTS), d, c))
    return tables


def _cells(frame: pd.DataFrame) -> pd.DataFrame:
    """Events and censorings per (sex, grid time), every agreed point present."""
    index = pd.MultiIndex.from_product([[1, 2], POINTS], names=["sex", "time"])
    grouped = frame.groupby(["sex", "time"])["status"]
    return pd.DataFrame(
        {"events": grouped.sum(), "censored": grouped.count() - grouped.sum()}
    ).reindex(index, fill_value=0)


@pytest.mark.slow
def test_dp_logrank_is_lifelines_within_the_noise(
    dp_net: Sandbox, lung_with_target: pd.DataFrame
) -> None:
    with dp_net.session(dataset="lung", progress=False, permit="dp-logrank") as s:
        with pytest.raises(OncofedError) as caught:
            s.logrank("time", "status", "sex", categories=["1", "2"], grid=30, dp=DP)
        assert caught.value.rule == "privacy.time_points_required"
        result = s.logrank(
            "time", "status", "sex", categories=["1", "2"], time_points=POINTS, dp=DP
        )
    assert result.privacy is not None and result.observed_noise_std is not None
    assert result.privacy.epsilon == pytest.approx(dict.fromkeys(dp_net.node_names, 1.0))
    pooled = _on_grid(lung_with_target)
    exact = pooled.groupby("sex")["status"].sum().loc[[1, 2]].to_numpy()
    assert np.all(
        np.abs(np.asarray(result.observed) - exact) <= 6 * np.array(result.observed_noise_std)
    )
    oracle = multivariate_logrank_test(pooled["time"], pooled["sex"], pooled["status"])

    # The nodes' noise, at the per-node scale the result states, on each node's exact
    # table (rounded Gaussian for OpenDP's discrete one, pooled as the server pools it):
    # the spread of the statistic it gives is the tolerance.
    per_node = result.privacy.noise_std["count"] / np.sqrt(len(result.nodes))
    nodes = [_cells(_on_grid(part)) for _, part in lung_with_target.groupby("centre")]
    rng = np.random.default_rng(20260101)
    simulated, deviations = [], []
    for _ in range(SIMULATIONS):
        noisy = sum(cells.map(lambda v: v + round(rng.normal(0, per_node))) for cells in nodes)
        test = logrank_test(_tables(noisy))
        simulated.append(test.statistic())
        deviations.append(test.observed - test.expected)
    tolerance = abs(np.mean(simulated) - oracle.test_statistic) + 6 * np.std(simulated)
    assert abs(result.statistic - oracle.test_statistic) <= tolerance
    # The noise of O - E the result states is first order. Here a node's cells hold 0-14
    # rows against noise of std 4.5, pooled negatives are clipped and O - E saturates, so the real
    # spread is smaller: the statement errs on the safe side, and by less than 2.5 times.
    simulated_std = np.std(deviations, axis=0)
    assert result.noise_std is not None
    assert np.all(simulated_std <= result.noise_std)
    assert np.all(np.asarray(result.noise_std) <= 2.5 * simulated_std)
    assert result.noise_adjusted_p_value is not None
    assert result.noise_adjusted_p_value >= result.p_value  # noise widens, never narrows
    print(
        f"logrank: observed {result.observed} vs exact {exact.tolist()} "
        f"(noise std {result.observed_noise_std[0]:.3g}); statistic {result.statistic:.4g} "
        f"vs lifelines {oracle.test_statistic:.4g} (tolerance {tolerance:.3g}); "
        f"O-E noise std stated {result.noise_std} vs simulated {simulated_std.tolist()}; "
        f"p {result.p_value:.3g}, allowing for noise {result.noise_adjusted_p_value:.3g}"
    )
    assert result.observed != exact.tolist(), "a DP release must carry noise"


@pytest.mark.slow
def test_dp_correlation_is_numpy_within_the_noise(
    dp_net: Sandbox, lung_with_target: pd.DataFrame
) -> None:
    columns = ["age", "wt.loss"]
    with dp_net.session(dataset="lung", progress=False, permit="dp-correlation") as s:
        with pytest.raises(OncofedError) as caught:
            s.correlation(columns, dp=DP, bounds={"age": BOUNDS["age"]})
        assert caught.value.rule == "privacy.bounds_required"
        assert "bounds={'wt.loss': (lo, hi)}" in str(caught.value.fix)
        result = s.correlation(columns, dp=DP, bounds=BOUNDS)
    assert result.privacy is not None
    assert result.privacy.epsilon == pytest.approx(dict.fromkeys(dp_net.node_names, 1.0))
    assert result.covariance_noise_std is not None and result.correlation_noise_std is not None
    complete = lung_with_target[columns].dropna().to_numpy()
    exact_cov, exact_corr = np.cov(complete, rowvar=False), np.corrcoef(complete, rowvar=False)
    assert abs(result.n - len(complete)) <= 6 * result.privacy.noise_std["count"]
    difference = np.abs(result.covariance.to_numpy() - exact_cov)
    assert np.all(difference <= 6 * np.asarray(result.covariance_noise_std))
    assert not np.allclose(result.covariance.to_numpy(), exact_cov), "no noise was added"
    # Six first-order noise stds, and never wider than a correlation can be wrong.
    tolerance = min(2.0, 6 * float(result.correlation_noise_std[0][1] or np.inf))
    correlation = result.correlation.to_numpy()
    assert abs(correlation[0, 1] - exact_corr[0, 1]) <= tolerance
    assert np.all(np.abs(correlation) <= 1.0) and np.all(np.linalg.eigvalsh(exact_cov) >= 0)
    assert np.all(np.linalg.eigvalsh(result.covariance.to_numpy()) >= -1e-9)
    assert result.rows_dropped is None  # not released under DP
    print(
        f"correlation: n {result.n} vs {len(complete)}; covariance {result.covariance_matrix} "
        f"vs {exact_cov.tolist()} (noise std {result.covariance_noise_std}); "
        f"r {correlation[0, 1]:.3g} vs {exact_corr[0, 1]:.3g} (tolerance {tolerance:.3g}); "
        f"noise {result.privacy.noise_std}"
    )


def test_dp_correlation_of_many_rows_is_numpy_within_its_stated_noise() -> None:
    """With 20 000 rows the noise is small next to the statistics: a sharp check of the math."""
    rng = np.random.default_rng(7)
    data = rng.multivariate_normal(
        [60.0, 10.0, 900.0], [[80, 20, -900], [20, 170, -500], [-900, -500, 160_000]], 20_000
    )
    frame = pd.DataFrame(data, columns=["age", "wt.loss", "meal.cal"])
    frame = frame.mask(rng.random(frame.shape) < 0.05)
    bounds = {**BOUNDS, "meal.cal": (0.0, 3000.0)}
    generous = DatasetPrivacy(epsilon=1.0, max_epsilon_per_release=1.0, delta=1e-6)
    policy = PERMISSIVE.model_copy(update={"dp": {"d": generous}})
    parts = {f"n{i}": frame.iloc[i::4].reset_index(drop=True) for i in range(4)}
    params = CorrelationParams(
        dataset="d", columns=tuple(frame), bounds=bounds, dp=DPRequest(epsilon=1.0, delta=1e-6)
    )
    result = correlation_serve(LocalGrid(parts, policy), params)
    clamped = frame.dropna().clip(
        lower=pd.Series({c: lo for c, (lo, _) in bounds.items()}),
        upper=pd.Series({c: hi for c, (_, hi) in bounds.items()}),
        axis=1,
    )
    exact_cov = np.cov(clamped.to_numpy(), rowvar=False)
    exact_corr = np.corrcoef(clamped.to_numpy(), rowvar=False)
    assert result.covariance_noise_std is not None and result.correlation_noise_std is not None
    cov_std, corr_std = (
        np.asarray(result.covariance_noise_std),
        np.asarray(result.correlation_noise_std, dtype=float),
    )
    assert np.all(np.abs(result.covariance.to_numpy() - exact_cov) <= 6 * cov_std)
    assert np.all(np.abs(result.correlation.to_numpy() - exact_corr) <= 6 * corr_std + 1e-12)
    # Each sum's noise follows its own bound: age's variance is not drowned by meal.cal's.
    assert corr_std[0, 1] < 0.1 and cov_std[0, 0] < 0.05 * exact_cov[0, 0]


def test_the_stated_noise_of_o_minus_e_is_its_derivative_in_every_count() -> None:
    """count_noise_covariance against a finite-difference Jacobian of O - E in each cell."""
    rng = np.random.default_rng(3)
    k, points = 3, np.arange(1.0, 7.0) * 30
    events = rng.integers(1, 20, (k, points.size)).astype(float)
    censored = rng.integers(0, 10, (k, points.size)).astype(float)

    def o_minus_e(d: np.ndarray, c: np.ndarray) -> np.ndarray:
        at_risk = np.flip(np.cumsum(np.flip(d + c, axis=1), axis=1), axis=1)
        return d.sum(axis=1) - (at_risk * d.sum(axis=0) / at_risk.sum(axis=0)).sum(axis=1)

    step, columns = 1e-5, []
    for which in (0, 1):
        for cell in np.ndindex(k, points.size):
            moved = [events.copy(), censored.copy()]
            moved[which][cell] += step
            back = [events.copy(), censored.copy()]
            back[which][cell] -= step
            columns.append((o_minus_e(*moved) - o_minus_e(*back)) / (2 * step))
    jacobian = np.array(columns).T
    tables = [
        EventTable(
            points,
            (d.sum() + c.sum() - np.concatenate([[0], np.cumsum(d + c)[:-1]])).astype(np.int64),
            d.astype(np.int64),
            c.astype(np.int64),
        )
        for d, c in zip(events, censored, strict=True)
    ]
    np.testing.assert_allclose(
        count_noise_covariance(tables, 2.0), 4.0 * jacobian @ jacobian.T, atol=1e-6
    )
