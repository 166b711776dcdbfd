"""Independent answers on pooled data, computed with pandas."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pandas as pd

from oncofed.client.sandbox import Sandbox
from oncofed.privacy.policy import EVERY_DATASET, DatasetPrivacy, NodePolicy
from oncofed.tasks.describe import DescribeResult

PERMISSIVE = NodePolicy(
    min_cell_count=1,
    min_subset_size=1,
    min_complement_size=1,
    min_nodes=1,
    dominance_p=0.0,
    exact_complete_records=False,
    dp={EVERY_DATASET: DatasetPrivacy(allow_exact=True)},
)
"""No disclosure control, exact answers allowed: for tests of the mathematics on small data.

The attack suite (tests/privacy) runs its attacks against this policy too, to
show each one succeeds when its defence is off.
"""


PER_REQUEST_ROWS = NodePolicy(exact_complete_records=False)

"""The default disclosure rules, but exact answers on each request's own complete cases.

By default a node answers exactly only on the records complete on every granted
variable (``exact_complete_records``); the oracle tests compare with pandas,
statsmodels and lifelines on each analysis's own complete cases, which this
policy gives. ``client/demo.py`` and ``tests/privacy`` cover the default.
"""


@contextmanager
def manual_three_centres(lung: pd.DataFrame) -> Iterator[Sandbox]:
    """Three lung centres whose operators approve every task, exact answers on each
    request's own rows (the pandas oracle's)."""
    three = lung[lung["centre"] != "centre-D"]
    with Sandbox.from_frame(
        three,
        split_by="centre",
        dataset="lung",
        approval="manual",
        policy=PER_REQUEST_ROWS,
        release="exact",
    ) as net:
        yield net


def assert_describe_matches(
    result: DescribeResult, pooled: pd.DataFrame, columns: list[str], rel: float = 1e-9
) -> None:
    """Every statistic equals pandas on the pooled frame (counts exactly)."""
    frame = result.to_frame()
    for column in columns:
        values = pooled[column].astype(float)
        row = frame.loc[column]
        assert row["count"] == values.count()
        assert row["missing"] == values.isna().sum()
        np.testing.assert_allclose(row["sum"], values.sum(), rtol=rel)
        np.testing.assert_allclose(row["mean"], values.mean(), rtol=rel)
        np.testing.assert_allclose(row["variance"], values.var(ddof=1), rtol=rel)
        np.testing.assert_allclose(row["std"], values.std(ddof=1), rtol=rel)
