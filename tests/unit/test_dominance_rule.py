"""The p % rule (privacy/disclosure.check_dominance) on hand-computed sums."""

from __future__ import annotations

import numpy as np
import pytest

from oncofed.kernel.errors import NodeRefusal
from oncofed.privacy.disclosure import check_dominance, largest_terms, largest_terms_by_cell
from oncofed.privacy.policy import NodePolicy

RULE = NodePolicy()  # p = 10


def test_largest_terms_of_a_weighted_cross_product_by_hand() -> None:
    x = np.array([[1.0, 2.0], [3.0, -4.0], [5.0, 6.0]])
    total, first, second = largest_terms(x, x, np.array([1.0, 2.0, 1.0]))
    # Entry (0, 1): terms 1*1*2 = 2, 2*3*|-4| = 24, 1*5*6 = 30.
    assert total[0, 1] == 56.0 and first[0, 1] == 30.0 and second[0, 1] == 24.0
    sums = largest_terms(x)  # against a column of ones: the columns' sums
    assert sums[0].ravel().tolist() == [9.0, 12.0] and sums[1].ravel().tolist() == [5.0, 6.0]


def test_largest_terms_by_cell_by_hand() -> None:
    total, first, second = largest_terms_by_cell([0, 2, 0, 0, 2, 3], [1.0, -5, 3, 2, 1, 7], 5)
    assert total.tolist() == [6.0, 0.0, 6.0, 7.0, 0.0]
    assert first.tolist() == [3.0, 0.0, 5.0, 7.0, 0.0]
    assert second.tolist() == [2.0, 0.0, 1.0, 0.0, 0.0]


@pytest.mark.parametrize(
    ("values", "dominated"),
    [
        ([100.0, 1.0, 4.0, 5.0], True),  # the rest (4 + 1) is 5 % of 100
        ([100.0, 1.0, 4.0, 6.0, 5.0], False),  # the rest (5 + 4 + 1) is 10 % of 100
        ([3.0, 3.0, 3.0, 3.0, 3.0], False),
        ([7.0, 2.0], True),  # two rows: each knows the other's exactly
        ([0.0, 0.0, 0.0], False),  # an all-zero sum shows nothing
        ([-100.0, 5.0, 4.0, 1.0], True),  # magnitudes: a negative term dominates too
    ],
)
def test_the_rule_refuses_a_sum_one_row_dominates(values: list[float], dominated: bool) -> None:
    terms = largest_terms(np.array(values))
    if not dominated:
        check_dominance(terms, RULE, "n1", what="x", fix="f")
        return
    with pytest.raises(NodeRefusal) as refused:
        check_dominance(terms, RULE, "n1", what="x", fix="f")
    assert refused.value.rule == "privacy.dominance" and refused.value.node == "n1"
    assert "100" not in str(refused.value)  # no value is named
    check_dominance(terms, NodePolicy(dominance_p=0.0), "n1", what="x", fix="f")  # rule off
