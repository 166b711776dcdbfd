"""The model-saturation rule: too many coefficients for too few rows pin down patients.

With p coefficients fitted on n rows, the cross-products a node releases for a
regression (X'WX, X'Wz, risk-set sums) approach a system that can be solved
for single rows as p nears n. A node releases them only while
p <= max_model_saturation * n (DataSHIELD's nfilter.glm default is 0.37).
"""

from __future__ import annotations

from oncofed.kernel.errors import NodeRefusal
from oncofed.privacy.policy import NodePolicy


def check_model_saturation(
    coefficients: int, rows: float, policy: NodePolicy, node: str, fix: str
) -> None:
    """Refuse when the model is too close to saturation for this node's rows.

    The refusal never states the row count: a small count is itself disclosive,
    and identical refusals from several nodes then merge into one line.
    """
    limit = policy.max_model_saturation
    if rows > 0 and coefficients > limit * rows:
        raise NodeRefusal(
            f"the model has {coefficients} coefficients, too many for this node's rows "
            f"(at most {limit:g} per row): what it would release could reveal single patients",
            rule="privacy.model_saturation",
            node=node,
            fix=fix,
        )


__all__ = ["check_model_saturation"]
