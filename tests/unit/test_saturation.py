"""The model-saturation rule refuses near-saturated models without leaking the row count."""

from __future__ import annotations

import pytest

from oncofed.kernel.errors import NodeRefusal
from oncofed.privacy.policy import NodePolicy
from oncofed.privacy.saturation import check_model_saturation


def test_limit_is_inclusive_and_refusal_hides_the_row_count() -> None:
    policy = NodePolicy(max_model_saturation=0.37)
    check_model_saturation(37, 100, policy, "centre-a", "fewer terms")  # exactly at the limit
    with pytest.raises(NodeRefusal) as caught:
        check_model_saturation(38, 100, policy, "centre-a", "fewer terms")
    assert (caught.value.rule, caught.value.node, caught.value.fix) == (
        "privacy.model_saturation",
        "centre-a",
        "fewer terms",
    )
    assert "100" not in str(caught.value)


def test_a_node_with_a_handful_of_rows_cannot_release_a_two_term_model() -> None:
    with pytest.raises(NodeRefusal):
        check_model_saturation(2, 3, NodePolicy(), "centre-b", "fewer terms")
    check_model_saturation(2, 0, NodePolicy(), "centre-b", "fewer terms")  # no rows: nothing
