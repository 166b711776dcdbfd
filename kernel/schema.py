"""Dataset schemas: column names and types, shared by nodes, tasks and operators.

A schema is what a node declares about its data; it is the only description of
local data that ever leaves a node (to the operator API), and the reference
every request is validated against.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
"""Node and dataset names: short, printable, safe in file names and logs."""

ColumnType = Literal["float", "integer", "boolean", "category", "string"]

NUMERIC_TYPES: frozenset[str] = frozenset({"float", "integer", "boolean"})
# Types whose values can define groups once the request or schema agrees categories.
GROUPABLE_TYPES: frozenset[str] = frozenset({"category", "integer", "boolean", "string"})


class ColumnSpec(BaseModel):
    """One declared column. In TOML either ``age = "float"`` or a table."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: ColumnType
    categories: tuple[str, ...] | None = Field(
        default=None,
        description="Agreed category labels; groups are only formed on these.",
    )
    bounds: tuple[float, float] | None = Field(
        default=None,
        description=(
            "Public range (lo, hi) that differentially private sums clamp values to; "
            "declared by the operator because bounds read from the data would leak."
        ),
    )
    description: str = ""

    @model_validator(mode="after")
    def _bounds_ordered(self) -> ColumnSpec:
        if self.bounds is not None:
            lo, hi = self.bounds
            if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
                raise ValueError(f"bounds must be finite with lo < hi, got {self.bounds}")
        return self

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"type": value}
        return value

    @property
    def numeric(self) -> bool:
        return self.type in NUMERIC_TYPES

    @property
    def groupable(self) -> bool:
        """Can define groups: a discrete type, or any column with declared categories.

        Integer codes with missing values often arrive as floats (ECOG 0.0-3.0);
        declaring their categories makes them usable as groups.
        """
        return self.type in GROUPABLE_TYPES or self.categories is not None


class DatasetSchema(BaseModel):
    """The declared columns of one dataset."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    columns: dict[str, ColumnSpec]

    def describe_types(self) -> str:
        """Short ``name:type`` list used in error messages."""
        return ", ".join(f"{name}:{spec.type}" for name, spec in self.columns.items())


def infer_schema(frame: pd.DataFrame) -> DatasetSchema:
    """A schema for a DataFrame: numbers stay numbers, text becomes agreed categories."""
    columns: dict[str, ColumnSpec] = {}
    for name, series in frame.items():
        if pd.api.types.is_bool_dtype(series):
            columns[str(name)] = ColumnSpec(type="boolean")
        elif pd.api.types.is_integer_dtype(series):
            columns[str(name)] = ColumnSpec(type="integer")
        elif pd.api.types.is_float_dtype(series):
            columns[str(name)] = ColumnSpec(type="float")
        else:
            labels = sorted({str(v) for v in series.dropna().unique()})
            columns[str(name)] = ColumnSpec(type="category", categories=tuple(labels))
    return DatasetSchema(columns=columns)


__all__ = [
    "GROUPABLE_TYPES",
    "NAME_PATTERN",
    "NUMERIC_TYPES",
    "ColumnSpec",
    "ColumnType",
    "DatasetSchema",
    "infer_schema",
]
