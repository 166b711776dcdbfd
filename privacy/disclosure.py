"""Disclosure control: the rules a release must pass before it leaves the node.

Each rule refuses with the rule's name, the node's setting and a fix. The
refusals never state the node's own counts: a small count is itself
disclosive, and identical refusals from several nodes merge into one line.

The data-dependent rules (cell counts, subset and complement sizes) apply to
exact releases. A differentially private release skips them: a refusal that
depends on an exact count would itself leak that count, and the noise is what
protects small cells there. Rules that depend only on the request -- minimum
sites, factor levels declared by the schema, the time grid -- apply always.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import numpy.typing as npt

from oncofed.kernel.errors import NodeRefusal
from oncofed.privacy.policy import NodePolicy


def check_participants(participants: int, policy: NodePolicy, node: str) -> None:
    """Refuse a task sent to fewer nodes than this node's minimum.

    With one or two sites the others' share can be subtracted from the total,
    so the total would show this node's own values.
    """
    if participants < policy.min_nodes:
        raise NodeRefusal(
            f"the task was sent to {participants} node(s); this node takes part only when "
            f"at least {policy.min_nodes} do, so its values cannot be subtracted out",
            rule="privacy.min_nodes",
            node=node,
            fix=f"run the task on at least {policy.min_nodes} nodes",
            setting=policy.min_nodes,
        )


def check_subset(selected: int, total: int, policy: NodePolicy, node: str) -> None:
    """Refuse an analysis on too few rows, or a filter that leaves out only a few.

    Selecting no row at all is allowed: it releases nothing about anyone, and a
    filter on one centre's rows must not fail at every other centre. A filter
    excluding 1..min_complement_size-1 rows lets the difference from the
    unfiltered query reveal the excluded rows; excluding none is the
    unfiltered query itself.
    """
    if 0 < selected < policy.min_subset_size:
        raise NodeRefusal(
            f"the request selects fewer than {policy.min_subset_size} rows at this node",
            rule="privacy.min_subset_size",
            node=node,
            fix="widen the where filter or the groups, or leave this node out",
            setting=policy.min_subset_size,
        )
    excluded = total - selected
    if 0 < excluded < policy.min_complement_size:
        raise NodeRefusal(
            f"the where filter leaves out fewer than {policy.min_complement_size} rows at this "
            "node; compared with the unfiltered result that would reveal those rows",
            rule="privacy.min_complement_size",
            node=node,
            fix="drop the filter, or filter so that more rows are left out",
            setting=policy.min_complement_size,
        )


def check_cells(
    counts: npt.ArrayLike, policy: NodePolicy, node: str, *, what: str, fix: str
) -> None:
    """Refuse a release holding a count from 1 to min_cell_count - 1 (zero is allowed)."""
    values = np.asarray(counts)
    small = (values > 0) & (values < policy.min_cell_count)
    if np.any(small):
        raise NodeRefusal(
            f"{int(small.sum())} {what} would hold fewer than {policy.min_cell_count} rows "
            "at this node",
            rule="privacy.min_cell_count",
            node=node,
            fix=fix,
            setting=policy.min_cell_count,
        )


def check_factor_levels(column: str, levels: Iterable[str], policy: NodePolicy, node: str) -> None:
    """Refuse a grouping column or model factor with more levels than the policy allows.

    Many levels -- a numeric column used as a factor, an identifier -- make
    cells of one person each.
    """
    count = len(list(levels))
    if count > policy.max_factor_levels:
        raise NodeRefusal(
            f"column {column!r} would be used with {count} levels; this node allows at most "
            f"{policy.max_factor_levels}",
            rule="privacy.max_factor_levels",
            node=node,
            fix=f"group {column!r} into fewer categories, or use it as a number",
            column=column,
            setting=policy.max_factor_levels,
        )


__all__ = ["check_cells", "check_factor_levels", "check_participants", "check_subset"]
