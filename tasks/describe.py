"""Descriptive statistics: count, missing, mean, variance and standard deviation.

Each node releases, per agreed group and column, the number of non-missing
values, their mean and their sum of squared deviations (M2), plus the number
of missing values. Minimum and maximum are never released: they are single
patients' values. The server combines nodes with Chan et al.'s parallel
update, which is exact and numerically stable, so the federated result equals
the pooled one to floating-point precision.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt
import pandas as pd
from flwr.app import RecordDict
from flwr.serverapp import Grid
from pydantic import BaseModel, Field, field_validator, model_validator
from rich.table import Table

from oncofed.kernel.errors import Hole, Param, QueryError
from oncofed.privacy.disclosure import check_cells, check_dominance, largest_terms
from oncofed.privacy.dp import DPRequest, release_for
from oncofed.privacy.release import BoundedSums, Count, Counts, Moments, Release
from oncofed.tasks.base import (
    ColumnRole,
    DPReport,
    LocalDataset,
    PublicBounds,
    TaskParams,
    TaskType,
    dp_report,
    public_bounds,
    released,
    selected_rows,
)
from oncofed.tasks.broadcast import broadcast
from oncofed.tasks.encoding import agreed_categories, category_labels, no_row_in_categories
from oncofed.tasks.messaging import wait_for_nodes
from oncofed.tasks.tables import number

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
ALL = "(all)"
STATISTICS = ("count", "missing", "mean", "variance", "std")
"""What describe reports per group and column, in the order tables show them."""


class DescribeParams(TaskParams):
    DP = True
    SECURE_SUM = True
    columns: tuple[str, ...] = Field(min_length=1, description="Numeric columns to describe.")
    by: str | None = Field(default=None, description="Categorical column to group by.")
    categories: tuple[str, ...] | None = Field(
        default=None,
        description="Agreed group labels; defaults to the categories the schema declares.",
    )

    bounds: PublicBounds = Field(
        default_factory=dict,
        description=(
            "Public (lo, hi) per column for a DP release, where the node schema declares none; "
            "values are clamped to them. Never derive them from the data."
        ),
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
        if self.categories is not None and len(set(self.categories)) != len(self.categories):
            raise ValueError("categories must not repeat")
        return self

    def secure_sum_supported(self) -> bool:
        # The DP release is sums; the exact one is means and M2, which do not add.
        return self.dp is not None

    def declared_levels(self) -> dict[str, tuple[str, ...]]:
        if self.by is None or self.categories is None:
            return {}
        return {self.by: self.categories}

    def required_columns(self) -> dict[str, ColumnRole]:
        roles = super().required_columns()
        roles.update(dict.fromkeys(self.columns, "numeric"))
        if self.by is not None:
            roles[self.by] = "group"
        return roles


class MomentsRelease(Release):
    """An exact reply: per agreed group and column, present and missing values, mean and M2."""

    groups: tuple[str, ...]
    count: Counts
    missing: Counts
    mean: Moments
    m2: Moments
    rows_outside_categories: Count
    rows_group_missing: Count


class NoisySumsRelease(Release):
    """A DP reply: per agreed group and column, noisy count, sum and sum of squares.

    With ``by``, also the noisy rows outside the agreed categories and without
    a group (zero without ``by``).
    """

    groups: tuple[str, ...]
    count: Counts
    sums: BoundedSums
    sums_of_squares: BoundedSums
    rows_outside_categories: Count
    rows_group_missing: Count


class DescribeRow(BaseModel):
    group: str
    column: str
    count: int
    missing: int | None = Field(description="None under DP, where it is not released.")
    sum: float
    mean: float | None
    variance: float | None
    std: float | None


class DescribeResult(BaseModel):
    dataset: str
    by: str | None
    rows: list[DescribeRow]
    nodes: list[str]
    rows_outside_categories: int | None = Field(
        default=0, description="Rows whose by value is not an agreed category (noisy under dp)."
    )
    rows_group_missing: int | None = Field(
        default=0, description="Rows without a by value (noisy under dp)."
    )
    privacy: DPReport | None = Field(
        default=None, description="The DP mechanism, loss and noise, when dp= was asked for."
    )

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


def group_masks(
    params: DescribeParams, local: LocalDataset, frame: pd.DataFrame
) -> tuple[tuple[str, ...], list[BoolArray], int, int]:
    """Agreed groups, each group's rows, and the rows outside them or with no group."""
    groups = agreed_groups(params, local)
    if params.by is None:
        return groups, [np.ones(len(frame), dtype=bool)], 0, 0
    labels = category_labels(frame[params.by], local.schema.columns[params.by])
    masks = [(labels == g).to_numpy(dtype=bool) for g in groups]
    group_missing = int(labels.isna().sum())
    # Counted directly, not as what the groups leave over: never negative, whatever groups.
    outside = int((labels.notna() & ~labels.isin(groups)).sum())
    return groups, masks, outside, group_missing


