"""Secure aggregation through real node processes: the coordinator stores no per-node value.

The inspection reads every reply the coordinator wrote to its database. Run
once without masking it finds each node's own counts there -- the check can
fail -- and with masking it finds none, while the totals still equal the
pooled answer.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest
from scipy.stats import chi2_contingency

from oncofed.client.sandbox import Sandbox
from oncofed.kernel.flower import from_bytes
from tests.oracle import PER_REQUEST_ROWS

pytestmark = pytest.mark.slow

EDGES = [30, 56, 64, 72, 90]


@pytest.fixture(scope="module")
def net(lung_with_target: pd.DataFrame) -> Iterator[Sandbox]:
    with Sandbox.from_frame(
        lung_with_target,
        split_by="centre",
        dataset="lung",
        policy=PER_REQUEST_ROWS,
        release="exact",
    ) as sandbox:
        yield sandbox


def _stored_arrays(net: Sandbox) -> list[np.ndarray]:
    """Every array in every reply the coordinator has stored."""
    with sqlite3.connect(net.workdir / "coordinator.db") as db:
        payloads = [row[0] for row in db.execute("SELECT payload FROM replies")]
    arrays = []
    for payload in payloads:
        message = from_bytes(payload)
        if message.has_error():
            continue
        for record in message.content.array_records.values():
            arrays.extend(array.numpy().ravel() for array in record.values())
    return arrays


def _holds(arrays: list[np.ndarray], values: np.ndarray) -> bool:
    """Whether ``values`` appears as a contiguous run in any stored array."""
    wanted = values.astype(np.int64)
    for array in arrays:
        candidate = array.view(np.int64) if array.dtype == np.uint64 else array.astype(np.int64)
        for start in range(len(candidate) - len(wanted) + 1):
            if np.array_equal(candidate[start : start + len(wanted)], wanted):
                return True
    return False


def test_the_coordinator_stores_only_masked_values(
    net: Sandbox, lung_with_target: pd.DataFrame
) -> None:
    per_node = {
        name: np.histogram(part["age"], bins=EDGES)[0]
        for name, part in lung_with_target.groupby("centre")
    }
    with net.session(dataset="lung", progress=False) as s:
        plain = s.histogram("age", EDGES)
    assert all(_holds(_stored_arrays(net), counts) for counts in per_node.values())

    before = len(_stored_arrays(net))
    with net.session(dataset="lung", progress=False) as s:
        masked = s.histogram("age", EDGES, secure_aggregation=True)
    after = _stored_arrays(net)[before:]
    assert masked.counts == plain.counts == np.histogram(lung_with_target["age"], EDGES)[0].tolist()
    assert masked.nodes == [", ".join(sorted(per_node))]  # per-node detail is not available
    assert not any(_holds(after, counts) for counts in per_node.values())


def test_secure_crosstab_equals_the_pooled_table_and_test(
    net: Sandbox, lung_with_target: pd.DataFrame
) -> None:
    with net.session(dataset="lung", progress=False) as s:
        table = s.crosstab(
            "sex",
            "status",
            row_categories=["1", "2"],
            col_categories=["0", "1"],
            secure_aggregation=True,
        )
    pooled = pd.crosstab(lung_with_target["sex"], lung_with_target["status"]).to_numpy()
    assert table.counts == pooled.tolist()
    assert table.statistic == pytest.approx(chi2_contingency(pooled).statistic, rel=1e-12)


def test_secure_dp_describe_adds_floats_in_fixed_point(
    net: Sandbox, lung_with_target: pd.DataFrame
) -> None:
    with net.session(dataset="lung", progress=False, permit="secure-dp") as s:
        result = s.describe(
            ["age"], dp={"epsilon": 1.0}, bounds={"age": (18.0, 100.0)}, secure_aggregation=True
        )
    assert result.privacy is not None
    row = result.to_frame().loc["age"]
    noise = result.privacy.noise_std
    assert abs(row["sum"] - lung_with_target["age"].sum()) <= 6 * noise["sum.age"]
    assert abs(row["count"] - len(lung_with_target)) <= 6 * noise["count.age"]


def test_exact_describe_cannot_be_masked(net: Sandbox) -> None:
    with net.session(dataset="lung", progress=False) as s, pytest.raises(Exception) as caught:
        s.describe(["age"], secure_aggregation=True)
    assert "secure_aggregation" in str(caught.value)
