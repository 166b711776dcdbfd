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

from oncofed.kernel.errors import NodeRefusal, Param
from oncofed.privacy.policy import NodePolicy

FloatArray = npt.NDArray[np.float64]


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
    unfiltered query itself. ``total`` is every row the request could use (the
    records complete on the granted variables, for exact answers): below the
    minimum, the refusal says that no filter is to blame.
    """
    if 0 < selected < policy.min_subset_size:
        if total < policy.min_subset_size:
            # No request can widen what the node holds. Saying so tells no more than the
            # refusal itself: the node's usable records, like the selection, number 1 to 9.
            usable = (
                "records complete on every variable the permit grants"
                if policy.exact_complete_records
                else "records in this dataset"
            )
            raise NodeRefusal(
                f"this node has fewer than {policy.min_subset_size} {usable}, the fewest an "
                "exact answer may use here, whatever the request",
                rule="privacy.min_subset_size",
                node=node,
                fix="no filter or grouping can help: merge this centre's records with another "
                "centre's into one node, have this node left out (its operator stops offering "
                "the dataset; no request parameter chooses nodes), or ask with "
                f"{Param('dp', {'epsilon': 0.5})}, to which this rule does not apply",
                setting=policy.min_subset_size,
            )
        raise NodeRefusal(
            f"the where filter selects fewer than {policy.min_subset_size} rows at this node",
            rule="privacy.min_subset_size",
            node=node,
            fix=f"widen the {Param('where')} filter so that it keeps more rows at every node",
            setting=policy.min_subset_size,
        )
    excluded = total - selected
    if 0 < excluded < policy.min_complement_size:
        raise NodeRefusal(
            f"the where filter leaves out fewer than {policy.min_complement_size} rows at this "
            "node; compared with the unfiltered result that would reveal those rows",
            rule="privacy.min_complement_size",
            node=node,
            fix=f"drop the {Param('where')} filter, or filter so that more rows are left out",
            setting=policy.min_complement_size,
        )


def check_cells(
    counts: npt.ArrayLike, policy: NodePolicy, node: str, *, what: str, fix: str
) -> None:
    """Refuse a release holding a count from 1 to min_cell_count - 1 (zero is allowed)."""
    values = np.asarray(counts)
    small = (values > 0) & (values < policy.min_cell_count)
    if np.any(small):
        # How many cells are small is itself a count of the node's rows: not stated.
        raise NodeRefusal(
            f"{what} would hold fewer than {policy.min_cell_count} rows at this node",
            rule="privacy.min_cell_count",
            node=node,
            fix=fix,
            setting=policy.min_cell_count,
        )


def largest_terms(
    left: npt.ArrayLike, right: npt.ArrayLike | None = None, weights: npt.ArrayLike | None = None
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Per entry (j, k) of ``sum_i w_i l_ij r_ik``: the sum of the terms' magnitudes, and the
    largest and second-largest magnitude of one row's term.

    ``right`` defaults to a column of ones (the sums of ``left``'s columns; pass ``left``
    again for a cross-product matrix), ``weights`` to ones. Magnitudes, because a term of
    either sign moves the sum; a row's term is what it adds to the sum.
    """
    a = np.abs(np.asarray(left, dtype=float))
    a = a[:, None] if a.ndim == 1 else a
    b = np.ones((a.shape[0], 1)) if right is None else np.abs(np.asarray(right, dtype=float))
    b = b[:, None] if b.ndim == 1 else b
    if weights is not None:
        a = a * np.abs(np.asarray(weights, dtype=float))[:, None]
    rows, p, q = a.shape[0], a.shape[1], b.shape[1]
    total, first, second = a.T @ b, np.zeros((p, q)), np.zeros((p, q))
    for j in range(p):  # one column's terms at a time: memory of rows x q, not rows x p x q
        terms = a[:, j, None] * b
        if rows >= 2:
            top = np.partition(terms, rows - 2, axis=0)[rows - 2 :]
            first[j], second[j] = top[1], top[0]
        elif rows == 1:
            first[j] = terms[0]
    return total, first, second


def largest_terms_by_cell(
    cell: npt.ArrayLike, terms: npt.ArrayLike, cells: int
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """``largest_terms`` for per-cell sums of one quantity: row i adds ``terms[i]`` to cell
    ``cell[i]``; per cell, the sum of magnitudes and the two largest magnitudes."""
    index = np.asarray(cell, dtype=np.int64)
    a = np.abs(np.asarray(terms, dtype=float))
    total = np.bincount(index, weights=a, minlength=cells).astype(float)
    first, second = np.zeros(cells), np.zeros(cells)
    order = np.lexsort((-a, index))
    index, a = index[order], a[order]
    starts = np.flatnonzero(np.r_[True, index[1:] != index[:-1]]) if index.size else index
    first[index[starts]] = a[starts]
    follow = starts + 1
    paired = follow < index.size
    paired[paired] = index[follow[paired]] == index[starts[paired]]
    second[index[starts[paired]]] = a[follow[paired]]
    return total, first, second


def check_dominance(
    terms: tuple[FloatArray, FloatArray, FloatArray],
    policy: NodePolicy,
    node: str,
    *,
    what: str,
    fix: str,
) -> None:
    """Refuse a released sum that one row dominates (the p % rule, ``largest_terms``' output).

    A sum is sensitive when the rows other than its two largest contributors
    add up to less than p % of the largest: then the sum, less what the
    second-largest contributor knows of itself, gives the largest row's term
    to within p %. A transform such as np.exp lets one patient's term swamp
    the rest, and a model's coefficients or a mean then show that patient's
    values. Zero terms dominate nothing: an all-zero sum is allowed.
    """
    if policy.dominance_p <= 0:
        return
    total, first, second = terms
    rest = total - first - second
    dominated = (first > 0) & (rest < policy.dominance_p / 100.0 * first)
    if np.any(dominated):
        raise NodeRefusal(
            f"a released sum of {what} would be dominated by one row at this node: the other "
            f"rows hide its share by less than {policy.dominance_p:g} % (p % rule)",
            rule="privacy.dominance",
            node=node,
            fix=fix,
            setting=policy.dominance_p,
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


__all__ = [
    "check_cells",
    "check_dominance",
    "check_factor_levels",
    "check_participants",
    "check_subset",
    "largest_terms",
    "largest_terms_by_cell",
]
