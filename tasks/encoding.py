"""How column values become the labels that agreed categories and levels are written in."""

from __future__ import annotations

import pandas as pd

from oncofed.schema import ColumnSpec


def category_labels(values: pd.Series, spec: ColumnSpec) -> pd.Series:
    """Values as text labels: integers without '.0', text as it is, missing stays missing."""
    present = values.dropna()
    if spec.type in ("integer", "boolean", "float"):
        numbers = present.astype(float)
        labels = [str(int(v)) if float(v).is_integer() else repr(float(v)) for v in numbers]
    else:
        labels = [str(v) for v in present]
    return pd.Series(labels, index=present.index, dtype="object").reindex(values.index)


__all__ = ["category_labels"]
