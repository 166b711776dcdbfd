"""Covariance and correlation matrices of numeric columns, pooled exactly.

Missing values: complete cases over the listed columns. A row counts only
when every listed column is present (after ``where``), which is what
``np.cov`` / ``np.corrcoef`` compute on the pooled frame once its incomplete
rows are dropped; each node reports how many rows it dropped.

Each node releases three aggregates of its complete rows: their number n, the
mean vector and the co-moment matrix C = sum (x - mean)(x - mean)^T. Pairwise
deletion is deliberately not offered: it makes each entry rest on a different
set of patients, and the matrix need not be positive semi-definite.

The server merges nodes with the matrix form of Chan et al.'s parallel update
(``combine_comoments``), exact in exact arithmetic and stable in floating
point, so covariance C / (n - 1) and correlation C_ij / sqrt(C_ii C_jj)
equal the pooled ones to rounding.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pandas as pd
from flwr.serverapp import Grid
from pydantic import BaseModel, Field, field_validator
from rich.console import Group
from rich.markup import escape
from rich.table import Table

from oncofed.kernel.errors import QueryError
from oncofed.privacy.release import Count, Moments, Release
from oncofed.tasks.base import (
    ColumnRole,
    LocalDataset,
    TaskParams,
    TaskType,
    released,
    selected_rows,
)
from oncofed.tasks.broadcast import broadcast
from oncofed.tasks.messaging import wait_for_nodes
from oncofed.tasks.tables import footer, number

FloatArray = npt.NDArray[np.float64]
Comoments = tuple[float, FloatArray, FloatArray]
"""(n, mean vector, co-moment matrix) of one set of complete rows."""


class CorrelationParams(TaskParams):
    columns: tuple[str, ...] = Field(
        min_length=2, description="Numeric columns; complete cases over all of them are used."
    )

    @field_validator("columns")
    @classmethod
    def _unique(cls, columns: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(columns)) != len(columns):
            raise ValueError("columns must not repeat")
        return columns

    def required_columns(self) -> dict[str, ColumnRole]:
        roles = super().required_columns()
        roles.update(dict.fromkeys(self.columns, "numeric"))
        return roles


class ComomentsRelease(Release):
    """A node's complete rows: their number, mean vector and co-moment matrix, and rows dropped."""

    n: Count
    mean: Moments
    comoment: Moments
    rows_dropped: Count
    """Rows with a missing value in a listed column."""


class CorrelationResult(BaseModel):
    dataset: str
    columns: list[str]
    n: int = Field(description="Complete rows used, over all nodes.")
    rows_dropped: int = Field(description="Rows with a missing value in a listed column.")
    rows_dropped_by_node: dict[str, int]
    means: list[float]
    covariance_matrix: list[list[float]]
    correlation_matrix: list[list[float | None]] = Field(
        description="None where a column has zero variance (correlation undefined)."
    )
    nodes: list[str]

    @property
    def covariance(self) -> pd.DataFrame:
        """Sample covariance (n - 1 denominator), as ``np.cov``."""
        return pd.DataFrame(self.covariance_matrix, index=self.columns, columns=self.columns)

    @property
    def correlation(self) -> pd.DataFrame:
        """Pearson correlation, as ``np.corrcoef``; NaN where undefined."""
        values = [[np.nan if v is None else v for v in row] for row in self.correlation_matrix]
        return pd.DataFrame(values, index=self.columns, columns=self.columns, dtype=float)

    def to_frame(self) -> pd.DataFrame:
        """One row per pair of columns (x, y): covariance and correlation."""
        cov, corr = self.covariance, self.correlation
        rows = [
            {"x": x, "y": y, "covariance": cov.loc[x, y], "correlation": corr.loc[x, y]}
            for i, x in enumerate(self.columns)
            for y in self.columns[i:]
        ]
        return pd.DataFrame(rows).set_index(["x", "y"])


# ---- node side ----------------------------------------------------------


def correlation_node(params: CorrelationParams, local: LocalDataset) -> ComomentsRelease:
    frame = selected_rows(params, local)
    values = frame[list(params.columns)].to_numpy(dtype=float, na_value=np.nan)
    complete = ~np.isnan(values).any(axis=1)
    rows = values[complete]
    mean = rows.mean(axis=0) if len(rows) else np.zeros(len(params.columns))
    centred = rows - mean
    return ComomentsRelease(
        n=len(rows),
        mean=mean,
        comoment=centred.T @ centred,
        rows_dropped=int((~complete).sum()),
    )


