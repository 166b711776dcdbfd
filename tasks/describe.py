"""Descriptive statistics: count, missing, mean, variance and standard deviation.

Each node releases, per agreed group and column, the number of non-missing
values, their mean and their sum of squared deviations (M2), plus the number
of missing values. Minimum and maximum are never released: they are single
patients' values. The server combines nodes with Chan et al.'s parallel
update, which is exact and numerically stable, so the federated result equals
the pooled one to floating-point precision.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import pandas as pd
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict
from flwr.serverapp import Grid
from pydantic import BaseModel, Field, field_validator, model_validator

from oncofed.errors import QueryError
from oncofed.tasks.base import (
    ColumnRole,
    LocalDataset,
    TaskParams,
    TaskType,
    broadcast,
    selected_rows,
    wait_for_nodes,
)
from oncofed.tasks.encoding import agreed_categories, category_labels

FloatArray = npt.NDArray[np.float64]
ALL = "(all)"


class DescribeParams(TaskParams):
    columns: tuple[str, ...] = Field(min_length=1, description="Numeric columns to describe.")
    by: str | None = Field(default=None, description="Categorical column to group by.")
    categories: tuple[str, ...] | None = Field(
        default=None,
        description="Agreed group labels; defaults to the categories the schema declares.",
    )

    @field_validator("columns")
    @classmethod
    def _unique(cls, columns: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(columns)) != len(columns):
            raise ValueError("columns must not repeat")
        return columns

    @model_validator(mode="after")
    def _categories_need_by(self) -> DescribeParams:
        if self.categories is not None and self.by is None:
            raise ValueError("categories only make sense with by=")
        return self

    def required_columns(self) -> dict[str, ColumnRole]:
        roles = super().required_columns()
        roles.update(dict.fromkeys(self.columns, "numeric"))
        if self.by is not None:
            roles[self.by] = "group"
        return roles


class DescribeRow(BaseModel):
    group: str
    column: str
    count: int
    missing: int
    sum: float
    mean: float | None
    variance: float | None
    std: float | None


class DescribeResult(BaseModel):
    dataset: str
    by: str | None
    rows: list[DescribeRow]
    nodes: list[str]
    rows_outside_categories: int = 0
    rows_group_missing: int = 0

    def to_frame(self) -> pd.DataFrame:
        """One row per (group, column); grouped results are indexed by both."""
        frame = pd.DataFrame([row.model_dump() for row in self.rows])
        if self.by is None:
            return frame.drop(columns="group").set_index("column")
        return frame.set_index(["group", "column"])


# ---- node side ----------------------------------------------------------


def agreed_groups(params: DescribeParams, local: LocalDataset) -> tuple[str, ...]:
    if params.by is None:
        return (ALL,)
    return agreed_categories(
        params.by,
        params.categories,
        local.schema,
        local.node_name,
        option="categories",
        rule="describe.categories_required",
    )


def describe_node(params: DescribeParams, local: LocalDataset) -> RecordDict:
    frame = selected_rows(params, local)
    groups = agreed_groups(params, local)
    if params.by is None:
        masks = [np.ones(len(frame), dtype=bool)]
        outside = group_missing = 0
    else:
        labels = category_labels(frame[params.by], local.schema.columns[params.by])
        masks = [(labels == g).to_numpy(dtype=bool) for g in groups]
        group_missing = int(labels.isna().sum())
        outside = int(len(frame) - group_missing - sum(int(m.sum()) for m in masks))
    shape = (len(groups), len(params.columns))
    count, missing = np.zeros(shape, np.int64), np.zeros(shape, np.int64)
    mean, m2 = np.zeros(shape), np.zeros(shape)
    for j, column in enumerate(params.columns):
        values = frame[column].to_numpy(dtype=float, na_value=np.nan)
        for i, mask in enumerate(masks):
            chunk = values[mask]
            present = chunk[~np.isnan(chunk)]
            count[i, j], missing[i, j] = present.size, chunk.size - present.size
            if present.size:
                mean[i, j] = present.mean()
                m2[i, j] = float(np.sum((present - mean[i, j]) ** 2))
    return RecordDict(
        {
            "moments": ArrayRecord(
                {
                    "count": Array(count),
                    "missing": Array(missing),
                    "mean": Array(mean),
                    "m2": Array(m2),
                }
            ),
            "meta": ConfigRecord(
                {
                    "node": local.node_name,
                    "groups": list(groups),
                    "rows_outside_categories": outside,
                    "rows_group_missing": group_missing,
                }
            ),
        }
    )


# ---- server side --------------------------------------------------------


def combine_moments(
    a: tuple[FloatArray, FloatArray, FloatArray],
    b: tuple[FloatArray, FloatArray, FloatArray],
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Chan et al. (1979) pairwise update of (count, mean, M2); exact and stable."""
    n_a, mean_a, m2_a = a
    n_b, mean_b, m2_b = b
    n = n_a + n_b
    safe_n = np.where(n > 0, n, 1.0)
    delta = mean_b - mean_a
    mean = np.where(n > 0, mean_a + delta * (n_b / safe_n), 0.0)
    m2 = m2_a + m2_b + delta**2 * (n_a * n_b / safe_n)
    return n, mean, m2


