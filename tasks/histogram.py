"""Histograms on bin edges agreed in the request.

The edges are part of the request -- a strictly increasing list, or a number
of equal bins over a ``range=(lo, hi)`` the researcher states -- and are never
derived from the data (a data-driven range would publish the smallest and
largest patient values). Each node releases its counts per bin, the number of
present values below the first and above the last edge, and its number of
missing values. Bins follow ``numpy.histogram``: ``[a, b)`` except the last,
which is ``[a, b]``. Counts add exactly, so the pooled counts equal
``numpy.histogram(pooled, bins=edges)``; with ``bins=k, range=(lo, hi)`` the
edges are ``np.linspace(lo, hi, k + 1)``, exactly those ``numpy.histogram``
uses.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import pandas as pd
from flwr.serverapp import Grid
from pydantic import BaseModel, Field, model_validator
from rich.console import Group
from rich.table import Table

from oncofed.kernel.errors import Hole, Param, QueryError
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
from oncofed.tasks.messaging import wait_for_nodes
from oncofed.tasks.plotting import pyplot
from oncofed.tasks.tables import footer, number

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

FloatArray = npt.NDArray[np.float64]
MAX_BINS = 10_000
"""Caps the size of a release; finer bins would approach a list of values."""


class HistogramParams(TaskParams):
    DP = True
    SECURE_SUM = True
    column: str = Field(min_length=1, description="Numeric column.")
    bins: int | tuple[float, ...] = Field(
        description="Agreed edges (strictly increasing), or a number of equal bins over range."
    )
    range: tuple[float, float] | None = Field(
        default=None, description="(lo, hi) for bins=<number>; agreed, never read from data."
    )

    @model_validator(mode="after")
    def _agreed_edges(self) -> HistogramParams:
        self.edges()
        return self

    def required_columns(self) -> dict[str, ColumnRole]:
        roles = super().required_columns()
        roles[self.column] = "numeric"
        return roles

    def edges(self) -> FloatArray:
        """The agreed bin edges, or a ``histogram.edges`` refusal saying what is wrong."""
        if isinstance(self.bins, int):
            if self.range is None:
                raise _edges_error(
                    f"{_BINS} needs {_RANGE} in the request",
                    f"pass {_RANGE}, e.g. {Param('range', (40, 90))} for age in years",
                )
            lo, hi = self.range
            if not 1 <= self.bins <= MAX_BINS:
                raise _edges_error(
                    f"bins={self.bins} is not between 1 and {MAX_BINS}", "choose fewer bins"
                )
            if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
                raise _edges_error(
                    f"range=({lo:g}, {hi:g}) is not a finite interval with lo < hi",
                    f"pass {_RANGE} with lo < hi",
                )
            return np.linspace(lo, hi, self.bins + 1)
        if self.range is not None:
            raise _edges_error(
                f"{_RANGE} applies only to {_BINS}; explicit edges already say it",
                f"drop {Param('range')}, or pass {Param('bins')} as a number of bins",
            )
        edges = np.asarray(self.bins, dtype=np.float64)
        if not 2 <= edges.size <= MAX_BINS + 1:
            raise _edges_error(
                f"{edges.size} edge(s) given; a histogram needs 2 to {MAX_BINS + 1}",
                f"pass at least two edges, e.g. {Param('bins', [40, 50, 60, 70, 80])}",
            )
        if not np.all(np.isfinite(edges)):
            raise _edges_error("the edges must be finite numbers", "leave out inf and nan")
        steps = np.diff(edges)
        if np.any(steps <= 0):
            at = int(np.argmax(steps <= 0))
            raise _edges_error(
                f"the edges are not strictly increasing: {edges[at]:g} is followed by "
                f"{edges[at + 1]:g} (positions {at} and {at + 1})",
                "sort the edges and remove repeated ones",
            )
        return edges


_RANGE = Param("range", (Hole("lo"), Hole("hi")))
_BINS = Param("bins", Hole("number"))


def _edges_error(problem: str, fix: str) -> QueryError:
    return QueryError(f"cannot use these bins: {problem}", rule="histogram.edges", fix=fix)


class HistogramRelease(Release):
    """A node's present values per agreed bin, below and above the edges, and its missing values.

    Exact, or with discrete-Gaussian noise on every count when ``privacy`` is set.
    """

    counts: Counts
    """Present values per bin; the last bin includes its right edge."""
    below: Count
    above: Count
    missing: Count


class HistogramResult(BaseModel):
    dataset: str
    column: str
    edges: list[float]
    counts: list[int] = Field(description="Values per bin; the last bin includes its right edge.")
    below: int = Field(description="Present values below the first edge.")
    above: int = Field(description="Present values above the last edge.")
    missing: int
    n: int = Field(description="Present values, inside the edges or not.")
    rows_missing_by_node: dict[str, int]
    nodes: list[str]
    privacy: DPReport | None = Field(
        default=None, description="Mechanism, loss and noise of a DP release (counts may be < 0)."
    )

    def to_frame(self) -> pd.DataFrame:
        """One row per bin: left and right edge, count, and density as numpy's density=True."""
        edges = np.asarray(self.edges)
        counts = np.asarray(self.counts, dtype=np.float64)
        inside = counts.sum()
        widths = np.diff(edges)
        density = counts / (inside * widths) if inside else np.full(len(counts), np.nan)
        return pd.DataFrame(
            {"left": edges[:-1], "right": edges[1:], "count": self.counts, "density": density}
        )

    def plot(self, ax: Axes | None = None) -> Figure:
        """Draw the counts over the agreed edges; returns the matplotlib figure."""
        if ax is None:
            ax = pyplot().figure(figsize=(6.4, 4.0)).add_subplot()
        ax.stairs(self.counts, self.edges, fill=True, alpha=0.7)
        ax.set_xlabel(self.column)
        ax.set_ylabel("count")
        outside = (
            f"; {self.below} below, {self.above} above the edges"
            if (self.below or self.above)
            else ""
        )
        ax.set_title(
            f"{self.dataset}: {self.column}, {len(self.nodes)} nodes, n = {self.n}{outside}"
        )
        figure = ax.get_figure(root=True)
        assert figure is not None, "an Axes made by matplotlib belongs to a figure"
        return figure


