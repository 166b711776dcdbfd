"""describe's arithmetic, by hand and against numpy."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from oncofed.kernel.errors import QueryError
from oncofed.kernel.schema import ColumnSpec, infer_schema
from oncofed.privacy.release import Kind
from oncofed.tasks.base import LocalDataset
from oncofed.tasks.describe import (
    DescribeParams,
    MomentsRelease,
    combine_moments,
    describe_node,
)
from oncofed.tasks.encoding import category_labels
from tests.oracle import PERMISSIVE


def _moments(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = np.array([[float(values.size)]])
    mean = np.array([[values.mean() if values.size else 0.0]])
    m2 = np.array([[float(((values - mean[0, 0]) ** 2).sum()) if values.size else 0.0]])
    return n, mean, m2


@pytest.mark.parametrize("seed", range(5))
def test_chan_combination_equals_numpy_on_random_splits_including_empty_parts(seed: int) -> None:
    rng = np.random.default_rng(seed)
    data = rng.normal(1e6, 3.0, size=1000)  # a large offset is where naive sums lose digits
    cuts = np.sort(rng.choice(np.arange(1000), size=6, replace=False))
    parts = np.split(data, cuts)
    parts.insert(2, np.array([]))
    total = _moments(parts[0])
    for part in parts[1:]:
        total = combine_moments(total, _moments(part))
    n, mean, m2 = (x[0, 0] for x in total)
    assert n == 1000
    np.testing.assert_allclose(mean, data.mean(), rtol=1e-14)
    np.testing.assert_allclose(m2 / (n - 1), data.var(ddof=1), rtol=1e-9)


def _local(frame: pd.DataFrame) -> LocalDataset:
    return LocalDataset("centre-x", "d", infer_schema(frame), frame, PERMISSIVE)


def test_node_releases_count_mean_m2_and_missing_computed_by_hand() -> None:
    frame = pd.DataFrame({"x": [1.0, 2.0, 3.0, np.nan], "g": ["a", "b", "a", "a"]})
    release = describe_node(DescribeParams(dataset="d", columns=("x",)), _local(frame))
    assert isinstance(release, MomentsRelease)
    assert release.count.tolist() == [[3]]
    assert release.missing.tolist() == [[1]]
    assert release.mean.tolist() == [[2.0]]
    assert release.m2.tolist() == [[2.0]]  # (1-2)^2 + 0 + (3-2)^2
    # Every number is typed by what it is, and only those leave the node.
    kinds = {key: kind for key, kind, _ in release.numbers()}
    assert kinds == {
        "count": Kind.COUNT,
        "missing": Kind.COUNT,
        "mean": Kind.MOMENT,
        "m2": Kind.MOMENT,
        "rows_outside_categories": Kind.COUNT,
        "rows_group_missing": Kind.COUNT,
    }
    wire = MomentsRelease.from_content(release.to_content("centre-x"))
    assert wire.m2.tolist() == [[2.0]] and wire.groups == release.groups


def test_grouped_node_release_uses_agreed_categories_only() -> None:
    frame = pd.DataFrame({"x": [1.0, 2.0, 3.0, 5.0, 7.0], "g": ["a", "b", "a", None, "c"]})
    params = DescribeParams(dataset="d", columns=("x",), by="g", categories=("a", "b"))
    release = describe_node(params, _local(frame))
    assert isinstance(release, MomentsRelease)
    assert release.count.ravel().tolist() == [2, 1]
    assert release.groups == ("a", "b")
    assert release.rows_outside_categories == 1
    assert release.rows_group_missing == 1


def test_grouping_without_agreed_categories_is_refused() -> None:
    frame = pd.DataFrame({"x": [1.0, 2.0], "k": [1, 2]})
    params = DescribeParams(dataset="d", columns=("x",), by="k")
    with pytest.raises(QueryError) as caught:
        describe_node(params, _local(frame))
    assert caught.value.rule == "describe.categories_required"
    assert caught.value.node == "centre-x"


def test_integer_category_labels_have_no_decimal_point() -> None:
    values = pd.Series([1.0, 2.0, None, 2.5])
    assert category_labels(values, ColumnSpec(type="float")).tolist()[:2] == ["1", "2"]
    assert category_labels(values, ColumnSpec(type="float")).tolist()[3] == "2.5"
    assert pd.isna(category_labels(values, ColumnSpec(type="float")).iloc[2])


def test_parameters_are_validated() -> None:
    with pytest.raises(ValueError, match="repeat"):
        DescribeParams(dataset="d", columns=("x", "x"))
    with pytest.raises(ValueError, match="categories"):
        DescribeParams(dataset="d", columns=("x",), categories=("a",))
    with pytest.raises(ValueError):
        DescribeParams(dataset="d", columns=("x",), unexpected=1)  # type: ignore[call-arg]