def describe_serve(grid: Grid, params: DescribeParams) -> DescribeResult:
    nodes = wait_for_nodes(grid, params)
    replies = broadcast(grid, "describe", params, nodes)
    total: tuple[FloatArray, FloatArray, FloatArray] | None = None
    missing: npt.NDArray[np.int64] | None = None
    groups: tuple[str, ...] | None = None
    names: list[str] = []
    outside = group_missing = 0
    for node_id in sorted(replies):
        arrays = replies[node_id].array_records["moments"]
        meta = replies[node_id].config_records["meta"]
        node_groups = tuple(str(g) for g in meta["groups"])  # type: ignore[union-attr]
        if groups is not None and node_groups != groups:
            raise QueryError(
                f"nodes disagree on the categories of {params.by!r}: "
                f"{list(groups)} versus {list(node_groups)}",
                rule="describe.categories_disagree",
                node=str(meta["node"]),
                fix="pass categories=[...] explicitly so every node groups the same way",
            )
        groups = node_groups
        part = (arrays["count"].numpy().astype(float), arrays["mean"].numpy(), arrays["m2"].numpy())
        total = part if total is None else combine_moments(total, part)
        node_missing = arrays["missing"].numpy().astype(np.int64)
        missing = node_missing if missing is None else missing + node_missing
        names.append(str(meta["node"]))
        outside += int(str(meta["rows_outside_categories"]))
        group_missing += int(str(meta["rows_group_missing"]))
    if total is None or missing is None or groups is None:
        raise AssertionError("broadcast returns at least one reply")
    return DescribeResult(
        dataset=params.dataset,
        by=params.by,
        rows=_rows(groups, params.columns, total, missing),
        nodes=names,
        rows_outside_categories=outside,
        rows_group_missing=group_missing,
    )


def _rows(
    groups: Sequence[str],
    columns: Sequence[str],
    moments: tuple[FloatArray, FloatArray, FloatArray],
    missing: npt.NDArray[np.int64],
) -> list[DescribeRow]:
    count, mean, m2 = moments
    rows = []
    for i, group in enumerate(groups):
        for j, column in enumerate(columns):
            n = int(count[i, j])
            variance = float(m2[i, j] / (n - 1)) if n > 1 else None
            rows.append(
                DescribeRow(
                    group=group,
                    column=column,
                    count=n,
                    missing=int(missing[i, j]),
                    sum=float(mean[i, j] * n),
                    mean=float(mean[i, j]) if n else None,
                    variance=variance,
                    std=float(np.sqrt(variance)) if variance is not None else None,
                )
            )
    return rows


TASK: TaskType[DescribeParams, DescribeResult] = TaskType(
    name="describe",
    params=DescribeParams,
    result=DescribeResult,
    serve=describe_serve,
    node_handlers={"describe": describe_node},
    summary="count, missing, mean, variance and standard deviation of numeric columns",
)