def describe_node_dp(
    params: DescribeParams, local: LocalDataset, request: DPRequest
) -> NoisySumsRelease:
    """Noisy count, sum and sum of squares per group and column; the rest is not released.

    The budget is split evenly over the three statistics of every column
    (sequential composition); groups hold different people, so each
    statistic's groups share one part (parallel composition).
    """
    frame = selected_rows(params, local)
    groups, masks, outside, group_missing = group_masks(params, local, frame)
    release = release_for(request)
    part = release.budget / (3 * len(params.columns))
    shape = (len(groups), len(params.columns))
    count, total, squares = np.zeros(shape, np.int64), np.zeros(shape), np.zeros(shape)
    # With by=, the rows outside the categories and those without a group are two more cells
    # of the first column's counts: each person is in one cell, so they cost nothing more,
    # and a researcher sees whether the categories matched the rows at all.
    sides = [outside, group_missing] if params.by is not None else []
    noisy_sides = np.zeros(2, np.int64)
    for j, column in enumerate(params.columns):
        lo, hi = public_bounds(params, local, column)
        values = np.clip(frame[column].to_numpy(dtype=float, na_value=np.nan), lo, hi)
        chunks = [values[mask] for mask in masks]
        present = [int(np.count_nonzero(~np.isnan(chunk))) for chunk in chunks]
        cells = release.counts(f"count.{column}", present + (sides if j == 0 else []), part)
        count[:, j] = cells[: len(groups)]
        if j == 0 and sides:
            noisy_sides = cells[len(groups) :]
        total[:, j] = release.bounded_sums(f"sum.{column}", chunks, (lo, hi), part)
        square_lo = 0.0 if lo <= 0 <= hi else min(lo * lo, hi * hi)
        total_sq = release.bounded_sums(
            f"sum_of_squares.{column}",
            [c * c for c in chunks],
            (square_lo, max(lo * lo, hi * hi)),
            part,
        )
        squares[:, j] = total_sq
    return NoisySumsRelease(
        groups=groups,
        count=count,
        sums=total,
        sums_of_squares=squares,
        rows_outside_categories=int(noisy_sides[0]),
        rows_group_missing=int(noisy_sides[1]),
        privacy=dict(release.record()),
    )


