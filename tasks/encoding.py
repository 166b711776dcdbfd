"""How column values become the labels that agreed categories and levels are written in."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from oncofed.kernel.errors import QueryError
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
) -> tuple[str, ...]:
    """The categories a request agrees for a column: its own list, else the schema's.

    Never the values found in the data: a category list read from one centre's
    rows would tell every other party which values that centre holds.
    """
    categories = requested or schema.columns[column].categories
    if not categories:
        raise QueryError(
            f"column {column!r} has no agreed categories",
            rule=rule,
            node=node,
            fix=f"pass {option}=[...] for {column!r}, or declare them in the node's schema",
            column=column,
        )
    return tuple(categories)


__all__ = ["agreed_categories", "category_labels"]
