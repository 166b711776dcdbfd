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

With ``dp=`` a mean and a co-moment matrix cannot be released (one row moves
the mean of every other row's deviation), so each node instead releases a
noisy count of its complete rows and noisy sums of each column and of each
product of two columns, every value clamped to public bounds and centred at
their midpoint (``correlation_node_dp``). The server adds them and computes
the covariance from the sums, then the correlation (post-processing), and
states each entry's noise to first order.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt
import pandas as pd
from flwr.app import RecordDict
from flwr.serverapp import Grid
from pydantic import BaseModel, Field, field_validator
from rich.console import Group
from rich.markup import escape
from rich.table import Table

from oncofed.kernel.errors import Param, QueryError
from oncofed.privacy.disclosure import check_dominance, largest_terms
from oncofed.privacy.dp import DPRequest, release_for
from oncofed.privacy.release import AgreedValues, BoundedSums, Count, Moments, Release
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
from oncofed.tasks.messaging import wait_for_nodes
from oncofed.tasks.tables import footer, number

FloatArray = npt.NDArray[np.float64]
Comoments = tuple[float, FloatArray, FloatArray]
"""(n, mean vector, co-moment matrix) of one set of complete rows."""


ROUNDING_SLACK = 1 + 2**-20
"""Covers the rounding in the DP sums' sensitivity (see ``correlation_node_dp``)."""


class CorrelationParams(TaskParams):
    DP = True
    columns: tuple[str, ...] = Field(
        min_length=2, description="Numeric columns; complete cases over all of them are used."
    )
    bounds: PublicBounds = Field(
        default_factory=dict,
        description=(
            "Public (lo, hi) per column for a DP release, where the node schema declares none; "
            "values are clamped to them and centred at their midpoint. Never derive them from "
            "the data."
        ),
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


class NoisyCrossProductsRelease(Release):
    """A DP reply over the complete rows, values clamped to ``bounds`` and centred at midpoints.

    ``sums[j]`` is the noisy sum of column j minus its midpoint; ``products``
    the noisy sums of the products of two such centred columns, for the pairs
    j <= k in ``numpy.triu_indices`` order. ``bounds`` are the public (lo, hi)
    per column the node clamped to, so the server can check every node used
    the same centre and state each sum's noise.
    """

    count: Count
    sums: BoundedSums
    products: BoundedSums
    bounds: AgreedValues


class CorrelationResult(BaseModel):
    dataset: str
    columns: list[str]
    n: int = Field(description="Complete rows used, over all nodes.")
    rows_dropped: int | None = Field(
        description="Rows with a missing value in a listed column; None under DP (not released)."
    )
    rows_dropped_by_node: dict[str, int] | None
    means: list[float]
    covariance_matrix: list[list[float]]
    correlation_matrix: list[list[float | None]] = Field(
        description="None where a column has zero variance (correlation undefined)."
    )
    nodes: list[str]
    privacy: DPReport | None = Field(
        default=None, description="The DP mechanism, loss and noise, when dp= was asked for."
    )
    covariance_noise_std: list[list[float]] | None = Field(
        default=None,
        description="Under DP: first-order standard deviation of the noise in each covariance.",
    )
    correlation_noise_std: list[list[float | None]] | None = Field(
        default=None,
        description="Under DP: first-order standard deviation of the noise in each correlation "
        "(None where undefined); rough once it nears the correlation's own size.",
    )

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


def complete_rows(params: CorrelationParams, local: LocalDataset) -> tuple[FloatArray, int]:
    """The rows present in every listed column, and how many rows were not."""
    frame = selected_rows(params, local)
    values = frame[list(params.columns)].to_numpy(dtype=float, na_value=np.nan)
    complete = ~np.isnan(values).any(axis=1)
    return values[complete], int((~complete).sum())


def correlation_node(
    params: CorrelationParams, local: LocalDataset
) -> ComomentsRelease | NoisyCrossProductsRelease:
    if params.dp is not None:
        return correlation_node_dp(params, local, params.dp)
    rows, dropped = complete_rows(params, local)
    mean = rows.mean(axis=0) if len(rows) else np.zeros(len(params.columns))
    centred = rows - mean
    for terms in (largest_terms(rows), largest_terms(centred, centred)):
        check_dominance(
            terms,
            local.policy,
            local.node_name,
            what="the columns' values or products (a mean or co-moment)",
            fix="leave out the column with an outlying value, or ask with "
            f"{Param('dp', {'epsilon': 0.5})}",
        )
    return ComomentsRelease(
        n=len(rows),
        mean=mean,
        comoment=centred.T @ centred,
        rows_dropped=dropped,
    )


def correlation_node_dp(
    params: CorrelationParams, local: LocalDataset, request: DPRequest
) -> NoisyCrossProductsRelease:
    """Noisy count, centred sums and sums of centred products of the complete rows.

    Centring at the bounds' midpoint halves the widest a value can be, so a
    product's bound, and its noise, shrinks up to four times; covariance
    does not depend on the centre.

    The budget is split evenly over the count and the K = p + p(p+1)/2 sums.
    The sums go out in one Gaussian call on the vector of each sum divided
    by its bound (one row moves each by at most 1, so the vector's L2
    sensitivity is sqrt(K)): for a Gaussian that costs what K calls with an
    even split cost, and keeps each sum's noise proportional to its own
    bound. Not dividing would give every sum the noise of the widest product
    -- with age and meal.cal, a thousand times what age's own sums need -- and
    describe's ``bounded_sums`` per statistic doubles the noise (OpenDP's
    checked float sum allows for rounding over up to MAX_ROWS rows).
    Rounding here: clamping, centring, multiplying and dividing are monotone,
    so every row's term lies in [-1, 1] exactly; ``math.fsum`` rounds each
    sum once, so one row moves it by at most 1 + ulp(MAX_ROWS) = 1 + 2**-22,
    which ``ROUNDING_SLACK`` covers.
    """
    rows, _ = complete_rows(params, local)
    bounds = np.array([public_bounds(params, local, column) for column in params.columns])
    lo, hi = bounds[:, 0], bounds[:, 1]
    centre = (lo + hi) / 2
    half = np.maximum(np.abs(lo - centre), np.abs(hi - centre))
    centred = np.clip(rows, lo, hi) - centre
    j, k = np.triu_indices(len(params.columns))
    widths = np.concatenate([half, half[j] * half[k]])
    terms = np.concatenate([centred, centred[:, j] * centred[:, k]], axis=1) / widths
    release = release_for(request)
    part = release.budget / (1 + widths.size)
    count = release.counts("count", [len(rows)], part)
    unit_sums = release.floats(
        "sums",
        [math.fsum(column) for column in terms.T],
        release.budget - part,
        sensitivity=math.sqrt(widths.size) * ROUNDING_SLACK,
    )
    sums = unit_sums * widths
    return NoisyCrossProductsRelease(
        count=int(count[0]),
        sums=sums[: half.size],
        products=sums[half.size :],
        bounds=bounds,
        privacy=dict(release.record()),
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
    if params.dp is not None:
        return _correlation_dp(params, replies)
    total: Comoments | None = None
    dropped: dict[str, int] = {}
    for node, part in released(replies, ComomentsRelease):
        moments = (float(part.n), part.mean, part.comoment)
        total = moments if total is None else combine_comoments(total, moments)
        dropped[node] = part.rows_dropped
    if total is None:
        raise AssertionError("broadcast returns at least one reply")
    n = int(total[0])
    _check_rows(n, params)
    covariance, correlation = covariance_and_correlation(total)
    return CorrelationResult(
        dataset=params.dataset,
        columns=list(params.columns),
        n=n,
        rows_dropped=sum(dropped.values()),
        rows_dropped_by_node=dict(sorted(dropped.items())),
        means=total[1].tolist(),
        covariance_matrix=covariance.tolist(),
        correlation_matrix=_undefined_as_none(correlation),
        nodes=sorted(dropped),
    )


def _check_rows(n: int, params: CorrelationParams) -> None:
    if n < 2:
        raise QueryError(
            f"only {n} complete row(s) over all nodes for {', '.join(params.columns)}",
            rule="correlation.too_few_rows",
            fix=f"widen the {Param('where')} filter, or leave out the columns with most "
            "missing values",
        )


def _undefined_as_none(matrix: FloatArray) -> list[list[float | None]]:
    return [[None if np.isnan(v) else float(v) for v in row] for row in matrix]


def _correlation_dp(
    params: CorrelationParams, replies: Mapping[int, RecordDict]
) -> CorrelationResult:
    """Add the nodes' noisy sums; covariance and correlation follow (post-processing)."""
    parts = released(replies, NoisyCrossProductsRelease)
    bounds = parts[0][1].bounds
    for node, part in parts:
        if not np.array_equal(part.bounds, bounds):
            raise QueryError(
                f"nodes clamp {', '.join(params.columns)} to different bounds, so their "
                "centred sums do not add",
                rule="correlation.bounds_disagree",
                node=node,
                fix="ask the node operators to declare the same bounds for these columns, "
                f"or to declare none so that your {Param('bounds')} apply everywhere",
            )
    report = dp_report(replies)
    if report is None:
        raise AssertionError("a DP release carries its privacy record")
    p = len(params.columns)
    n = sum(part.count for _, part in parts)
    _check_rows(n, params)
    sums = np.sum([part.sums for _, part in parts], axis=0)
    products = np.zeros((p, p))
    j, k = np.triu_indices(p)
    products[j, k] = products[k, j] = np.sum([part.products for _, part in parts], axis=0)
    covariance = positive_semidefinite((products - np.outer(sums, sums) / n) / (n - 1))
    half = (bounds[:, 1] - bounds[:, 0]) / 2
    unit = report.noise_std["sums"]
    # Each sum's noise is the unit noise times its bound (see correlation_node_dp).
    noise = {"count": report.noise_std["count"]}
    noise.update({name: unit * width for name, width in _sum_widths(params.columns, half)})
    covariance_std, correlation, correlation_std = noise_of_covariance(
        n, sums, covariance, np.array(list(noise.values()))
    )
    return CorrelationResult(
        dataset=params.dataset,
        columns=list(params.columns),
        n=n,
        rows_dropped=None,
        rows_dropped_by_node=None,
        means=(bounds.mean(axis=1) + sums / n).tolist(),
        covariance_matrix=covariance.tolist(),
        correlation_matrix=_undefined_as_none(correlation),
        nodes=[node for node, _ in parts],
        privacy=report.model_copy(update={"noise_std": noise}),
        covariance_noise_std=covariance_std.tolist(),
        correlation_noise_std=_undefined_as_none(correlation_std),
    )


def _sum_widths(columns: Sequence[str], half: FloatArray) -> list[tuple[str, float]]:
    """Each released sum's name and bound, in the release's order."""
    widths = [(f"sum.{column}", float(h)) for column, h in zip(columns, half, strict=True)]
    for a, b in zip(*np.triu_indices(len(columns)), strict=True):
        x, y = columns[int(a)], columns[int(b)]
        name = f"sum_of_squares.{x}" if a == b else f"sum_of_products.{x}*{y}"
        widths.append((name, float(half[a] * half[b])))
    return widths


def positive_semidefinite(matrix: FloatArray) -> FloatArray:
    """The nearest positive semi-definite matrix (Higham 1988): negative eigenvalues set to 0.

    Noise can make a noisy covariance matrix indefinite, which no data could
    give; a matrix that is already semi-definite is returned unchanged.
    """
    values, vectors = np.linalg.eigh(matrix)
    if values.min() >= 0:
        return matrix
    fixed: FloatArray = (vectors * np.maximum(values, 0.0)) @ vectors.T
    return fixed


def noise_of_covariance(
    n: int, sums: FloatArray, covariance: FloatArray, noise: FloatArray
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """First-order noise std of each covariance and correlation, and the correlation itself.

    C = (P - S S^T / n) / (n - 1) moves with the count n, each centred sum
    S_j and each sum of products P_jk; ``noise`` holds their independent noise
    stds in that order (pairs j <= k as ``numpy.triu_indices``). The
    Jacobian J of C in those quantities gives var C_jk = sum_m (J_jkm noise_m)^2,
    and r_jk = C_jk / sqrt(C_jj C_kk) the same through its own derivative.
    """
    p = sums.size
    j, k = np.triu_indices(p)
    jacobian = np.zeros((p, p, noise.size))
    jacobian[:, :, 0] = np.outer(sums, sums) / (n * n * (n - 1)) - covariance / (n - 1)
    for column in range(p):
        jacobian[column, :, 1 + column] -= sums / (n * (n - 1))
        jacobian[:, column, 1 + column] -= sums / (n * (n - 1))
    jacobian[j, k, 1 + p + np.arange(j.size)] = 1 / (n - 1)
    jacobian[k, j, 1 + p + np.arange(j.size)] = 1 / (n - 1)
    _, correlation = covariance_and_correlation((float(n), sums / n, covariance * (n - 1)))
    variance = np.diag(covariance)
    with np.errstate(divide="ignore", invalid="ignore"):
        diagonal = jacobian[np.arange(p), np.arange(p)] / variance[:, None]
        of_correlation = jacobian / np.sqrt(np.outer(variance, variance))[:, :, None] - (
            correlation[:, :, None] / 2 * (diagonal[:, None, :] + diagonal[None, :, :])
        )
    # A correlation with itself is 1 whatever the noise.
    of_correlation[np.arange(p), np.arange(p)] = 0.0
    return (
        np.sqrt(((jacobian * noise) ** 2).sum(axis=2)),
        correlation,
        np.sqrt(((of_correlation * noise) ** 2).sum(axis=2)),
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
    if result.privacy is None:
        detail = f"{result.n} complete rows; {result.rows_dropped} dropped for a missing value"
    else:
        epsilon = max(result.privacy.epsilon.values())
        detail = (
            f"DP (epsilon {epsilon:g} per node): about {result.n} complete rows; every number is "
            "noisy, its noise std in covariance_noise_std / correlation_noise_std"
        )
    return Group(*tables, footer(detail, result.nodes))


TASK: TaskType[CorrelationParams, CorrelationResult] = TaskType(
    name="correlation",
    params=CorrelationParams,
    result=CorrelationResult,
    serve=correlation_serve,
    node_handlers={"correlation": correlation_node},
    releases=(ComomentsRelease, NoisyCrossProductsRelease),
    summary="covariance and correlation matrices of numeric columns (complete cases)",
    arguments=("columns",),
    table=correlation_tables,
)