# ---- server side --------------------------------------------------------


def combine_comoments(a: Comoments, b: Comoments) -> Comoments:
    """Chan et al.'s pairwise update in matrix form: exact, and stable in floating point.

    C = C_a + C_b + (n_a n_b / n) d d^T with d = mean_b - mean_a. Its diagonal
    is describe's ``combine_moments`` (M2 per column); the off-diagonal terms
    are what makes covariances combine, which per-column moments cannot.
    """
    n_a, mean_a, c_a = a
    n_b, mean_b, c_b = b
    n = n_a + n_b
    if n == 0:
        return a
    delta = mean_b - mean_a
    mean = mean_a + delta * (n_b / n)
    comoment = c_a + c_b + np.outer(delta, delta) * (n_a * n_b / n)
    return n, mean, comoment


def covariance_and_correlation(total: Comoments) -> tuple[FloatArray, FloatArray]:
    """Sample covariance and Pearson correlation (NaN for zero-variance columns)."""
    n, _, comoment = total
    covariance = comoment / (n - 1)
    scale = np.sqrt(np.diag(covariance))
    with np.errstate(divide="ignore", invalid="ignore"):
        # np.corrcoef's arithmetic, so its diagonal rounds to 1 here too.
        correlation = covariance / scale[:, None] / scale[None, :]
    correlation[(scale == 0)[:, None] | (scale == 0)[None, :]] = np.nan
    # As np.corrcoef does, keep rounding from pushing |r| past 1.
    return covariance, np.clip(correlation, -1.0, 1.0)


def correlation_serve(grid: Grid, params: CorrelationParams) -> CorrelationResult:
    nodes = wait_for_nodes(grid, params)
    replies = broadcast(grid, "correlation", params, nodes)
    total: Comoments | None = None
    dropped: dict[str, int] = {}
    for node, part in released(replies, ComomentsRelease):
        moments = (float(part.n), part.mean, part.comoment)
        total = moments if total is None else combine_comoments(total, moments)
        dropped[node] = part.rows_dropped
    if total is None:
        raise AssertionError("broadcast returns at least one reply")
    n = int(total[0])
    if n < 2:
        raise QueryError(
            f"only {n} complete row(s) over all nodes for {', '.join(params.columns)}",
            rule="correlation.too_few_rows",
            fix="widen the where filter, or leave out the columns with most missing values",
        )
    covariance, correlation = covariance_and_correlation(total)
    return CorrelationResult(
        dataset=params.dataset,
        columns=list(params.columns),
        n=n,
        rows_dropped=sum(dropped.values()),
        rows_dropped_by_node=dict(sorted(dropped.items())),
        means=total[1].tolist(),
        covariance_matrix=covariance.tolist(),
        correlation_matrix=[
            [None if np.isnan(v) else float(v) for v in row] for row in correlation
        ],
        nodes=sorted(dropped),
    )


# ---- terminal ------------------------------------------------------------


def correlation_tables(result: CorrelationResult) -> Group:
    """Covariance and correlation matrices, then who contributed."""
    tables = []
    for name, frame in (("covariance", result.covariance), ("correlation", result.correlation)):
        table = Table(title=f"{name} {result.dataset}", title_justify="left")
        table.add_column("")
        for column in frame.columns:
            table.add_column(escape(str(column)), justify="right")
        for label, row in frame.iterrows():
            table.add_row(escape(str(label)), *(number(float(v)) for v in row))
        tables.append(table)
    return Group(
        *tables,
        footer(
            f"{result.n} complete rows; {result.rows_dropped} dropped for a missing value",
            result.nodes,
        ),
    )


TASK: TaskType[CorrelationParams, CorrelationResult] = TaskType(
    name="correlation",
    params=CorrelationParams,
    result=CorrelationResult,
    serve=correlation_serve,
    node_handlers={"correlation": correlation_node},
    releases=(ComomentsRelease,),
    summary="covariance and correlation matrices of numeric columns (complete cases)",
    arguments=("columns",),
    table=correlation_tables,
)
