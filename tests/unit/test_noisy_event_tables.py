"""Pooling noisy survival counts: group sizes from the raw sums, clipping only for the curve.

Nodes release discrete-Gaussian counts as drawn, negatives included. Clipping
each node's cells at zero adds about 0.2-0.4 noise sd per cell, so on a fine
grid a group's n came out several times too large (lung, 8 points: 461 for
139); the server clips only what the product-limit estimator needs.
"""

from __future__ import annotations

import numpy as np
import pytest

from oncofed.tasks import survival
from oncofed.tasks.kaplan_meier import kaplan_meier_curve
from oncofed.tasks.survival import GroupedSurvivalParams, NoisyEventTableRelease

POINTS = [30.0, 60.0, 90.0]


def _part(events: list[int], censored: list[int]) -> NoisyEventTableRelease:
    return NoisyEventTableRelease(
        groups=("all",),
        group=np.zeros(len(POINTS), dtype=np.int64),
        time=np.asarray(POINTS),
        events=np.asarray(events),
        censored=np.asarray(censored),
        rows_dropped=-2,
        rows_outside_categories=1,
        privacy={},
    )


def test_group_size_is_the_raw_sum_and_the_curve_stays_a_survival_curve(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    parts = [("a", _part([3, -4, 2], [-1, 5, -3])), ("b", _part([-2, 6, 1], [4, -1, 2]))]
    monkeypatch.setattr(survival, "wait_for_nodes", lambda grid, params: ["a", "b"])
    monkeypatch.setattr(survival, "broadcast", lambda *args: [])
    monkeypatch.setattr(survival, "released", lambda replies, kind: parts)
    monkeypatch.setattr(survival, "dp_report", lambda replies: None)
    params = GroupedSurvivalParams(
        dataset="lung", duration="time", event="status", time_points=POINTS, dp={"epsilon": 1.0}
    )
    pooled = survival.pooled_event_tables(None, params, "kaplan_meier")  # type: ignore[arg-type]
    (table,) = pooled.tables
    # Raw sums: events 1, 2, 3; censored 3, 4, -1 -> n = 12, not the clipped 1+2+3+3+4+0.
    assert table.n == 12
    assert table.at_risk.tolist() == [12, 8, 2]
    assert table.events.tolist() == [1, 2, 2]  # the last clipped to the 2 at risk
    assert pooled.rows_dropped == {"a": 0, "b": 0} and pooled.rows_outside_categories == 2
    curve = kaplan_meier_curve("all", table, alpha=0.05)
    assert curve.n == 12
    assert curve.survival == pytest.approx([1.0, 11 / 12, 11 / 12 * 6 / 8, 0.0])
