"""Approximate quantiles by federated bisection on an agreed grid, with a stated error bound.

An exact sample quantile is one patient's value (or an interpolation of two),
so it cannot be computed from aggregates without revealing that value. This
task brackets it instead, to a tolerance the researcher states.

The grid. The request agrees ``lower``, ``upper`` and ``tolerance`` (never
taken from the data). They fix ``R = ceil(log2((upper - lower) / tolerance))``
and the grid edges ``e_j = lower + (upper - lower) * j / 2**R`` for
``j = 0 .. 2**R`` (``e_{2**R} = upper`` exactly), each ``grid_step <=
tolerance`` apart. Nodes compute the edges themselves from those three agreed
numbers, so a coordinator cannot ask for counts at any finer resolution.

What a node releases. For the grid indices the server asks for in a round, the
count of its present values ``<= e_j`` (index ``-1`` stands for "``< lower``"),
plus its number of present and missing values. Nothing else: counts at grid
edges are a histogram on the agreed grid, computed lazily -- only the
O(R) edges the search needs, not all ``2**R``.

The search. After the first round the server knows n, and from numpy's rule
for ``method`` which order statistics ``x_(i)`` (0-based, sorted pooled
values) the quantile is made of, with which weights. For each it bisects on
the grid for the smallest j with ``count(<= e_j) >= i + 1``, which places
``x_(i)`` in ``(e_{j-1}, e_j]`` (or exactly at ``lower`` when j = 0). All
searches share each round: about ``R + 1`` rounds in total.

The bound. The estimate of ``x_(i)`` is the midpoint of its interval, at most
half its width (``<= grid_step / 2 <= tolerance / 2``) from the truth. A
quantile that interpolates, ``(1 - g) x_(i) + g x_(i+1)``, is estimated the
same way from the two estimates, and its error is at most the same weighted
sum of half widths. The stated ``bound`` per quantile is that number plus a
few units in the last place for floating-point rounding, so

    |federated - numpy.quantile(pooled, q, method=method)| <= bound <= tolerance

holds for the methods listed in ``Method``, which reproduce numpy's rank rules.

Refusals. A quantile that is the smallest or largest present value (e.g. a
tiny q on a small group) would publish one patient's extreme value, which
oncofed never releases: ``quantiles.extreme``. A quantile outside the agreed
``[lower, upper]`` cannot be bracketed: ``quantiles.out_of_bounds``, with the
counts below and above so the researcher can widen the bounds.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import ClassVar, Literal

import numpy as np
import numpy.typing as npt
import pandas as pd
from flwr.serverapp import Grid
from pydantic import BaseModel, Field, field_validator, model_validator
from rich.console import Group
from rich.table import Table

from oncofed.kernel.errors import Param, QueryError, TaskFailed
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
from oncofed.tasks.tables import footer, number

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
Method = Literal["linear", "lower", "higher", "nearest", "midpoint", "inverted_cdf"]
"""numpy.quantile methods whose rank rule ``order_statistics`` reproduces."""

ROUNDING = 8 * float(np.finfo(np.float64).eps)
"""Relative allowance for the rounding of midpoints and interpolation."""
MAX_LEVELS = 40
"""At most 2**40 grid steps, so the search ends in at most 41 rounds."""
RESOLUTION = 2 * ROUNDING
"""Smallest grid step relative to the bounds, so the rounding allowance stays within tolerance."""
DEFAULT_RESOLUTION = 1000
"""Without a tolerance, the interval is cut to (upper - lower) / 1000."""
BELOW = -1
"""Probe index meaning 'count of values < lower'."""
MAX_DP_CELLS = 4096
"""A DP release is a histogram on the whole grid: at most this many cells."""


class QuantilesParams(TaskParams):
    DP = True
    SECURE_SUM = True
    SERVER_STATE: ClassVar[frozenset[str]] = frozenset({"probe"})
    column: str = Field(min_length=1, description="Numeric column.")
    q: tuple[float, ...] = Field(
        default=(0.25, 0.5, 0.75),
        min_length=1,
        max_length=99,
        description="Probabilities in (0, 1).",
    )
    lower: float = Field(description="Agreed lower end of the search (not read from data).")
    upper: float = Field(description="Agreed upper end of the search (not read from data).")
    tolerance: float | None = Field(
        default=None, gt=0, description="Largest absolute error accepted; default range / 1000."
    )
    method: Method = Field(default="linear", description="numpy.quantile's method to match.")
    probe: tuple[int, ...] = Field(
        default=(), description="Grid indices counted this round; set by the server."
    )

    @field_validator("q", mode="before")
    @classmethod
    def _one_probability(cls, q: object) -> object:
        return (q,) if isinstance(q, int | float) else q

    @field_validator("q")
    @classmethod
    def _probabilities(cls, q: tuple[float, ...]) -> tuple[float, ...]:
        if not all(0.0 < p < 1.0 for p in q):
            raise ValueError("each q must lie strictly between 0 and 1 (0 and 1 are min and max)")
        if len(set(q)) != len(q):
            raise ValueError("q must not repeat")
        return q

    @model_validator(mode="after")
    def _agreed_grid(self) -> QuantilesParams:
        span = self.upper - self.lower
        if not (math.isfinite(self.lower) and math.isfinite(self.upper) and math.isfinite(span)):
            raise _grid_error("lower and upper must be finite numbers", "pass finite bounds")
        if self.lower >= self.upper:
            raise _grid_error(
                f"lower={self.lower:g} is not below upper={self.upper:g}",
                "pass lower < upper",
            )
        scale = max(abs(self.lower), abs(self.upper))
        if (
            self.resolved_tolerance() * 2**MAX_LEVELS < span
            or self.grid_step() <= RESOLUTION * scale
        ):
            raise _grid_error(
                f"tolerance={self.resolved_tolerance():g} is finer than float64 can "
                f"resolve over [{self.lower:.15g}, {self.upper:.15g}]",
                "choose a larger tolerance or narrower bounds",
            )
        size = self.size()
        if any(not BELOW <= j <= size for j in self.probe):
            raise _grid_error(
                f"probe indices must lie in [-1, {size}]", "submit quantiles through oncofed"
            )
        # A round asks for at most two order statistics per quantile (the first, three probes).
        if len(self.probe) > 2 * len(self.q) + 3:
            raise _grid_error(
                f"{len(self.probe)} counts asked in one round", "submit quantiles through oncofed"
            )
        return self

    def required_columns(self) -> dict[str, ColumnRole]:
        roles = super().required_columns()
        roles[self.column] = "numeric"
        return roles

    def secure_sum_supported(self) -> bool:
        # The DP release is one grid histogram; the exact bisection's per-round counts
        # would need a masked session per round.
        return self.dp is not None

    def resolved_tolerance(self) -> float:
        return self.tolerance or (self.upper - self.lower) / DEFAULT_RESOLUTION

    def levels(self) -> int:
        """R: the grid has 2**R steps of (upper - lower) / 2**R <= tolerance."""
        ratio = (self.upper - self.lower) / self.resolved_tolerance()
        return max(0, math.ceil(math.log2(ratio))) if ratio > 1 else 0

    def grid_step(self) -> float:
        return (self.upper - self.lower) / self.size()

    def size(self) -> int:
        """2**R, the number of grid steps."""
        return 1 << self.levels()

    def edge(self, j: int) -> float:
        """Grid edge e_j, computed identically by nodes and server."""
        size = self.size()
        if j >= size:
            return self.upper
        return self.lower + (self.upper - self.lower) * (j / size)


def _grid_error(problem: str, fix: str) -> QueryError:
    return QueryError(f"cannot search quantiles: {problem}", rule="quantiles.grid", fix=fix)


class BisectionCountsRelease(Release):
    """One round of the exact search: a node's present values at or below each probed edge.

    ``at_most[k]`` counts values ``<= e_j`` for the round's k-th probe index j
    (values ``< lower`` for index -1); with the node's present and missing values.
    """

    at_most: Counts
    present: Count
    missing: Count


class GridHistogramRelease(Release):
    """A DP reply: a node's noisy counts on the whole agreed grid, and its noisy missing values.

    ``counts`` holds, in order, values below ``lower``, values equal to
    ``lower`` (cell 0), values in ``(e_{j-1}, e_j]`` for each j, and values
    above ``upper``: ``size() + 3`` cells.
    """

    counts: Counts
    missing: Count


class QuantilesResult(BaseModel):
    dataset: str
    column: str
    method: Method
    q: list[float]
    values: list[float] = Field(description="Estimates of numpy.quantile(pooled, q, method).")
    bounds: list[float] | None = Field(
        description="Proven largest absolute error of each estimate (None under DP: the "
        "noise in the counts moves the estimate further than the grid does)."
    )
    tolerance: float
    lower: float
    upper: float
    grid_step: float
    rounds: int
    n: int = Field(description="Present values used.")
    missing: int
    below: int = Field(description="Present values below lower.")
    above: int = Field(description="Present values above upper.")
    rows_missing_by_node: dict[str, int]
    nodes: list[str]
    privacy: DPReport | None = Field(
        default=None, description="Mechanism, loss and noise of a DP release of the grid counts."
    )

    def to_frame(self) -> pd.DataFrame:
        """One row per q: the estimate, its bound and the interval holding the exact value."""
        values = np.asarray(self.values)
        bounds = np.asarray(self.bounds if self.bounds is not None else [np.nan] * len(values))
        return pd.DataFrame(
            {"value": values, "bound": bounds, "low": values - bounds, "high": values + bounds},
            index=pd.Index(self.q, name="q"),
        )


# ---- node side ----------------------------------------------------------


def quantiles_node(
    params: QuantilesParams, local: LocalDataset
) -> BisectionCountsRelease | GridHistogramRelease:
    values = selected_rows(params, local)[params.column].to_numpy(dtype=float, na_value=np.nan)
    present = np.sort(values[~np.isnan(values)])
    if params.dp is not None:
        return _grid_histogram_dp(params, local, present, int(values.size - present.size))
    counts = [
        np.searchsorted(present, params.lower, side="left")
        if j == BELOW
        else np.searchsorted(present, params.edge(j), side="right")
        for j in params.probe
    ]
    return BisectionCountsRelease(
        at_most=np.array(counts, dtype=np.int64),
        present=int(present.size),
        missing=int(values.size - present.size),
    )


def _grid_histogram_dp(
    params: QuantilesParams, local: LocalDataset, present: FloatArray, missing: int
) -> GridHistogramRelease:
    """Noisy counts in every grid cell, below, above and missing, in one release.

    Cumulative counts (what the exact search asks for) would let one patient
    change every count above their value; cell counts change by one in one
    place, so the whole vector has sensitivity one. The server adds them up.
    """
    size = params.size()
    if size + 1 > MAX_DP_CELLS:
        raise QueryError(
            f"a DP release of quantiles is a histogram on the grid; {size + 1} cells is more "
            f"than {MAX_DP_CELLS}",
            rule="privacy.dp_grid_too_fine",
            node=local.node_name,
            fix=f"choose a larger {Param('tolerance')} or narrower {Param('lower')} and "
            f"{Param('upper')}",
        )
    edges = [params.edge(j) for j in range(size + 1)]
    # Cell 0 holds values equal to lower, cell j values in (e_{j-1}, e_j].
    at_most = np.searchsorted(present, edges, side="right")
    below = int(np.searchsorted(present, params.lower, side="left"))
    cells = np.diff(np.concatenate([[below], at_most]))
    above = int(present.size - at_most[-1])
    assert params.dp is not None
    release = release_for(params.dp)
    noisy = release.counts("count", [below, *cells, above, missing], release.budget)
    return GridHistogramRelease(
        counts=noisy[:-1], missing=int(noisy[-1]), privacy=dict(release.record())
    )


# ---- server side --------------------------------------------------------


def order_statistics(n: int, q: float, method: Method) -> list[tuple[int, float]]:
    """(0-based order statistic, weight) pairs whose weighted sum numpy.quantile returns.

    Written after numpy's rank rules (numpy/lib/_function_base_impl.py), with
    the same float64 arithmetic so ties in rounding fall the same way;
    ``tests/unit/test_tables_math.py`` checks every method against numpy.
    """
    virtual = (n - 1) * q
    if method == "lower":
        return [(math.floor(virtual), 1.0)]
    if method == "higher":
        return [(math.ceil(virtual), 1.0)]
    if method == "nearest":
        return [(round(virtual), 1.0)]  # half to even, as np.around
    if method == "midpoint":
        low, high = math.floor(virtual), math.ceil(virtual)
        return [(low, 1.0)] if low == high else [(low, 0.5), (high, 0.5)]
    if method == "inverted_cdf":
        index = n * q - 1
        previous = math.floor(index)
        return [(max(0, previous if index == previous else previous + 1), 1.0)]
    previous = math.floor(virtual)
    gamma = virtual - previous
    if virtual >= n - 1:
        return [(n - 1, 1.0)]
    return [(previous, 1.0)] if gamma == 0 else [(previous, 1.0 - gamma), (previous + 1, gamma)]


class _Search:
    """Bisection for the smallest grid index j with count(<= e_j) >= rank."""

    def __init__(self, rank: int, size: int) -> None:
        self.rank = rank
        self.low, self.high = BELOW, size  # count(low) < rank <= count(high)

    @property
    def done(self) -> bool:
        return self.high - self.low <= 1

    @property
    def middle(self) -> int:
        return (self.low + self.high) // 2

    def narrow(self, known: dict[int, int]) -> None:
        while not self.done and self.middle in known:
            if known[self.middle] >= self.rank:
                self.high = self.middle
            else:
                self.low = self.middle

    def interval(self, params: QuantilesParams) -> tuple[float, float]:
        """Values the order statistic can take: (e_{j-1}, e_j], or [lower, lower] for j = 0."""
        if self.high == 0:
            return params.lower, params.lower
        return params.edge(self.high - 1), params.edge(self.high)


class _Rounds:
    """Sends one probe per round and sums the counts, checking nodes stay consistent."""

    def __init__(self, grid: Grid, params: QuantilesParams) -> None:
        self.grid, self.params = grid, params
        self.nodes = wait_for_nodes(grid, params)
        self.known: dict[int, int] = {}
        self.present: dict[str, int] = {}
        self.missing: dict[str, int] = {}
        self.count = 0
        self.privacy: DPReport | None = None

    def ask(self, probe: Iterable[int]) -> None:
        indices = tuple(sorted(set(probe)))
        replies = broadcast(
            self.grid,
            "quantiles",
            self.params.model_copy(update={"probe": indices}),
            self.nodes,
            group_id=f"quantiles-round-{self.count}",
        )
        self.count += 1
        totals = np.zeros(len(indices), dtype=np.int64)
        for name, part in released(replies, BisectionCountsRelease):
            if self.present.setdefault(name, part.present) != part.present:
                raise TaskFailed(
                    f"the number of values changed between rounds ({self.present[name]} "
                    f"then {part.present})",
                    rule="quantiles.data_changed",
                    node=name,
                    fix="run the query again once the node's data is stable",
                )
            self.missing[name] = part.missing
            totals += part.at_most
        self.known.update(zip(indices, (int(t) for t in totals), strict=True))

    def ask_all_dp(self) -> None:
        """One DP round: every node's noisy grid histogram, summed into cumulative counts.

        Negative noisy cells are set to zero first (post-processing), so the
        cumulative counts rise monotonically as the bisection assumes.
        """
        replies = broadcast(self.grid, "quantiles", self.params, self.nodes)
        self.count += 1
        total: IntArray = np.zeros(self.params.size() + 3, dtype=np.int64)
        for name, part in released(replies, GridHistogramRelease):
            total += part.counts
            self.missing[name] = part.missing
        cumulative = np.cumsum(np.maximum(total, 0))
        self.known[BELOW] = int(cumulative[0])
        self.known.update((j, int(cumulative[j + 1])) for j in range(self.params.size() + 1))
        self.present = {"(all)": int(cumulative[-1])}
        self.privacy = dp_report(replies)

    @property
    def n(self) -> int:
        return sum(self.present.values())


def quantiles_serve(grid: Grid, params: QuantilesParams) -> QuantilesResult:
    size = params.size()
    rounds = _Rounds(grid, params)
    if params.dp is not None:
        rounds.ask_all_dp()
    else:
        # Every search starts on [BELOW, size], so the first round also takes their first step.
        rounds.ask((BELOW, (BELOW + size) // 2, size))
    n = rounds.n
    if n == 0:
        raise QueryError(
            f"no present values of {params.column!r} at any node",
            rule="quantiles.no_rows",
            fix=f"widen the {Param('where')} filter or choose another column",
            column=params.column,
        )
    below, at_most_upper = rounds.known[BELOW], rounds.known[size]
    plan = [order_statistics(n, p, params.method) for p in params.q]
    searches: dict[int, _Search] = {}
    for p, terms in zip(params.q, plan, strict=True):
        for index, weight in terms:
            if weight > 0:
                searches[index] = _check_reachable(params, p, index, n, below, at_most_upper)
    for search in searches.values():
        search.narrow(rounds.known)
    while pending := [s for s in searches.values() if not s.done]:
        rounds.ask(s.middle for s in pending)
        for search in pending:
            search.narrow(rounds.known)
    values, bounds = [], []
    scale = max(abs(params.lower), abs(params.upper))
    for terms in plan:
        value = bound = 0.0
        for index, weight in terms:
            if weight > 0:
                low, high = searches[index].interval(params)
                middle = low + (high - low) / 2
                value += weight * middle
                bound += weight * max(high - middle, middle - low)
        values.append(value)
        bounds.append(bound + ROUNDING * scale)
    above = n - at_most_upper
    return QuantilesResult(
        dataset=params.dataset,
        column=params.column,
        method=params.method,
        q=list(params.q),
        values=values,
        bounds=bounds if rounds.privacy is None else None,
        tolerance=params.resolved_tolerance(),
        lower=params.lower,
        upper=params.upper,
        grid_step=params.grid_step(),
        rounds=rounds.count,
        n=n,
        missing=sum(rounds.missing.values()),
        below=below,
        above=above,
        rows_missing_by_node=dict(sorted(rounds.missing.items())),
        nodes=sorted(rounds.missing),
        privacy=rounds.privacy,
    )


def _check_reachable(
    params: QuantilesParams, q: float, index: int, n: int, below: int, at_most_upper: int
) -> _Search:
    if index in (0, n - 1):
        raise QueryError(
            f"q={q:g} ({params.method}) of {n} values is the "
            f"{'smallest' if index == 0 else 'largest'} value, a single patient's",
            rule="quantiles.extreme",
            fix=f"choose {Param('q')} further from 0 and 1, or widen the {Param('where')} filter",
            column=params.column,
        )
    if below >= index + 1 or at_most_upper < index + 1:
        side = "below lower" if below >= index + 1 else "above upper"
        raise QueryError(
            f"q={q:g} of {params.column!r} lies {side} (agreed [{params.lower:g}, "
            f"{params.upper:g}]; {below} value(s) below, {n - at_most_upper} above)",
            rule="quantiles.out_of_bounds",
            fix=f"widen {Param('lower')} and {Param('upper')} to cover the quantile",
            column=params.column,
        )
    return _Search(index + 1, params.size())


# ---- terminal ------------------------------------------------------------


def quantiles_table(result: QuantilesResult) -> Group:
    table = Table(
        title=f"quantiles {result.dataset}: {result.column} ({result.method})",
        title_justify="left",
    )
    for column in ("q", "value", "± bound"):
        table.add_column(column, justify="right")
    none: list[float | None] = [None] * len(result.q)
    bounds: list[float | None] = list(result.bounds) if result.bounds is not None else none
    for q, value, bound in zip(result.q, result.values, bounds, strict=True):
        table.add_row(f"{q:g}", number(value), "noisy (DP)" if bound is None else f"{bound:.2g}")
    search = (
        f"n = {result.n}, {result.missing} missing; grid step {result.grid_step:.3g} "
        f"over [{result.lower:g}, {result.upper:g}], {result.rounds} rounds"
    )
    return Group(table, footer(search, result.nodes))


TASK: TaskType[QuantilesParams, QuantilesResult] = TaskType(
    name="quantiles",
    params=QuantilesParams,
    result=QuantilesResult,
    serve=quantiles_serve,
    node_handlers={"quantiles": quantiles_node},
    releases=(BisectionCountsRelease, GridHistogramRelease),
    summary="approximate quantiles with a stated error bound (bisection on an agreed grid)",
    arguments=("column",),
    table=quantiles_table,
)
