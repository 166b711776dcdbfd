"""Cox proportional hazards with Efron's ties, fitted by federated Newton-Raphson.

Rounds (each one message per node):

1. ``coxph_setup`` (``CoxSetupRelease``): each node builds its design matrix
   (the formula's right-hand side, coded as with an intercept, which the
   baseline hazard absorbs, then dropped) on its complete rows and releases
   its row count, column sums and cross-products, the sum of the covariates
   over its events, and per stratum and grid time its number of events. The
   server pools the event times.
2. ``coxph`` (``CoxRiskSetRelease``) at coefficients beta, once per Newton
   step: per stratum and pooled event time, each node releases the sums over
   its rows still at risk of ``w = exp(x'beta)``, ``w x`` and ``w x x'`` (S0,
   S1, S2), and at the times where the pooled data have tied events the same
   sums over its events at that time (T0, T1, T2). Risk sets span nodes, so
   the server adds the nodes' sums per time and then evaluates Efron's log
   partial likelihood, gradient and Hessian exactly -- as
   ``lifelines.CoxPHFitter`` does on the pooled rows.
3. ``coxph_concordance`` (``CoxConcordanceRelease``) at the fitted
   coefficients: Harrell's C needs every pair of patients compared on their
   risk scores, which no sum gives. Each node releases counts of its rows per
   (grid time, risk-score bin); the server counts the pairs. Pairs whose
   scores share a bin are counted as ties (1/2), so the result is within a
   stated bound of the exact C: ``concordance_bound`` = half the share of
   comparable pairs in one bin.

Every reply also names the design columns and strata the node built and
counts the rows it left out (missing values, outside the agreed strata).

Centring the covariates at their pooled means leaves the partial likelihood
unchanged and keeps ``exp(x'beta)`` finite. Steps are halved while the
partial likelihood does not increase; the fit stops when the Newton decrement
falls below ``tol``, fails after ``max_iter`` steps, and is refused when the
coefficients run off to infinity (monotone likelihood: a covariate that
separates events from non-events) or the information matrix is singular.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Annotated, ClassVar, TypeVar

import numpy as np
import pandas as pd
from flwr.serverapp import Grid
from pydantic import Field, field_validator, model_validator
from rich.text import Text
from scipy.stats import chi2

from oncofed.kernel.errors import QueryError, TaskFailed
from oncofed.kernel.schema import DatasetSchema
from oncofed.privacy.release import (
    AgreedIndices,
    Count,
    Counts,
    EventTimes,
    ModelStatistics,
    Release,
)
from oncofed.privacy.saturation import check_model_saturation
from oncofed.tasks.base import ColumnRole, LocalDataset, TaskType, WrittenAs, released
from oncofed.tasks.broadcast import broadcast
from oncofed.tasks.formula import (
    Factor,
    Formula,
    Term,
    check_formula,
    design_matrix,
    parse_formula,
    same_design,
)
from oncofed.tasks.messaging import wait_for_nodes
from oncofed.tasks.survival import (
    BoolArray,
    FloatArray,
    IntArray,
    SurvivalParams,
    category_codes,
    survival_rows,
)
from oncofed.tasks.wald import WaldCoefficients

MAX_STRATA = 1_000
MAX_HALVINGS = 30
# A step that still moves the linear predictor by this much (in standard
# deviations of the covariate) after the likelihood has stopped rising means
# the coefficient is running off to infinity.
DIVERGING_STEP = 1e-4


class CoxPHParams(SurvivalParams):
    SERVER_STATE: ClassVar[frozenset[str]] = frozenset(
        {"center", "event_times", "tied_times", "beta", "risk_edges"}
    )
    covariates: Annotated[Formula, WrittenAs('"age + C(sex) + ph.ecog"')] = Field(
        description="The covariates: numeric columns, or a formula right-hand side."
    )
    strata: tuple[str, ...] = Field(default=(), description="Columns whose levels are strata.")
    strata_categories: dict[str, tuple[str, ...]] | None = Field(
        default=None, description="Agreed levels per strata column (else the schema's)."
    )
    alpha: float = Field(default=0.05, gt=0, lt=1, description="1 - confidence level.")
    max_iter: int = Field(default=50, ge=1, le=1000, description="Newton step cap.")
    tol: float = Field(default=1e-12, gt=0, lt=1, description="Stop at this Newton decrement.")
    concordance: bool = Field(default=True, description="Also estimate Harrell's C.")
    concordance_bins: int = Field(
        default=200, ge=2, le=10_000, description="Risk-score bins for the concordance."
    )
    # Iteration state, set by the server.
    center: tuple[float, ...] | None = None
    event_times: tuple[tuple[float, ...], ...] | None = None
    tied_times: tuple[tuple[float, ...], ...] | None = None
    beta: tuple[float, ...] | None = None
    risk_edges: tuple[float, ...] | None = None

    @field_validator("covariates", mode="before")
    @classmethod
    def _parse_covariates(cls, covariates: object) -> object:
        if isinstance(covariates, str) or (
            isinstance(covariates, list | tuple) and all(isinstance(c, str) for c in covariates)
        ):
            return covariate_formula(covariates)
        return covariates

    @field_validator("strata", mode="before")
    @classmethod
    def _one_stratum(cls, strata: object) -> object:
        return (strata,) if isinstance(strata, str) else strata

    @model_validator(mode="after")
    def _right_hand_side(self) -> CoxPHParams:
        if self.covariates.response is not None:
            raise ValueError(
                "give the covariates only (e.g. 'age + C(sex)'): duration and event "
                "are separate parameters"
            )
        if not self.covariates.terms:
            raise ValueError("a Cox model needs at least one covariate")
        if not self.covariates.intercept:
            raise ValueError(
                "a Cox model has no intercept (the baseline hazard takes its place): "
                "remove '- 1' / '+ 0' from the formula"
            )
        if len(set(self.strata)) != len(self.strata):
            raise ValueError("strata must not repeat")
        unknown = set(self.strata_categories or {}) - set(self.strata)
        if unknown:
            raise ValueError(f"strata_categories for columns not in strata: {sorted(unknown)}")
        return self

    def required_columns(self) -> dict[str, ColumnRole]:
        roles = super().required_columns()
        factors = self.covariates.factors()
        roles.update({f.column: "factor" for f in factors if f.categorical})
        roles.update({f.column: "numeric" for f in factors if not f.categorical})
        roles.update(dict.fromkeys(self.strata, "group"))
        return roles

    def declared_levels(self) -> dict[str, tuple[str, ...]]:
        return self.covariates.declared_levels()

    def check_schema(self, schema: DatasetSchema, node: str) -> None:
        super().check_schema(schema, node)
        check_formula(self.covariates, schema, node)


def covariate_formula(covariates: Sequence[str] | str) -> Formula:
    """The model's right-hand side: a list of columns or terms, or formula text.

    Text is parsed like a formula without a response, e.g. ``"age + C(sex) +
    np.log(wt.loss)"`` (a leading ``~`` is fine). A list of plain column names
    is taken as numeric columns, whatever their names; a list holding terms
    (``["age", "C(sex)"]``, as a command line gives them) is read as their sum.
    """
    if not isinstance(covariates, str) and all(_PLAIN_NAME.fullmatch(c) for c in covariates):
        if not covariates:
            raise QueryError(
                "no covariates given",
                rule="coxph.covariates",
                fix="pass a list of columns or a formula right-hand side such as 'age + C(sex)'",
            )
        terms = tuple(Term(factors=(Factor(column=c),)) for c in dict.fromkeys(covariates))
        return Formula(terms=terms)
    text = covariates if isinstance(covariates, str) else " + ".join(covariates)
    formula = parse_formula(text, needs_response=False)
    if formula.response is not None:
        raise QueryError(
            f"the covariates {text!r} name a response",
            rule="query.formula_syntax",
            fix="give the right-hand side only, e.g. 'age + C(sex)': duration and "
            "event are separate arguments",
        )
    return formula


_PLAIN_NAME = re.compile(r"[^()+*:~`\s]+")
"""A column name, not a term: no operator, call or quoting."""


class CoxPHResult(WaldCoefficients):
    """A fitted Cox model, read like ``lifelines.CoxPHFitter``."""

    dataset: str
    duration: str
    event: str
    formula: str
    log_likelihood: float = Field(description="Log partial likelihood at the estimate.")
    log_likelihood_null: float = Field(description="Log partial likelihood at beta = 0.")
    n: int
    events: int
    strata: list[str]
    strata_levels: list[str]
    time_grid: str = Field(description="The agreed grid the durations were moved onto.")
    grid: float | None
    time_points: list[float] | None
    exact_times: bool
    alpha: float
    concordance: float | None = Field(description="Harrell's C, from risk-score bins.")
    concordance_bound: float | None = Field(description="|concordance - exact C| <= this.")
    comparable_pairs: int | None
    iterations: int
    converged: bool
    round_trips: int
    nodes: list[str]
    rows_used: dict[str, int]
    rows_dropped: dict[str, int] = Field(description="Rows with a missing value, per node.")
    rows_outside_strata: int = 0

    @property
    def hazard_ratios(self) -> pd.Series:
        return pd.Series(np.exp(self.coef), index=self.names, name="exp(coef)")

    @property
    def z(self) -> pd.Series:
        return self.wald_z()

    @property
    def pvalues(self) -> pd.Series:
        return self.wald_pvalues().rename("p")

    @property
    def aic_partial(self) -> float:
        return -2.0 * self.log_likelihood + 2.0 * len(self.names)

    def log_likelihood_ratio_test(self) -> tuple[float, int, float]:
        """Statistic, degrees of freedom and p-value against the model without covariates."""
        statistic = 2.0 * (self.log_likelihood - self.log_likelihood_null)
        df = len(self.names)
        return statistic, df, float(chi2.sf(statistic, df))

    def conf_int(self, alpha: float | None = None) -> pd.DataFrame:
        """Wald intervals for the coefficients (lifelines' ``confidence_intervals_``)."""
        alpha = self.alpha if alpha is None else alpha
        lower, upper = self.wald_interval(alpha)
        level = f"{1 - alpha:.0%}"
        return pd.DataFrame({f"coef lower {level}": lower, f"coef upper {level}": upper})

    def to_frame(self) -> pd.DataFrame:
        """lifelines' ``summary`` columns: coef, exp(coef), se, intervals, z, p."""
        ci = self.conf_int()
        lower, upper = ci.columns
        frame = pd.DataFrame(
            {
                "coef": self.params,
                "exp(coef)": self.hazard_ratios,
                "se(coef)": self.bse,
                lower: ci[lower],
                upper: ci[upper],
                f"exp({lower})": np.exp(ci[lower]),
                f"exp({upper})": np.exp(ci[upper]),
                "z": self.z,
                "p": self.pvalues,
            }
        )
        frame.index.name = "covariate"
        return frame

    def summary(self) -> str:
        statistic, df, p = self.log_likelihood_ratio_test()
        strata = f", strata {', '.join(self.strata)}" if self.strata else ""
        lines = [
            f"Cox proportional hazards (Efron ties), federated over {len(self.nodes)} nodes",
            f"dataset {self.dataset}: duration {self.duration!r}, event {self.event!r}{strata}",
            f"covariates {self.formula}",
            f"time grid: {self.time_grid}",
            f"subjects {self.n}, events {self.events}, partial log-likelihood "
            f"{self.log_likelihood:.4f}, {self.iterations} Newton steps "
            f"({'converged' if self.converged else 'not converged'}), "
            f"{self.round_trips} round trips",
            "",
            self.to_frame().to_string(float_format=lambda v: f"{v:.4g}"),
            "",
        ]
        if self.concordance is not None and self.concordance_bound is not None:
            lines.append(
                f"concordance {self.concordance:.4f} (within {self.concordance_bound:.1e} of "
                "Harrell's C: risk scores compared in bins)"
            )
        lines += [
            f"partial AIC {self.aic_partial:.2f}",
            f"log-likelihood ratio test {statistic:.2f} on {df} df, p = {p:.3g}",
        ]
        return "\n".join(lines)


# ---- releases ------------------------------------------------------------


class _CoxRelease(Release):
    """What every Cox reply holds: the design, the strata and the rows left out."""

    names: tuple[str, ...]
    """The covariates' design columns (from the formula and its agreed levels)."""
    levels: tuple[str, ...]
    """The strata: every combination of the agreed levels ("" when unstratified)."""
    rows_dropped: Count
    """Rows left out for a missing value."""
    rows_outside_strata: Count
    """Complete rows whose strata value is none of the agreed levels."""


class CoxSetupRelease(_CoxRelease):
    """The setup reply: rows, covariate sums and cross-products, and events per grid time.

    The event cells are the node's event counts per (stratum, grid time): the
    server pools them into the event times every Newton step evaluates at.
    """

    n: Count
    """Rows used."""
    sum_x: ModelStatistics
    """Column sums of the design, p (with ``xtx``, the pooled centre and spread)."""
    xtx: ModelStatistics
    """X'X, p x p."""
    event_x: ModelStatistics
    """Sum of the design over the node's events, p (the partial likelihood's linear part)."""
    event_stratum: AgreedIndices
    """Per event cell: its stratum's index into ``levels``."""
    event_time: EventTimes
    """Per event cell: its time on the agreed grid (exact, where the node's policy allows)."""
    event_count: Counts
    """Per event cell: the events there."""


class CoxRiskSetRelease(_CoxRelease):
    """A Newton step's reply: at the given coefficients, risk-set sums per pooled event time.

    Per stratum and event time (concatenated over strata) the sums over the
    node's rows still at risk of ``w = exp(x'beta)``, ``w x`` and ``w x x'``;
    per tied time the same sums over the node's events then (Efron's ties).
    """

    s0: ModelStatistics
    s1: ModelStatistics
    s2: ModelStatistics
    t0: ModelStatistics
    t1: ModelStatistics
    t2: ModelStatistics


class CoxConcordanceRelease(_CoxRelease):
    """The concordance reply: the node's rows counted per (grid time, risk-score bin) cell.

    A cell is ``time index * bins + bin``, both agreed by the request (the
    pooled event times, the risk-score edges); empty cells are not sent.
    """

    death_cell: AgreedIndices
    death_count: Counts
    """Events per death cell (event time, bin)."""
    risk_cell: AgreedIndices
    risk_count: Counts
    """Rows per risk cell (comparable with the deaths at the first k event times, bin)."""


COX_RELEASES: tuple[type[Release], ...] = (
    CoxSetupRelease,
    CoxRiskSetRelease,
    CoxConcordanceRelease,
)


# ---- node side ----------------------------------------------------------


@dataclass(frozen=True)
class CoxRows:
    """A node's complete rows inside the agreed strata: grid times, events, covariates."""

    time: FloatArray
    event: BoolArray
    x: FloatArray
    stratum: IntArray
    names: list[str]
    levels: list[str]
    rows_dropped: int
    rows_outside_strata: int


def cox_rows(params: CoxPHParams, local: LocalDataset) -> CoxRows:
    node = local.node_name
    columns = sorted(params.covariates.columns()) + list(params.strata)
    rows = survival_rows(params, local, columns)
    # Rows are complete in every formula column, so the design keeps them all, in order.
    design = design_matrix(params.covariates, rows.frame, local.schema, node)
    levels, stratum = _strata(params, local, rows.frame)
    inside = stratum >= 0
    x, names = design.x[inside, 1:], design.names[1:]
    check_model_saturation(
        len(names),
        int(inside.sum()),
        local.policy,
        node,
        "use fewer covariates, a wider where= filter, or fewer missing values",
    )
    return CoxRows(
        time=rows.time[inside],
        event=rows.event[inside],
        x=x,
        stratum=stratum[inside],
        names=names,
        levels=levels,
        rows_dropped=rows.rows_dropped,
        rows_outside_strata=int((~inside).sum()),
    )


def _strata(
    params: CoxPHParams, local: LocalDataset, frame: pd.DataFrame
) -> tuple[list[str], IntArray]:
    """Stratum labels (every combination of agreed levels) and each row's stratum (-1: none)."""
    if not params.strata:
        return [""], np.zeros(len(frame), dtype=np.int64)
    index = np.zeros(len(frame), dtype=np.int64)
    outside = np.zeros(len(frame), dtype=bool)
    per_column: list[tuple[str, ...]] = []
    for column in params.strata:
        levels, code = category_codes(
            column,
            (params.strata_categories or {}).get(column),
            local,
            frame,
            option="strata_categories",
            rule="coxph.strata_categories",
        )
        outside |= code < 0
        index = index * len(levels) + np.maximum(code, 0)
        per_column.append(levels)
    combos = list(itertools.product(*per_column))
    if len(combos) > MAX_STRATA:
        raise QueryError(
            f"{len(combos)} strata are more than {MAX_STRATA}",
            rule="coxph.strata",
            node=local.node_name,
            fix="stratify by fewer columns or agree fewer levels",
        )
    names = [
        ", ".join(f"{c}={v}" for c, v in zip(params.strata, combo, strict=True)) for combo in combos
    ]
    return names, np.where(outside, -1, index)


def coxph_setup_node(params: CoxPHParams, local: LocalDataset) -> CoxSetupRelease:
    rows = cox_rows(params, local)
    keys = np.stack([rows.stratum[rows.event].astype(float), rows.time[rows.event]], axis=1)
    cells, counts = np.unique(keys, axis=0, return_counts=True)
    return CoxSetupRelease(
        names=tuple(rows.names),
        levels=tuple(rows.levels),
        rows_dropped=rows.rows_dropped,
        rows_outside_strata=rows.rows_outside_strata,
        n=int(rows.time.size),
        sum_x=rows.x.sum(axis=0),
        xtx=rows.x.T @ rows.x,
        event_x=rows.x[rows.event].sum(axis=0),
        event_stratum=cells[:, 0].astype(np.int64),
        event_time=cells[:, 1].astype(np.float64),
        event_count=counts.astype(np.int64),
    )


def coxph_node(params: CoxPHParams, local: LocalDataset) -> CoxRiskSetRelease:
    if params.beta is None or params.center is None or params.event_times is None:
        raise _protocol_error(local.node_name, "coefficients and event times")
    if params.tied_times is None:
        raise _protocol_error(local.node_name, "tied event times")
    rows = cox_rows(params, local)
    x = rows.x - np.asarray(params.center)
    with np.errstate(over="ignore"):
        w = np.exp(x @ np.asarray(params.beta))
    risk: list[tuple[FloatArray, FloatArray, FloatArray]] = []
    ties: list[tuple[FloatArray, FloatArray, FloatArray]] = []
    for s, times in enumerate(params.event_times):
        mine = rows.stratum == s
        t, e, xs, ws = rows.time[mine], rows.event[mine], x[mine], w[mine]
        grid_times = np.asarray(times, dtype=float)
        # A row is at risk at every event time up to its own; sum it in at the last one.
        last = np.searchsorted(grid_times, t, side="right") - 1
        at = last >= 0
        s0, s1, s2 = _bucket_sums(last[at], ws[at], xs[at], grid_times.size)
        risk.append((_from_end(s0), _from_end(s1), _from_end(s2)))
        tied = np.asarray(params.tied_times[s], dtype=float)
        position = np.searchsorted(tied, t, side="left")
        hit = e & (position < tied.size)
        hit[hit] = tied[position[hit]] == t[hit]
        ties.append(_bucket_sums(position[hit], ws[hit], xs[hit], tied.size))

    def joined(parts: list[tuple[FloatArray, FloatArray, FloatArray]], i: int) -> FloatArray:
        return np.concatenate([part[i] for part in parts])

    return CoxRiskSetRelease(
        names=tuple(rows.names),
        levels=tuple(rows.levels),
        rows_dropped=rows.rows_dropped,
        rows_outside_strata=rows.rows_outside_strata,
        s0=joined(risk, 0),
        s1=joined(risk, 1),
        s2=joined(risk, 2),
        t0=joined(ties, 0),
        t1=joined(ties, 1),
        t2=joined(ties, 2),
    )


def coxph_concordance_node(params: CoxPHParams, local: LocalDataset) -> CoxConcordanceRelease:
    if params.beta is None or params.center is None or params.event_times is None:
        raise _protocol_error(local.node_name, "coefficients and event times")
    if params.risk_edges is None:
        raise _protocol_error(local.node_name, "risk-score bins")
    rows = cox_rows(params, local)
    bins = len(params.risk_edges) + 1
    score = (rows.x - np.asarray(params.center)) @ np.asarray(params.beta)
    bin_of = np.searchsorted(np.asarray(params.risk_edges), score, side="right")
    death_cells, risk_cells = [], []
    death_offset = risk_offset = 0
    for s, times in enumerate(params.event_times):
        mine = rows.stratum == s
        t, e, b = rows.time[mine], rows.event[mine], bin_of[mine]
        grid_times = np.asarray(times, dtype=float)
        earlier = np.searchsorted(grid_times, t, side="left")
        at_event_time = earlier < grid_times.size
        at_event_time[at_event_time] = grid_times[earlier[at_event_time]] == t[at_event_time]
        # Comparable with the deaths at the first k event times: those strictly before
        # the row's own time, and also those at it when the row was censored then.
        k = earlier + (~e & at_event_time)
        death_cells.append((death_offset + earlier[e]) * bins + b[e])
        # Rows comparable with no event (k = 0) would add nothing: they are not released.
        risk_cells.append((risk_offset + k[k > 0]) * bins + b[k > 0])
        death_offset += grid_times.size
        risk_offset += grid_times.size + 1
    deaths, death_counts = np.unique(np.concatenate(death_cells), return_counts=True)
    risks, risk_counts = np.unique(np.concatenate(risk_cells), return_counts=True)
    return CoxConcordanceRelease(
        names=tuple(rows.names),
        levels=tuple(rows.levels),
        rows_dropped=rows.rows_dropped,
        rows_outside_strata=rows.rows_outside_strata,
        death_cell=deaths.astype(np.int64),
        death_count=death_counts.astype(np.int64),
        risk_cell=risks.astype(np.int64),
        risk_count=risk_counts.astype(np.int64),
    )


def _bucket_sums(
    index: IntArray, w: FloatArray, x: FloatArray, size: int
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Per bucket: sum of w, of w x and of w x x' (bincount per entry: no n x p x p array)."""
    p = x.shape[1]
    wx = x * w[:, None]
    s1 = np.zeros((size, p))
    s2 = np.zeros((size, p, p))
    for j in range(p):
        s1[:, j] = _bincount(index, wx[:, j], size)
        for k in range(j, p):
            s2[:, j, k] = s2[:, k, j] = _bincount(index, wx[:, j] * x[:, k], size)
    return _bincount(index, w, size), s1, s2


def _bincount(index: IntArray, weights: FloatArray, size: int) -> FloatArray:
    """Sums of ``weights`` per index in ``range(size)``."""
    return np.bincount(index, weights=weights, minlength=size).astype(np.float64, copy=False)


def _from_end(values: FloatArray) -> FloatArray:
    """Sums over this bucket and all later ones (the risk set at each event time)."""
    out: FloatArray = np.cumsum(values[::-1], axis=0)[::-1]
    return out


def _protocol_error(node: str, missing: str) -> TaskFailed:
    return TaskFailed(
        f"the request carries no {missing}",
        rule="coxph.protocol",
        node=node,
        fix="submit Cox models through Session.coxph; the server sets the iteration state",
    )


# ---- server side --------------------------------------------------------


CR = TypeVar("CR", bound=_CoxRelease)
Parts = list[tuple[str, CR]]
"""One round's typed replies with the nodes they came from, in node order."""


def _round(
    grid: Grid,
    action: str,
    params: CoxPHParams,
    nodes: Sequence[int],
    label: str,
    kind: type[CR],
) -> Parts[CR]:
    replies = broadcast(grid, action, params, nodes, group_id=f"coxph/{label}")
    parts = released(replies, kind)
    names: list[str] | None = None
    for node, part in parts:
        names = same_design(names, list(part.names), node, "coxph")
    if names is None:
        raise AssertionError("broadcast returns at least one reply")
    return parts


def _total(arrays: Iterable[FloatArray]) -> FloatArray:
    """The nodes' sums added up (risk sets and cross-products span nodes)."""
    total: FloatArray = np.sum(np.stack(list(arrays)), axis=0)
    return total


@dataclass(frozen=True)
class _Evaluation:
    loglik: float
    gradient: FloatArray
    hessian: FloatArray


@dataclass(frozen=True)
class _EventTimes:
    times: list[FloatArray]
    counts: IntArray
    tied: list[FloatArray]
    tied_index: IntArray


def _event_times(setup: Parts[CoxSetupRelease], n_strata: int) -> _EventTimes:
    stratum = np.concatenate([part.event_stratum for _, part in setup])
    time = np.concatenate([part.event_time for _, part in setup])
    count = np.concatenate([part.event_count for _, part in setup])
    times, counts, tied, tied_index = [], [], [], []
    offset = 0
    for s in range(n_strata):
        mine = stratum == s
        unique, inverse = np.unique(time[mine], return_inverse=True)
        d = np.bincount(inverse, weights=count[mine], minlength=unique.size).astype(np.int64)
        times.append(unique)
        counts.append(d)
        tied.append(unique[d > 1])
        tied_index.append(offset + np.flatnonzero(d > 1))
        offset += unique.size
    return _EventTimes(
        times, np.concatenate(counts), tied, np.concatenate(tied_index).astype(np.int64)
    )


def _efron(
    replies: Parts[CoxRiskSetRelease], beta: FloatArray, events: _EventTimes, event_x: FloatArray
) -> _Evaluation:
    """Efron's log partial likelihood, gradient and Hessian from pooled risk-set sums."""
    sums = [part for _, part in replies]
    s0, s1, s2 = _total(p.s0 for p in sums), _total(p.s1 for p in sums), _total(p.s2 for p in sums)
    t0, t1, t2 = (np.zeros_like(a) for a in (s0, s1, s2))
    t0[events.tied_index] = _total(p.t0 for p in sums)
    t1[events.tied_index] = _total(p.t1 for p in sums)
    t2[events.tied_index] = _total(p.t2 for p in sums)
    d = events.counts
    time_of = np.repeat(np.arange(d.size), d)
    first = np.concatenate([[0], np.cumsum(d)[:-1]])
    # Efron: the l-th of d tied deaths sees the risk set minus l/d of the tied rows.
    phi = (np.arange(time_of.size) - first[time_of]) / d[time_of]
    with np.errstate(divide="ignore", invalid="ignore"):
        den = s0[time_of] - phi * t0[time_of]
        loglik = float(beta @ event_x - np.sum(np.log(den)))

        def per_time(values: FloatArray) -> FloatArray:
            return _bincount(time_of, values, d.size)

        c1, c2 = per_time(1.0 / den), per_time(phi / den)
        e0, e1, e2 = per_time(den**-2.0), per_time(phi / den**2), per_time(phi**2 / den**2)
    gradient = event_x - (c1 @ s1 - c2 @ t1)
    outer = (
        np.einsum("i,ij,ik->jk", e0, s1, s1)
        - np.einsum("i,ij,ik->jk", e1, s1, t1)
        - np.einsum("i,ij,ik->jk", e1, t1, s1)
        + np.einsum("i,ij,ik->jk", e2, t1, t1)
    )
    hessian = outer - np.einsum("i,ijk->jk", c1, s2) + np.einsum("i,ijk->jk", c2, t2)
    return _Evaluation(loglik, gradient, hessian)


def _newton_step(information: FloatArray, gradient: FloatArray) -> FloatArray | None:
    """The Newton step, or None when the information matrix is not positive definite."""
    scale = np.sqrt(np.diag(information))
    if not np.all(np.isfinite(information)) or np.any(scale <= 0):
        return None
    try:
        factor = np.linalg.cholesky(information / np.outer(scale, scale))
    except np.linalg.LinAlgError:
        return None
    y = np.linalg.solve(factor, gradient / scale)
    step: FloatArray = np.linalg.solve(factor.T, y) / scale
    return step


def _null_space_terms(information: FloatArray, names: list[str]) -> list[str]:
    """The covariates in the (near) null space of a singular information matrix."""
    scale = np.sqrt(np.clip(np.diag(information), 0.0, None))
    zero = [name for name, s in zip(names, scale, strict=True) if not s > 0]
    if zero:
        return zero
    _, vectors = np.linalg.eigh(information / np.outer(scale, scale))
    null = np.abs(vectors[:, 0])
    return [name for name, v in zip(names, null, strict=True) if v > 0.1 * null.max()]


def coxph_serve(grid: Grid, params: CoxPHParams) -> CoxPHResult:
    nodes = wait_for_nodes(grid, params)
    setup = _round(grid, "coxph_setup", params, nodes, "setup", CoxSetupRelease)
    setup_nodes = [node for node, _ in setup]
    everyone, names = ", ".join(setup_nodes), list(setup[0][1].names)
    levels = list(setup[0][1].levels)
    n = sum(part.n for _, part in setup)
    events = _event_times(setup, len(levels))
    total_events = int(events.counts.sum())
    if total_events == 0:
        raise QueryError(
            "no events in the rows used, so there is no partial likelihood",
            rule="coxph.no_events",
            node=everyone,
            fix="check the event column, the where= filter and missing values",
            column=params.event,
        )
    mean = _total(part.sum_x for _, part in setup) / n
    covariance = _total(part.xtx for _, part in setup) / n - np.outer(mean, mean)
    sd = np.sqrt(np.clip(np.diag(covariance), 0.0, None))
    state = params.model_copy(
        update={
            "center": tuple(float(v) for v in mean),
            "event_times": tuple(tuple(float(t) for t in ts) for ts in events.times),
            "tied_times": tuple(tuple(float(t) for t in ts) for ts in events.tied),
        }
    )
    event_x = _total(part.event_x for _, part in setup) - total_events * mean
    round_trips = 1

    def evaluate(beta: FloatArray, label: str) -> _Evaluation:
        nonlocal round_trips
        round_trips += 1
        at = state.model_copy(update={"beta": tuple(float(b) for b in beta)})
        risk_sets = _round(grid, "coxph", at, nodes, label, CoxRiskSetRelease)
        return _efron(risk_sets, beta, events, event_x)

    beta = np.zeros(len(names))
    current = evaluate(beta, "evaluate-0")
    loglik_null = current.loglik
    iterations, converged = 0, False
    step = _newton_step(-current.hessian, current.gradient)
    while step is not None and not converged and iterations < params.max_iter:
        iterations += 1
        # Newton converges quadratically near the optimum: once the decrement is below
        # tol, one more full step takes the error to rounding level, and the fit ends.
        converged = float(current.gradient @ step) / 2.0 < params.tol
        for halving in range(1 if converged else MAX_HALVINGS):
            candidate = beta + step / 2.0**halving
            trial = evaluate(candidate, f"step-{iterations}-{halving}")
            if converged or (
                np.isfinite(trial.loglik)
                and trial.loglik >= current.loglik - 1e-12 * abs(current.loglik)
            ):
                break
        else:
            raise TaskFailed(
                f"Newton step {iterations} found no higher partial likelihood after "
                f"{MAX_HALVINGS} halvings",
                rule="coxph.step",
                node=everyone,
                fix="rescale covariates (e.g. years instead of days) or simplify the model",
            )
        beta, current = candidate, trial
        step = _newton_step(-current.hessian, current.gradient)
    if step is None:
        terms = _null_space_terms(-current.hessian, names)
        if iterations == 0:
            raise QueryError(
                f"the covariates {', '.join(terms)} are constant or collinear in the risk "
                "sets, so their effects cannot be told apart",
                rule="coxph.collinear",
                node=everyone,
                fix="remove one of these terms (or a redundant level) from the formula",
                terms=terms,
            )
        raise _separation(terms, everyone)
    diverging = [
        names[j] for j in np.argsort(-np.abs(step) * sd) if abs(step[j]) * sd[j] > DIVERGING_STEP
    ]
    if diverging and converged:
        raise _separation(diverging, everyone)
    if not converged:
        remaining = float(current.gradient @ step) / 2.0
        raise TaskFailed(
            f"Newton-Raphson did not converge in {params.max_iter} steps: the Newton "
            f"decrement is still {remaining:.2g} (tol {params.tol:g})",
            rule="coxph.not_converged",
            node=everyone,
            fix="raise max_iter, rescale covariates, or simplify the model",
            terms=diverging,
        )
    covariance_beta = np.linalg.inv(-current.hessian)
    concordance = bound = pairs = None
    if params.concordance:
        lp_sd = math.sqrt(max(float(beta @ covariance @ beta), 0.0))
        edges = [
            lp_sd * NormalDist().inv_cdf(i / params.concordance_bins)
            for i in range(1, params.concordance_bins)
        ]
        at = state.model_copy(
            update={"beta": tuple(float(b) for b in beta), "risk_edges": tuple(edges)}
        )
        round_trips += 1
        concordance, bound, pairs = _concordance(
            _round(grid, "coxph_concordance", at, nodes, "concordance", CoxConcordanceRelease),
            [ts.size for ts in events.times],
            params.concordance_bins,
        )
    return CoxPHResult(
        dataset=params.dataset,
        duration=params.duration,
        event=params.event,
        formula=params.covariates.text.removeprefix("~ "),
        names=names,
        coef=beta.tolist(),
        cov=covariance_beta.tolist(),
        log_likelihood=current.loglik,
        log_likelihood_null=loglik_null,
        n=n,
        events=total_events,
        strata=list(params.strata),
        strata_levels=levels if params.strata else [],
        time_grid=params.time_grid,
        grid=params.grid,
        time_points=list(params.time_points) if params.time_points is not None else None,
        exact_times=params.exact_times,
        alpha=params.alpha,
        concordance=concordance,
        concordance_bound=bound,
        comparable_pairs=pairs,
        iterations=iterations,
        converged=converged,
        round_trips=round_trips,
        nodes=setup_nodes,
        rows_used={node: part.n for node, part in setup},
        rows_dropped={node: part.rows_dropped for node, part in setup},
        rows_outside_strata=sum(part.rows_outside_strata for _, part in setup),
    )


def _separation(terms: list[str], everyone: str) -> TaskFailed:
    return TaskFailed(
        f"the coefficients of {', '.join(terms)} grow without bound: the partial likelihood "
        "keeps rising towards a limit (monotone likelihood, e.g. a covariate that separates "
        "the patients who had the event from those who did not), so no estimate exists",
        rule="coxph.separation",
        node=everyone,
        fix="drop or merge the terms or levels that predict the event perfectly, "
        "or fit a simpler model",
        terms=terms,
    )


def _concordance(
    replies: Parts[CoxConcordanceRelease], sizes: list[int], bins: int
) -> tuple[float | None, float | None, int]:
    """Harrell's C from (time, risk bin) counts; same-bin pairs count 1/2, bounding the error."""
    total_times = sum(sizes)
    deaths = np.zeros(total_times * bins)
    risks = np.zeros((total_times + len(sizes)) * bins)
    for _, part in replies:
        deaths += np.bincount(part.death_cell, weights=part.death_count, minlength=deaths.size)
        risks += np.bincount(part.risk_cell, weights=part.risk_count, minlength=risks.size)
    deaths_by = deaths.reshape(total_times, bins)
    risks_by = risks.reshape(total_times + len(sizes), bins)
    pairs = correct = same = 0.0
    death_offset = risk_offset = 0
    for m in sizes:
        dead = deaths_by[death_offset : death_offset + m]
        # Comparable with the deaths at event time i: rows with k >= i + 1.
        comparable = _from_end(risks_by[risk_offset : risk_offset + m + 1])[1:]
        lower = np.cumsum(comparable, axis=1) - comparable
        pairs += float(np.sum(dead * comparable.sum(axis=1, keepdims=True)))
        correct += float(np.sum(dead * lower))
        same += float(np.sum(dead * comparable))
        death_offset += m
        risk_offset += m + 1
    if pairs == 0:
        return None, None, 0
    return (correct + 0.5 * same) / pairs, 0.5 * same / pairs, int(pairs)


def coxph_table(result: CoxPHResult) -> Text:
    """lifelines' summary layout, as text (rich would read ``[T.level]`` as markup)."""
    return Text(result.summary())


TASK: TaskType[CoxPHParams, CoxPHResult] = TaskType(
    name="coxph",
    params=CoxPHParams,
    result=CoxPHResult,
    serve=coxph_serve,
    node_handlers={
        "coxph_setup": coxph_setup_node,
        "coxph": coxph_node,
        "coxph_concordance": coxph_concordance_node,
    },
    releases=COX_RELEASES,
    summary="Cox proportional hazards (Efron ties) by federated Newton-Raphson",
    arguments=("duration", "event", "covariates"),
    table=coxph_table,
)

__all__ = ["TASK", "CoxPHParams", "CoxPHResult", "covariate_formula"]