def describe_node(params: DescribeParams, local: LocalDataset) -> MomentsRelease | NoisySumsRelease:
    if params.dp is not None:
        return describe_node_dp(params, local, params.dp)
    frame = selected_rows(params, local)
    groups, masks, outside, group_missing = group_masks(params, local, frame)
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
    if params.by is not None:
        # The rows outside the categories, and those without a group, are groups too: a
        # category list that leaves out one small level would give its count.
        check_cells(
            np.append(count.ravel(), [outside, group_missing]),
            local.policy,
            local.node_name,
            what="groups (or the rows outside the categories, or without a group)",
            fix=f"merge small categories of {params.by!r}, list every category, or widen "
            f"the {Param('where')} filter",
        )
    for j, column in enumerate(params.columns):
        values = frame[column].to_numpy(dtype=float, na_value=np.nan)
        for i, mask in enumerate(masks):
            present = values[mask][~np.isnan(values[mask])]
            # The mean is a sum of the values, M2 one of squared deviations.
            check_dominance(
                largest_terms(np.column_stack([present, (present - mean[i, j]) ** 2])),
                local.policy,
                local.node_name,
                what=f"{column!r} (its mean or spread)",
                fix=f"leave {column!r} out, or ask with {Param('dp', {'epsilon': 0.5})}",
            )
    return MomentsRelease(
        groups=groups,
        count=count,
        missing=missing,
        mean=mean,
        m2=m2,
        rows_outside_categories=outside,
        rows_group_missing=group_missing,
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
    if params.dp is not None:
        return _describe_dp(params, replies)
    parts = released(replies, MomentsRelease)
    groups = _agreed_groups_of(params, parts)
    total: tuple[FloatArray, FloatArray, FloatArray] | None = None
    for _, part in parts:
        moments = (part.count.astype(float), part.mean, part.m2)
        total = moments if total is None else combine_moments(total, moments)
    if total is None:
        raise AssertionError("broadcast returns at least one reply")
    missing = np.sum([p.missing for _, p in parts], axis=0)
    outside = sum(p.rows_outside_categories for _, p in parts)
    # Every row in a group is in the first column's count or missing count.
    if params.by is not None and outside and not (total[0][:, 0].sum() + missing[:, 0].sum()):
        raise no_row_in_categories(repr(params.by), outside, options=("categories",))
    return DescribeResult(
        dataset=params.dataset,
        by=params.by,
        rows=_rows(groups, params.columns, total, missing),
        nodes=[node for node, _ in parts],
        rows_outside_categories=outside,
        rows_group_missing=sum(p.rows_group_missing for _, p in parts),
    )


def _agreed_groups_of(
    params: DescribeParams, parts: Sequence[tuple[str, MomentsRelease | NoisySumsRelease]]
) -> tuple[str, ...]:
    """The groups every node used; nodes that disagree fail the task."""
    groups = parts[0][1].groups
    for node, part in parts:
        if part.groups != groups:
            raise QueryError(
                f"nodes disagree on the categories of {params.by!r}: "
                f"{list(groups)} versus {list(part.groups)}",
                rule="describe.categories_disagree",
                node=node,
                fix=f"pass {Param('categories', Hole.items())} explicitly so every node "
                "groups the same way",
            )
    return groups


def _describe_dp(params: DescribeParams, replies: Mapping[int, RecordDict]) -> DescribeResult:
    """Add the nodes' noisy sums; mean and variance follow from them (post-processing)."""
    parts = released(replies, NoisySumsRelease)
    groups = _agreed_groups_of(params, parts)
    counts = np.sum([p.count for _, p in parts], axis=0)
    sums = np.sum([p.sums for _, p in parts], axis=0)
    squares = np.sum([p.sums_of_squares for _, p in parts], axis=0)
    rows = []
    for i, group in enumerate(groups):
        for j, column in enumerate(params.columns):
            n, total = int(counts[i, j]), float(sums[i, j])
            mean = total / n if n > 0 else None
            variance = (
                max(0.0, (float(squares[i, j]) - total * total / n) / (n - 1)) if n > 1 else None
            )
            rows.append(
                DescribeRow(
                    group=group,
                    column=column,
                    count=n,
                    missing=None,
                    sum=total,
                    mean=mean,
                    variance=variance,
                    std=float(np.sqrt(variance)) if variance is not None else None,
                )
            )
    return DescribeResult(
        dataset=params.dataset,
        by=params.by,
        rows=rows,
        nodes=[node for node, _ in parts],
        rows_outside_categories=sum(p.rows_outside_categories for _, p in parts),
        rows_group_missing=sum(p.rows_group_missing for _, p in parts),
        privacy=dp_report(replies),
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


# ---- terminal ------------------------------------------------------------


def describe_table(result: DescribeResult, title: str = "") -> Table:
    table = Table(title=title or f"describe {result.dataset}", title_justify="left")
    if result.by:
        table.add_column(result.by)
    table.add_column("column")
    for stat in STATISTICS:
        table.add_column(stat, justify="right")
    for row in result.rows:
        cells = [] if not result.by else [row.group]
        cells.append(row.column)
        cells.extend(number(getattr(row, stat)) for stat in STATISTICS)
        table.add_row(*cells)
    caption = [f"{len(result.nodes)} nodes: {', '.join(result.nodes)}"]
    if result.by and result.rows_outside_categories:
        # Never dropped silently: categories that miss the rows show here, not as empty groups.
        noisy = " (noisy)" if result.privacy is not None else ""
        caption.append(
            f"rows outside the categories of {result.by}: {result.rows_outside_categories}{noisy}"
        )
    table.caption = "\n".join(caption)
    return table


TASK: TaskType[DescribeParams, DescribeResult] = TaskType(
    name="describe",
    params=DescribeParams,
    result=DescribeResult,
    serve=describe_serve,
    node_handlers={"describe": describe_node},
    releases=(MomentsRelease, NoisySumsRelease),
    summary="count, missing, mean, variance and standard deviation of numeric columns",
    arguments=("columns",),
    table=describe_table,
)
