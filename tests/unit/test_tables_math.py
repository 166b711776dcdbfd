"""Arithmetic of correlation, crosstab, histogram and quantiles, against numpy and scipy.

Server functions run here on an in-process grid: the nodes' ClientApps (with
their validation mod) are called directly, so the combination and search
logic is checked on many random splits without starting processes.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest
from flwr.app import Message
from scipy.stats import chi2_contingency

from oncofed.kernel.errors import OncofedError, QueryError
from oncofed.kernel.flower import install_process_identity, node_context, stamp
from oncofed.kernel.schema import infer_schema
from oncofed.node.app import build_client_app
from oncofed.node.data import FrameCatalogue
from oncofed.privacy.dp import DPRequest
from oncofed.privacy.policy import DatasetPrivacy, NodePolicy
from oncofed.privacy.release import Kind
from oncofed.tasks.base import LocalDataset
from oncofed.tasks.correlation import (
    ComomentsRelease,
    CorrelationParams,
    combine_comoments,
    correlation_node,
    correlation_serve,
    covariance_and_correlation,
)
from oncofed.tasks.crosstab import CrosstabParams, TableRelease, crosstab_node, crosstab_serve
from oncofed.tasks.histogram import (
    HistogramParams,
    HistogramRelease,
    histogram_node,
    histogram_serve,
)
from oncofed.tasks.quantiles import (
    QuantilesParams,
    QuantilesResult,
    order_statistics,
    quantiles_serve,
)
from tests.oracle import PERMISSIVE

METHODS = ("linear", "lower", "higher", "nearest", "midpoint", "inverted_cdf")


class LocalGrid:
    """A Grid whose nodes are ClientApps called in this process."""

    def __init__(self, parts: dict[str, pd.DataFrame], policy: NodePolicy = PERMISSIVE) -> None:
        install_process_identity()
        schema = infer_schema(pd.concat(list(parts.values())))
        catalogues = [
            FrameCatalogue(name, {"d": (schema, frame)}, policy) for name, frame in parts.items()
        ]
        self.apps = {
            node_id: build_client_app(lambda _context, c=catalogue: c)
            for node_id, catalogue in enumerate(catalogues, start=1)
        }
        self.rounds = 0

    def get_node_ids(self) -> list[int]:
        return list(self.apps)

    def send_and_receive(self, messages: list[Message], timeout: float) -> Iterator[Message]:
        self.rounds += 1
        for i, message in enumerate(messages):
            stamp(message, run_id=1, message_id=f"{self.rounds}-{i}")
            node_id = message.metadata.dst_node_id
            yield self.apps[node_id](message, node_context(node_id, 1, {}))


def _split(frame: pd.DataFrame, rng: np.random.Generator, parts: int) -> dict[str, pd.DataFrame]:
    labels = rng.integers(0, parts, size=len(frame))
    return {f"n{i}": frame[labels == i].reset_index(drop=True) for i in range(parts)}


def _local(frame: pd.DataFrame) -> LocalDataset:
    return LocalDataset("centre-x", "d", infer_schema(frame), frame, PERMISSIVE)


# ---- correlation -----------------------------------------------------------


def _comoments(x: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    mean = x.mean(axis=0) if len(x) else np.zeros(x.shape[1])
    return float(len(x)), mean, (x - mean).T @ (x - mean)


@pytest.mark.parametrize("seed", range(5))
def test_comoment_combination_equals_numpy_cov_on_random_splits_with_empty_parts(
    seed: int,
) -> None:
    rng = np.random.default_rng(seed)
    # A large common offset is where one-pass sums of products lose every digit.
    data = rng.multivariate_normal([1e6, -3e5, 10.0], [[4, 1, 0.5], [1, 2, 0], [0.5, 0, 1]], 800)
    parts = np.split(data, np.sort(rng.choice(np.arange(800), size=5, replace=False)))
    parts.insert(1, np.empty((0, 3)))
    total = _comoments(parts[0])
    for part in parts[1:]:
        total = combine_comoments(total, _comoments(part))
    covariance, correlation = covariance_and_correlation(total)
    assert total[0] == 800
    np.testing.assert_allclose(total[1], data.mean(axis=0), rtol=1e-14)
    np.testing.assert_allclose(covariance, np.cov(data, rowvar=False), rtol=1e-9)
    np.testing.assert_allclose(correlation, np.corrcoef(data, rowvar=False), rtol=1e-9)


def test_combination_with_an_empty_first_part_keeps_the_other() -> None:
    data = np.array([[1.0, 2.0], [3.0, 5.0], [4.0, 4.0]])
    total = combine_comoments(_comoments(np.empty((0, 2))), _comoments(data))
    np.testing.assert_allclose(total[2], _comoments(data)[2])


def test_node_releases_n_mean_and_comoments_of_complete_cases_only() -> None:
    frame = pd.DataFrame({"x": [1.0, 2.0, 3.0, np.nan], "y": [2.0, 4.0, 9.0, 1.0]})
    release = correlation_node(CorrelationParams(dataset="d", columns=("x", "y")), _local(frame))
    # Only these numbers leave the node, each typed by what it is.
    kinds = {key: kind for key, kind, _ in release.numbers()}
    assert kinds == {
        "n": Kind.COUNT,
        "mean": Kind.MOMENT,
        "comoment": Kind.MOMENT,
        "rows_dropped": Kind.COUNT,
    }
    assert release.n == 3
    assert release.mean.tolist() == [2.0, 5.0]
    # (x - 2)(y - 5) summed: (-1)(-3) + 0 + (1)(4) = 7
    assert release.comoment.tolist() == [[2.0, 7.0], [7.0, 26.0]]
    assert release.rows_dropped == 1
    wire = ComomentsRelease.from_content(release.to_content("centre-x"))
    assert wire.n == 3 and wire.comoment.tolist() == release.comoment.tolist()


def test_zero_variance_column_has_undefined_correlation_but_a_covariance() -> None:
    data = np.array([[1.0, 5.0], [2.0, 5.0], [4.0, 5.0]])
    covariance, correlation = covariance_and_correlation(_comoments(data))
    assert covariance[1, 1] == 0.0
    assert np.isnan(correlation[0, 1]) and np.isnan(correlation[1, 1])
    assert correlation[0, 0] == 1.0


@pytest.mark.parametrize("seed", range(3))
def test_correlation_server_equals_numpy_on_complete_cases(seed: int) -> None:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(rng.normal(size=(300, 3)) @ [[1, 0.5, 0], [0, 1, 0.3], [0, 0, 1]])
    frame.columns = ["a", "b", "c"]
    frame = frame.mask(rng.random(frame.shape) < 0.1)
    result = correlation_serve(
        LocalGrid(_split(frame, rng, 4)), CorrelationParams(dataset="d", columns=("a", "b", "c"))
    )
    complete = frame.dropna().to_numpy()
    assert result.n == len(complete)
    assert result.rows_dropped == len(frame) - len(complete)
    np.testing.assert_allclose(result.covariance, np.cov(complete, rowvar=False), rtol=1e-12)
    np.testing.assert_allclose(result.correlation, np.corrcoef(complete, rowvar=False), rtol=1e-12)


# ---- crosstab --------------------------------------------------------------


def test_crosstab_node_counts_agreed_categories_and_reports_the_rest() -> None:
    frame = pd.DataFrame(
        {"g": ["a", "b", "a", "c", None, "a"], "h": ["x", "y", "y", "x", "x", None]}
    )
    params = CrosstabParams(
        dataset="d", row="g", col="h", row_categories=("a", "b"), col_categories=("x", "y")
    )
    release = crosstab_node(params, _local(frame))
    assert release.counts.tolist() == [[1, 1], [0, 1]]
    assert release.rows_missing == 2
    assert release.rows_outside_categories == 1
    assert (release.row_categories, release.col_categories) == (("a", "b"), ("x", "y"))
    wire = TableRelease.from_content(release.to_content("centre-x"))
    assert wire.counts.tolist() == [[1, 1], [0, 1]] and wire.row_categories == ("a", "b")


def test_crosstab_server_equals_pandas_and_scipy_with_its_default_yates_correction() -> None:
    rng = np.random.default_rng(3)
    frame = pd.DataFrame(
        {"g": rng.choice(["a", "b"], 400), "h": rng.choice(["x", "y"], 400, p=[0.3, 0.7])}
    )
    result = crosstab_serve(
        LocalGrid(_split(frame, rng, 3)), CrosstabParams(dataset="d", row="g", col="h")
    )
    observed = pd.crosstab(frame["g"], frame["h"])
    expected = chi2_contingency(observed.to_numpy())
    assert result.to_frame().equals(observed.rename_axis(index="g", columns="h"))
    assert result.dof == 1 and result.correction
    assert result.statistic == pytest.approx(expected.statistic, rel=1e-12)
    assert result.pvalue == pytest.approx(expected.pvalue, rel=1e-12)
    uncorrected = chi2_contingency(observed.to_numpy(), correction=False)
    assert result.statistic != pytest.approx(uncorrected.statistic, rel=1e-6)


def test_all_zero_category_is_refused_naming_column_and_category() -> None:
    # Integer codes: no declared categories, so a code no row has is a category here
    # (one a schema does not declare is refused before any row is read).
    frame = pd.DataFrame({"g": ["a", "b", "a", "b"], "h": [1, 2, 2, 1]})
    params = CrosstabParams(dataset="d", row="g", col="h", col_categories=("1", "2", "3"))
    with pytest.raises(QueryError) as caught:
        crosstab_serve(LocalGrid({"n0": frame}), params)
    assert caught.value.rule == "crosstab.empty_category"
    assert caught.value.context["column"] == "h"
    assert "'3'" in str(caught.value) and "col_categories" in caught.value.fix


def test_crosstab_needs_two_agreed_categories_per_axis() -> None:
    frame = pd.DataFrame({"g": [1, 2], "h": ["x", "y"]})
    schema = infer_schema(frame)
    with pytest.raises(QueryError) as missing:
        CrosstabParams(dataset="d", row="g", col="h").check_schema(schema, "centre-x")
    assert missing.value.rule == "crosstab.categories" and "row_categories" in missing.value.fix
    with pytest.raises(QueryError) as single:
        CrosstabParams(dataset="d", row="g", col="h", row_categories=("1",)).check_schema(
            schema, "centre-x"
        )
    assert single.value.rule == "crosstab.categories" and single.value.node == "centre-x"
    with pytest.raises(ValueError, match="different"):
        CrosstabParams(dataset="d", row="g", col="g")


# ---- histogram -------------------------------------------------------------


def test_histogram_node_counts_like_numpy_with_values_on_edges_outside_and_missing() -> None:
    values = [0.0, 1.0, 1.0, 2.5, 3.0, -1.0, 7.0, np.nan]
    params = HistogramParams(dataset="d", column="x", bins=(0.0, 1.0, 2.0, 3.0))
    release = histogram_node(params, _local(pd.DataFrame({"x": values})))
    # [0, 1) holds 0; [1, 2) holds both 1s; the last bin [2, 3] holds 2.5 and 3.
    assert release.counts.tolist() == [1, 2, 2]
    assert release.counts.tolist() == np.histogram(values[:7], [0, 1, 2, 3])[0].tolist()
    assert (release.below, release.above) == (1, 1)
    assert release.missing == 1
    assert {kind for _, kind, _ in release.numbers()} == {Kind.COUNT}
    wire = HistogramRelease.from_content(release.to_content("centre-x"))
    assert wire.counts.tolist() == [1, 2, 2] and wire.missing == 1


@pytest.mark.parametrize("seed", range(3))
def test_equal_bins_over_a_range_equal_numpy_histogram_with_bins_and_range(seed: int) -> None:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"x": np.round(rng.normal(50, 15, 500), 1)})
    params = HistogramParams(dataset="d", column="x", bins=13, range=(20.0, 80.0))
    result = histogram_serve(LocalGrid(_split(frame, rng, 4)), params)
    counts, edges = np.histogram(frame["x"], bins=13, range=(20.0, 80.0))
    assert result.counts == counts.tolist()
    assert result.edges == edges.tolist()
    assert result.below == int((frame["x"] < 20).sum())
    assert result.above == int((frame["x"] > 80).sum())
    density, _ = np.histogram(frame["x"], bins=13, range=(20.0, 80.0), density=True)
    np.testing.assert_allclose(result.to_frame()["density"], density, rtol=1e-12)


@pytest.mark.parametrize(
    ("bins", "range_", "problem"),
    [
        ((0.0, 2.0, 1.0), None, "not strictly increasing"),
        ((0.0, 1.0, 1.0), None, "not strictly increasing"),
        ((1.0,), None, "1 edge(s)"),
        ((0.0, float("inf")), None, "finite"),
        (10, None, "needs range"),
        (10, (5.0, 5.0), "lo < hi"),
        (0, (0.0, 1.0), "between 1"),
        ((0.0, 1.0), (0.0, 1.0), "applies only"),
    ],
)
def test_bad_bins_are_a_typed_refusal(
    bins: int | tuple[float, ...], range_: tuple[float, float] | None, problem: str
) -> None:
    with pytest.raises(QueryError) as caught:
        HistogramParams(dataset="d", column="x", bins=bins, range=range_)
    assert caught.value.rule == "histogram.edges"
    assert problem in str(caught.value)
    assert caught.value.fix


# ---- quantiles -------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_rank_rules_reproduce_numpy_quantile(method: str) -> None:
    rng = np.random.default_rng(0)
    qs = [0.001, 0.01, 0.1, 0.2, 0.25, 1 / 3, 0.5, 0.6, 2 / 3, 0.75, 0.9, 0.99, 0.999]
    for n in itertools.chain(range(1, 40), (99, 100, 101, 228, 686, 1000, 4097)):
        data = np.sort(rng.normal(size=n))
        for q in qs:
            terms = order_statistics(n, q, method)  # type: ignore[arg-type]
            assert abs(sum(w for _, w in terms) - 1) < 1e-15
            ours = sum(w * data[i] for i, w in terms)
            assert ours == pytest.approx(np.quantile(data, q, method=method), abs=1e-14), (n, q)


def _assert_within_bound(result: QuantilesResult, pooled: np.ndarray) -> None:
    exact = np.quantile(pooled, result.q, method=result.method)
    errors = np.abs(np.asarray(result.values) - exact)
    assert np.all(errors <= np.asarray(result.bounds)), (errors, result.bounds)
    assert max(result.bounds) <= result.tolerance


@pytest.mark.parametrize(("seed", "method"), itertools.product(range(3), METHODS))
def test_federated_quantiles_are_within_their_stated_bound(seed: int, method: str) -> None:
    rng = np.random.default_rng(seed)
    # Rounded values give ties and values exactly on grid edges, the hard cases for brackets.
    frame = pd.DataFrame({"x": np.round(rng.gamma(2.0, 10.0, 700), 0)})
    frame.loc[rng.random(700) < 0.05, "x"] = np.nan
    params = QuantilesParams(
        dataset="d",
        column="x",
        q=(0.05, 0.25, 0.5, 0.75, 0.95),
        lower=0.0,
        upper=200.0,
        tolerance=0.05,
        method=method,  # type: ignore[arg-type]
    )
    grid = LocalGrid(_split(frame, rng, 3))
    result = quantiles_serve(grid, params)
    pooled = frame["x"].dropna().to_numpy()
    _assert_within_bound(result, pooled)
    assert result.n == len(pooled) and result.missing == int(frame["x"].isna().sum())
    assert result.grid_step <= 0.05
    # R = ceil(log2(200 / 0.05)) = 12: 2**12 + 1 candidate edges take at most R + 1 rounds.
    assert result.rounds == grid.rounds
    assert 12 <= result.rounds <= 13


@pytest.mark.parametrize("method", METHODS)
def test_bound_holds_for_a_fine_tolerance_on_values_with_a_large_offset(method: str) -> None:
    # Where rounding is largest relative to the grid step: the allowance must still cover it.
    rng = np.random.default_rng(7)
    frame = pd.DataFrame({"x": 1e6 + np.round(rng.normal(0, 20, 300), 3)})
    params = QuantilesParams(
        dataset="d",
        column="x",
        q=(0.1, 0.5, 0.77),
        lower=1e6 - 100,
        upper=1e6 + 100,
        tolerance=1e-6,
        method=method,  # type: ignore[arg-type]
    )
    result = quantiles_serve(LocalGrid(_split(frame, rng, 2)), params)
    _assert_within_bound(result, frame["x"].to_numpy())
    assert result.grid_step < 1e-6


def test_dp_quantiles_come_from_one_noisy_grid_histogram_near_numpy() -> None:
    rng = np.random.default_rng(11)
    frame = pd.DataFrame({"x": rng.normal(100, 20, 10_000)})
    generous = DatasetPrivacy(epsilon=10.0, max_epsilon_per_release=10.0, delta=1e-6)
    policy = PERMISSIVE.model_copy(update={"dp": {"d": generous}})
    params = QuantilesParams(
        dataset="d",
        column="x",
        q=(0.25, 0.5, 0.75),
        lower=0.0,
        upper=200.0,
        tolerance=1.0,
        dp=DPRequest(epsilon=10.0, delta=1e-6),
    )
    grid = LocalGrid(_split(frame, rng, 3), policy)
    result = quantiles_serve(grid, params)
    assert grid.rounds == result.rounds == 1  # one release, not a bisection of many
    assert result.bounds is None and result.privacy is not None
    assert list(result.privacy.epsilon.values()) == pytest.approx([10.0] * 3)
    exact = np.quantile(frame["x"], result.q)
    # Grid step 200/256 plus the rank noise (a few counts of 10 000 near the median).
    np.testing.assert_allclose(result.values, exact, atol=2.0)
    too_fine = params.model_copy(update={"tolerance": 0.01})
    with pytest.raises(OncofedError) as caught:
        quantiles_serve(LocalGrid(_split(frame, rng, 3), policy), too_fine)
    assert caught.value.rule == "privacy.dp_grid_too_fine"


def test_quantile_equal_to_lower_is_found_exactly() -> None:
    frame = pd.DataFrame({"x": [0.0] * 30 + list(range(1, 31))})
    params = QuantilesParams(dataset="d", column="x", q=(0.25,), lower=0.0, upper=40.0)
    result = quantiles_serve(LocalGrid({"n0": frame}), params)
    assert result.values == [0.0]
    assert result.bounds[0] < 1e-12


def test_extreme_and_out_of_bounds_quantiles_are_refused() -> None:
    frame = pd.DataFrame({"x": np.arange(1.0, 101.0)})
    grid = LocalGrid({"n0": frame})
    with pytest.raises(QueryError) as extreme:
        quantiles_serve(
            grid, QuantilesParams(dataset="d", column="x", q=(0.001,), lower=0, upper=200)
        )
    assert extreme.value.rule == "quantiles.extreme" and "smallest" in str(extreme.value)
    with pytest.raises(QueryError) as outside:
        quantiles_serve(
            grid, QuantilesParams(dataset="d", column="x", q=(0.5, 0.9), lower=0, upper=60)
        )
    assert outside.value.rule == "quantiles.out_of_bounds"
    assert "above upper" in str(outside.value) and "40 above" in str(outside.value)


def test_nodes_refuse_probes_off_the_agreed_grid() -> None:
    params = QuantilesParams(dataset="d", column="x", q=(0.5,), lower=0, upper=1, tolerance=0.25)
    assert params.size() == 4
    with pytest.raises(QueryError) as caught:
        QuantilesParams.model_validate({**params.model_dump(), "probe": (5,)})
    assert caught.value.rule == "quantiles.grid"
    with pytest.raises(QueryError) as fine:
        QuantilesParams(dataset="d", column="x", q=(0.5,), lower=0, upper=1, tolerance=1e-15)
    assert fine.value.rule == "quantiles.grid"
    with pytest.raises(ValueError, match="strictly between"):
        QuantilesParams(dataset="d", column="x", q=(0.0,), lower=0, upper=1)
