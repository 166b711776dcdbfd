"""How column values become the labels that agreed categories and levels are written in."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from oncofed.kernel.errors import Hole, Param, QueryError
from oncofed.kernel.schema import ColumnSpec, DatasetSchema


def category_labels(values: pd.Series, spec: ColumnSpec) -> pd.Series:
    """Values as text labels: integers without '.0', text as it is, missing stays missing."""
    present = values.dropna()
    if spec.type in ("integer", "boolean", "float"):
        numbers = present.to_numpy(dtype=float)
        integral = np.isfinite(numbers) & (numbers == np.round(numbers))
        # Vectorised for the common integer codes; only fractional values need repr().
        labels = np.where(integral, np.where(integral, numbers, 0).astype(np.int64).astype(str), "")
        labels = labels.astype(object)
        for i in np.flatnonzero(~integral):
            labels[i] = repr(float(numbers[i]))
    else:
        labels = present.astype(str).to_numpy(dtype=object)
    return pd.Series(labels, index=present.index, dtype="object").reindex(values.index)


def agreed_categories(
    column: str,
    requested: Sequence[str] | None,
    schema: DatasetSchema,
    node: str,
    *,
    option: str,
    rule: str,
    per_column: bool = False,
) -> tuple[str, ...]:
    """The categories a request agrees for a column: its own list, else the schema's.

    Never the values found in the data: a category list read from one centre's
    rows would tell every other party which values that centre holds.
    ``option`` is the request parameter that lists them, a mapping from column
    to list where ``per_column`` (``strata_categories``).
    """

    def suggest(categories: Sequence[str]) -> Param:
        listed = list(categories)
        return Param(option, {column: listed} if per_column else listed)

    categories = requested or schema.columns[column].categories
    if not categories:
        raise QueryError(
            f"column {column!r} has no agreed categories",
            rule=rule,
            node=node,
            fix=f"pass {suggest(Hole.items())} for {column!r}, or declare them in the "
            "node's schema",
            column=column,
        )
    if len(set(categories)) != len(categories):
        # A repeated label puts a row in two groups: one patient would move several
        # cells, past the sensitivity DP noise is scaled to and the cell rules assume.
        raise QueryError(
            f"the categories of {column!r} list a label more than once",
            rule="query.categories_repeat",
            node=node,
            fix=f"list each category once: {suggest(list(dict.fromkeys(categories)))}",
            column=column,
        )
    check_declared(
        column,
        categories,
        schema,
        node,
        fix=lambda declared: f"use the declared ones: {suggest(declared)}",
    )
    return tuple(categories)


def check_declared(
    column: str,
    requested: Sequence[str],
    schema: DatasetSchema,
    node: str,
    *,
    fix: Callable[[tuple[str, ...]], str],
) -> None:
    """Refuse categories (or factor levels) the schema does not declare for the column.

    The declared ones are the column's agreed vocabulary; another label (``0``
    for a no/yes column) is a mistake that would come back as an empty group,
    read as an answer. The schema is public, so the refusal, which lists it,
    says nothing of the rows. ``fix`` writes the remedy from the declared list.
    """
    declared = schema.columns[column].categories
    if declared is None:
        return
    unknown = [c for c in requested if c not in declared]
    if unknown:
        raise QueryError(
            f"{', '.join(map(repr, unknown))} not among the categories the schema declares "
            f"for {column!r}: {', '.join(map(repr, declared))}",
            rule="schema.unknown_category",
            node=node,
            fix=fix(declared),
            column=column,
            categories=unknown,
        )


def no_row_in_categories(columns: str, outside: int, *, options: Sequence[str]) -> QueryError:
    """The refusal of a result in which every row fell outside the agreed categories.

    Raised by a server function from what the nodes released: their total of
    rows outside the categories (a cell the cell rule has passed at each node)
    and nothing inside them. It adds nothing to what was released.
    """
    where = " or ".join(str(Param(option, Hole.items())) for option in options)
    return QueryError(
        f"every row at every node falls outside the agreed categories of {columns} "
        f"({outside} rows), so every group is empty",
        rule="query.categories_unmatched",
        fix=f"list in {where} values the column takes, written as the nodes write them "
        "(integers without a decimal point, '1' not '1.0'; booleans as '0' and '1'; text as "
        "it is), or ask the node operators to declare the column's categories in the schema",
    )


__all__ = [
    "agreed_categories",
    "category_labels",
    "check_declared",
    "no_row_in_categories",
]