# ---- node side ----------------------------------------------------------


def histogram_node(params: HistogramParams, local: LocalDataset) -> HistogramRelease:
    values = selected_rows(params, local)[params.column].to_numpy(dtype=float, na_value=np.nan)
    present = values[~np.isnan(values)]
    edges = params.edges()
    counts, _ = np.histogram(present, bins=edges)
    outside = np.array([(present < edges[0]).sum(), (present > edges[-1]).sum()], dtype=np.int64)
    missing = int(values.size - present.size)
    privacy: dict[str, object] | None = None
    if params.dp is None:
        check_cells(
            np.concatenate([counts, outside]),
            local.policy,
            local.node_name,
            what="bin(s) or the counts outside the edges",
            fix="use wider bins, or edges that cover the values",
        )
    else:
        # Every row is in exactly one bin, below, above or missing: one person moves one count.
        release = release_for(params.dp)
        noisy = release.counts("count", [*counts, *outside, missing], release.budget)
        counts, outside, missing = noisy[:-3], noisy[-3:-1], int(noisy[-1])
        privacy = dict(release.record())
    return HistogramRelease(
        counts=counts,
        below=int(outside[0]),
        above=int(outside[1]),
        missing=missing,
        privacy=privacy,
    )


# ---- server side --------------------------------------------------------


def histogram_serve(grid: Grid, params: HistogramParams) -> HistogramResult:
    nodes = wait_for_nodes(grid, params)
    replies = broadcast(grid, "histogram", params, nodes)
    edges = params.edges()
    counts = np.zeros(edges.size - 1, dtype=np.int64)
    below = above = 0
    missing: dict[str, int] = {}
    for node, part in released(replies, HistogramRelease):
        counts += part.counts
        below += part.below
        above += part.above
        missing[node] = part.missing
    return HistogramResult(
        dataset=params.dataset,
        column=params.column,
        edges=edges.tolist(),
        counts=counts.tolist(),
        below=below,
        above=above,
        missing=sum(missing.values()),
        n=int(counts.sum()) + below + above,
        rows_missing_by_node=dict(sorted(missing.items())),
        nodes=sorted(missing),
        privacy=dp_report(replies),
    )


# ---- terminal ------------------------------------------------------------


def histogram_table(result: HistogramResult) -> Group:
    table = Table(title=f"histogram {result.dataset}: {result.column}", title_justify="left")
    for column in ("left", "right", "count"):
        table.add_column(column, justify="right")
    table.add_column("")
    peak = max(result.counts) or 1
    for left, right, count in zip(result.edges, result.edges[1:], result.counts, strict=False):
        table.add_row(number(left), number(right), str(count), "#" * round(30 * count / peak))
    outside = f"{result.below} below, {result.above} above the edges, {result.missing} missing"
    return Group(table, footer(outside, result.nodes))


TASK: TaskType[HistogramParams, HistogramResult] = TaskType(
    name="histogram",
    params=HistogramParams,
    result=HistogramResult,
    serve=histogram_serve,
    node_handlers={"histogram": histogram_node},
    releases=(HistogramRelease,),
    summary="counts of a numeric column on agreed bin edges",
    arguments=("column",),
    table=histogram_table,
)
