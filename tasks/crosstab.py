"""Contingency tables on agreed categories, with the chi-square test of independence.

Categories are agreed before any row is read: the request lists them
(``row_categories`` / ``col_categories``) or the node's schema declares them,
as ``describe`` does for its groups. Each node releases only its table of
counts on those categories, plus how many rows it left out because a value was
missing or outside the agreed categories (reported, never hidden).

The server adds the tables (integer sums: exact) and runs
``scipy.stats.chi2_contingency`` on the pooled table with scipy's defaults,
so statistic, p-value, degrees of freedom and expected counts are scipy's on
the pooled data. That includes scipy's default Yates continuity correction,
which scipy applies only when the test has one degree of freedom (2x2
tables); pass ``correction=False`` for the uncorrected statistic.

A category with no rows at any node gives an all-zero row or column; the
expected counts there are zero and the statistic is undefined, so the task
refuses (``crosstab.empty_category``) and names the column and category.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pandas as pd
from flwr.serverapp import Grid
from pydantic import BaseModel, Field, field_validator, model_validator
from rich.console import Group
from rich.markup import escape
from rich.table import Table
from scipy.stats import chi2_contingency

from oncofed.kernel.errors import Hole, Param, QueryError
from oncofed.kernel.schema import DatasetSchema
from oncofed.privacy.disclosure import check_cells
from oncofed.privacy.dp import release_for
from oncofed.privacy.release import Count, Counts, Release
from oncofed.tasks.base import (
    ColumnRole,
    DPReport,
    LocalDataset,
    TaskParams,
    TaskType,
    dp_report,
    released,
    selected_rows,
)
from oncofed.tasks.broadcast import broadcast
from oncofed.tasks.encoding import agreed_categories, category_labels, no_row_in_categories
from oncofed.tasks.messaging import wait_for_nodes
from oncofed.tasks.tables import footer

IntArray = npt.NDArray[np.int64]
TOTAL = "All"
"""Label of the margins, as ``pd.crosstab(margins=True)`` writes them."""


class CrosstabParams(TaskParams):
    DP = True
    SECURE_SUM = True
    row: str = Field(min_length=1, description="Column whose categories make the table's rows.")
    col: str = Field(min_length=1, description="Column whose categories make the columns.")
    row_categories: tuple[str, ...] | None = Field(
        default=None, description="Agreed row labels; defaults to the schema's categories."
    )
    col_categories: tuple[str, ...] | None = Field(
        default=None, description="Agreed column labels; defaults to the schema's categories."
    )
    correction: bool = Field(
        default=True,
        description="Yates' continuity correction when dof == 1 (scipy's default).",
    )

    @field_validator("row_categories", "col_categories")
    @classmethod
    def _distinct(cls, categories: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if categories is not None and len(set(categories)) != len(categories):
            raise ValueError("categories must not repeat")
        return categories

    @model_validator(mode="after")
    def _two_columns(self) -> CrosstabParams:
        if self.row == self.col:
            raise ValueError("row and col must be different columns")
        return self

    def required_columns(self) -> dict[str, ColumnRole]:
        roles = super().required_columns()
        roles.update({self.row: "group", self.col: "group"})
        return roles

    def declared_levels(self) -> dict[str, tuple[str, ...]]:
        return {
            column: categories for column, categories, _ in self._axes() if categories is not None
        }

    def check_schema(self, schema: DatasetSchema, node: str) -> None:
        super().check_schema(schema, node)
        for (column, _, option), categories in zip(
            self._axes(), self.categories(schema, node), strict=True
        ):
            if len(categories) < 2:
                raise QueryError(
                    f"column {column!r} has only the category {categories[0]!r}; "
                    "a table needs two or more",
                    rule="crosstab.categories",
                    node=node,
                    fix=f"pass {Param(option, Hole.items())} with at least two labels",
                    column=column,
                )

    def categories(self, schema: DatasetSchema, node: str) -> tuple[tuple[str, ...], ...]:
        """Agreed (row, col) categories for a node with this schema."""
        return tuple(
            agreed_categories(
                column, requested, schema, node, option=option, rule="crosstab.categories"
            )
            for column, requested, option in self._axes()
        )

    def _axes(self) -> tuple[tuple[str, tuple[str, ...] | None, str], ...]:
        return (
            (self.row, self.row_categories, "row_categories"),
            (self.col, self.col_categories, "col_categories"),
        )


class TableRelease(Release):
    """A node's counts on the agreed categories, and the rows it left out of them.

    Exact, or with discrete-Gaussian noise on every count when ``privacy`` is set.
    """

    row_categories: tuple[str, ...]
    col_categories: tuple[str, ...]
    counts: Counts
    """Rows per (row category, column category)."""
    rows_missing: Count
    """Rows with the row or column value missing."""
    rows_outside_categories: Count
    """Rows with a value outside the agreed categories."""


class CrosstabResult(BaseModel):
    dataset: str
    row: str
    col: str
    row_categories: list[str]
    col_categories: list[str]
    counts: list[list[int]]
    # The chi-square test is left out of a DP release: it would ignore the noise's variance.
    expected: list[list[float]] | None = Field(
        default=None, description="Expected counts under independence."
    )
    statistic: float | None = None
    pvalue: float | None = None
    dof: int | None = None
    correction: bool = Field(
        default=False, description="Whether Yates' correction was applied (dof == 1)."
    )
    n: int
    rows_missing: int = Field(description="Rows with the row or column value missing.")
    rows_outside_categories: int = Field(description="Rows with a value not agreed.")
    rows_missing_by_node: dict[str, int]
    rows_outside_by_node: dict[str, int]
    nodes: list[str]
    privacy: DPReport | None = Field(
        default=None, description="Mechanism, loss and noise of a DP release (counts may be < 0)."
    )

    def to_frame(self, margins: bool = False) -> pd.DataFrame:
        """The counts, as ``pd.crosstab``; ``margins=True`` adds 'All' totals."""
        table = pd.DataFrame(
            self.counts,
            index=pd.Index(self.row_categories, name=self.row),
            columns=pd.Index(self.col_categories, name=self.col),
        )
        if margins:
            table[TOTAL] = table.sum(axis=1)
            table.loc[TOTAL] = table.sum(axis=0)
        return table

    def test_line(self) -> str:
        """The chi-square test in words, or why a DP table has none."""
        if self.statistic is None or self.pvalue is None:
            return "no chi-square test: it would ignore the noise in the DP counts"
        yates = " with Yates' correction" if self.correction else ""
        return (
            f"chi-square test of independence{yates}: {self.statistic:.6g} on {self.dof} df, "
            f"p = {self.pvalue:.4g}"
        )

    def expected_frame(self) -> pd.DataFrame:
        if self.expected is None:
            raise ValueError("a DP table has no expected counts: the test is not computed on it")
        return pd.DataFrame(
            self.expected,
            index=pd.Index(self.row_categories, name=self.row),
            columns=pd.Index(self.col_categories, name=self.col),
        )


# ---- node side ----------------------------------------------------------


def crosstab_node(params: CrosstabParams, local: LocalDataset) -> TableRelease:
    frame = selected_rows(params, local)
    row_categories, col_categories = params.categories(local.schema, local.node_name)
    row_labels = category_labels(frame[params.row], local.schema.columns[params.row])
    col_labels = category_labels(frame[params.col], local.schema.columns[params.col])
    missing = (row_labels.isna() | col_labels.isna()).to_numpy()
    # Codes are -1 for a value outside the agreed categories (and for missing ones).
    row_codes = pd.Categorical(row_labels, categories=row_categories).codes
    col_codes = pd.Categorical(col_labels, categories=col_categories).codes
    inside = (row_codes >= 0) & (col_codes >= 0)
    counts = np.zeros((len(row_categories), len(col_categories)), dtype=np.int64)
    np.add.at(counts, (row_codes[inside], col_codes[inside]), 1)
    rows_missing, rows_outside = int(missing.sum()), int((~inside & ~missing).sum())
    privacy: dict[str, object] | None = None
    if params.dp is None:
        # The rows outside the categories are a cell too (a list leaving out one small
        # category would give its count).
        check_cells(
            np.append(counts.ravel(), rows_outside),
            local.policy,
            local.node_name,
            what="cells (or the rows outside the categories)",
            fix="merge small categories, list every category, or widen the "
            f"{Param('where')} filter",
        )
    else:
        # Every row is in one cell, or missing, or outside the categories.
        release = release_for(params.dp)
        noisy = release.counts(
            "count", [*counts.ravel(), rows_missing, rows_outside], release.budget
        )
        counts = noisy[:-2].reshape(counts.shape)
        rows_missing, rows_outside = int(noisy[-2]), int(noisy[-1])
        privacy = dict(release.record())
    return TableRelease(
        row_categories=row_categories,
        col_categories=col_categories,
        counts=counts,
        rows_missing=rows_missing,
        rows_outside_categories=rows_outside,
        privacy=privacy,
    )


# ---- server side --------------------------------------------------------


def crosstab_serve(grid: Grid, params: CrosstabParams) -> CrosstabResult:
    nodes = wait_for_nodes(grid, params)
    replies = broadcast(grid, "crosstab", params, nodes)
    counts: IntArray | None = None
    axes: tuple[list[str], list[str]] | None = None
    missing: dict[str, int] = {}
    outside: dict[str, int] = {}
    for name, part in released(replies, TableRelease):
        node_axes = (list(part.row_categories), list(part.col_categories))
        if axes is not None and node_axes != axes:
            raise QueryError(
                f"nodes disagree on the categories of {params.row!r} or {params.col!r}: "
                f"{axes} versus {node_axes}",
                rule="crosstab.categories_disagree",
                node=name,
                fix=f"pass {Param('row_categories', Hole.items())} and "
                f"{Param('col_categories', Hole.items())} explicitly",
            )
        axes = node_axes
        counts = part.counts if counts is None else counts + part.counts
        missing[name] = part.rows_missing
        outside[name] = part.rows_outside_categories
    if counts is None or axes is None:
        raise AssertionError("broadcast returns at least one reply")
    table = CrosstabResult(
        dataset=params.dataset,
        row=params.row,
        col=params.col,
        row_categories=axes[0],
        col_categories=axes[1],
        counts=counts.tolist(),
        n=int(counts.sum()),
        rows_missing=sum(missing.values()),
        rows_outside_categories=sum(outside.values()),
        rows_missing_by_node=dict(sorted(missing.items())),
        rows_outside_by_node=dict(sorted(outside.items())),
        nodes=sorted(missing),
        privacy=dp_report(replies),
    )
    if table.privacy is not None:
        return table
    if not table.n and table.rows_outside_categories:
        raise no_row_in_categories(
            f"{params.row!r} or {params.col!r}",
            table.rows_outside_categories,
            options=("row_categories", "col_categories"),
        )
    _refuse_empty_categories(params, counts, axes)
    test = chi2_contingency(counts, correction=params.correction)
    return table.model_copy(
        update={
            "expected": np.asarray(test.expected_freq, dtype=float).tolist(),
            "statistic": float(test.statistic),
            "pvalue": float(test.pvalue),
            "dof": int(test.dof),
            "correction": params.correction and int(test.dof) == 1,
        }
    )


def _refuse_empty_categories(
    params: CrosstabParams, counts: IntArray, axes: tuple[list[str], list[str]]
) -> None:
    for column, labels, totals, option in (
        (params.row, axes[0], counts.sum(axis=1), "row_categories"),
        (params.col, axes[1], counts.sum(axis=0), "col_categories"),
    ):
        empty = [label for label, total in zip(labels, totals, strict=True) if total == 0]
        if empty:
            raise QueryError(
                f"category {', '.join(map(repr, empty))} of {column!r} has no rows at any node, "
                "so the chi-square test is undefined",
                rule="crosstab.empty_category",
                fix=f"leave {', '.join(map(repr, empty))} out of {Param(option)}, "
                f"or widen the {Param('where')} filter",
                column=column,
                categories=empty,
            )


# ---- terminal ------------------------------------------------------------


def crosstab_table(result: CrosstabResult) -> Group:
    """Counts with margins, then the chi-square test and the rows left out."""
    frame = result.to_frame(margins=True)
    table = Table(title=f"crosstab {result.dataset}", title_justify="left")
    # Category labels are data: escaped so a label like "[x]" is not read as markup.
    table.add_column(escape(f"{result.row} \\ {result.col}"))
    for column in frame.columns:
        table.add_column(escape(str(column)), justify="right")
    for label, row in frame.iterrows():
        table.add_row(escape(str(label)), *(str(int(v)) for v in row))
    left_out = (
        f"{result.rows_missing} rows missing, "
        f"{result.rows_outside_categories} outside the agreed categories"
    )
    return Group(table, result.test_line(), footer(left_out, result.nodes))


TASK: TaskType[CrosstabParams, CrosstabResult] = TaskType(
    name="crosstab",
    params=CrosstabParams,
    result=CrosstabResult,
    serve=crosstab_serve,
    node_handlers={"crosstab": crosstab_node},
    releases=(TableRelease,),
    summary="contingency table on agreed categories with the chi-square test",
    arguments=("row", "col"),
    table=crosstab_table,
)
