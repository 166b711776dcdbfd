"""Cox proportional hazards, fitted by federated Newton-Raphson on the agreed time grid.

A node derives everything it can itself and takes from the coordinator only
what only the server can choose: the next coefficients, inside a box.
Durations are on the grid the researcher signed (``grid``, ``time_points``,
or exact times where the node's policy allows), so each node sums its rows
per *cell* of that grid -- the rows whose time falls on the cell's grid
point -- and never needs a list of pooled event times: the server forms each
risk set as the reverse cumulative sum of the cells, adding the nodes' sums
(post-processing). Covariates are centred at a public centre every node
derives identically (the midpoint of the public bounds of a design column,
from the schema or the request's ``bounds=``; 0 without bounds); centring
leaves the partial likelihood unchanged and keeps ``exp(x'beta)`` finite.

Rounds (each one message per node):

1. ``coxph_setup`` (``CoxSetupRelease``): rows, column sums and cross-products
   (the pooled spread, for the divergence check and the concordance bins),
   the sum of the covariates over events, and the public centre and range of
   every design column, which the server checks the nodes agree on.
2. ``coxph`` (``CoxCellSumsRelease``) at coefficients beta, once per
   likelihood evaluation: per stratum and occupied grid cell, the sums over
   the node's rows ending there of ``w = exp(x'beta)``, ``w x`` and ``w x x'``,
   the same sums over its events there (Efron's ties), and its events there.
   The server evaluates Efron's log partial likelihood, gradient and Hessian
   exactly -- as ``lifelines.CoxPHFitter`` does on the pooled rows with their
   durations on the grid.
3. ``coxph_concordance`` (``CoxConcordanceRelease``) at the fitted
   coefficients: Harrell's C compares pairs of patients on their risk scores,
   which no sum gives. Each node counts its rows per (cell, event or not,
   risk-score bin); the server counts the pairs. Pairs whose scores share a
   bin count as ties (1/2), so the result is within ``concordance_bound`` =
   half the share of comparable pairs in one bin of the exact C.

Coefficients a node evaluates must lie in a box: a log hazard ratio of at most
``MAX_LOG_HAZARD_RATIO`` across a covariate's public range (per unit where no
range is declared). The server treats a Newton step leaving the box as
coefficients running off to infinity (monotone likelihood).

With ``dp=`` (the request's epsilon is the whole fit at each node) every
covariate is clamped to its public bounds and scaled to [-1, 1], ties are
Breslow's (Efron's would release the events' sums per cell as well, at more
noise), and the fit takes ``max_iter`` Newton steps (default
``DP_DEFAULT_STEPS``), each with the information approximated by the events
times the covariates' pooled covariance. The setup release holds everything
the first step from beta = 0 needs: noisy events per agreed cell (every
cell, occupied or not), the noisy sum of x over all events, the noisy rows
and sum of x ending in each cell, and noisy moments for the information.
Each further step is one release of noisy sums of ``w`` and ``w x`` per cell
at the coordinator's coefficients, whose noise grows as exp(sum |beta_j|
h_j): the setup costs half of rho (all of it for one step) and the steps
share the rest. A coordinator asking for more steps only spends the budget.
Noisy matrices and risk sets are made usable by post-processing (eigenvalues
and risk sets floored at their noise, risk-set means kept in the box); the
standard errors add the noise's variance propagated through the score;
concordance is not estimated (its pair counts have no DP mechanism here).

Every reply also names the design columns and strata the node built and
counts the rows it left out (missing values, outside the agreed strata).
The fit stops when the Newton decrement falls below ``tol`` (steps halved
while the partial likelihood does not increase), fails after ``max_iter``
steps, and is refused when the coefficients run off to infinity or the
information matrix is singular.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Annotated, Any, ClassVar, TypeVar

import numpy as np
import pandas as pd
from flwr.serverapp import Grid
from pydantic import Field, field_validator, model_validator
from rich.text import Text
from scipy.stats import chi2

from oncofed.kernel.errors import Hole, NodeRefusal, Param, QueryError, TaskFailed
from oncofed.kernel.schema import DatasetSchema
from oncofed.privacy.accounting import PrivacyLoss
from oncofed.privacy.disclosure import check_cells, check_dominance, largest_terms_by_cell
from oncofed.privacy.dp import ZCDPRelease
from oncofed.privacy.release import (
    AgreedIndices,
    AgreedValues,
    Count,
    Counts,
    EventTimes,
    ModelStatistics,
    Release,
)
from oncofed.privacy.saturation import check_model_saturation
from oncofed.tasks.base import (
    ColumnRole,
    DPReport,
    LocalDataset,
    PublicBounds,
    TaskType,
    WrittenAs,
    released,
)
from oncofed.tasks.broadcast import broadcast
from oncofed.tasks.formula import (
    Factor,
    Formula,
    Term,
    agreed_levels,
    check_formula,
    design_matrix,
    parse_formula,
    same_design,
)
from oncofed.tasks.messaging import wait_for_nodes
from oncofed.tasks.survival import (
    MAX_TIME_POINTS,
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
MAX_LOG_HAZARD_RATIO = 20.0
"""The coefficient box: no real fit has a hazard ratio of e^20 across a covariate's range,
while large coefficients make exp(x'beta) pick out the extreme row of each cell."""
DP_MAX_ITER = 20
"""Most noisy Newton steps one DP fit may pay for (each later step costs a share of the budget)."""
DP_DEFAULT_STEPS = 1
EXACT_MAX_ITER = 50
"""Under dp, one Newton step from beta = 0 unless the researcher asks for more: its sums are
the setup's, at the smallest sensitivity, while a later step at beta costs exp(sum |beta_j| h_j)
times the noise (see ``NoisyCoxCellSumsRelease``), which swamps its gain unless epsilon is
large or the hazard ratios across the covariates' ranges are small."""
DP_SETUP_SHARE = 0.5
"""The setup's share of rho when further steps follow; they split the rest evenly."""
SETUP_SHARES = {"events": 0.1, "rows": 0.05, "event_x": 0.3, "risk": 0.4, "moments": 0.15}
"""How the setup's rho is split. The events' sum of x and the risk sets' sums make the score
(whose noise stays in the coefficients); the moments only scale the steps; counts are cheap."""


class CoxPHParams(SurvivalParams):
    DP = True
    SERVER_STATE: ClassVar[frozenset[str]] = frozenset({"beta", "risk_edges"})
    covariates: Annotated[Formula, WrittenAs('"age + C(sex) + ph.ecog"')] = Field(
        description="The covariates: numeric columns, or a formula right-hand side."
    )
    strata: tuple[str, ...] = Field(default=(), description="Columns whose levels are strata.")
    strata_categories: dict[str, tuple[str, ...]] | None = Field(
        default=None, description="Agreed levels per strata column (else the schema's)."
    )
    alpha: float = Field(default=0.05, gt=0, lt=1, description="1 - confidence level.")
    max_iter: int | None = Field(
        default=None,
        ge=1,
        le=1000,
        description=(
            f"Newton step cap (default {EXACT_MAX_ITER}); with dp the number of noisy steps "
            f"(default {DP_DEFAULT_STEPS}, at most {DP_MAX_ITER}), each after the first "
            "costing a share of the budget."
        ),
    )
    tol: float = Field(default=1e-12, gt=0, lt=1, description="Stop at this Newton decrement.")
    concordance: bool = Field(default=True, description="Also estimate Harrell's C (not with dp).")
    concordance_bins: int = Field(
        default=200, ge=2, le=10_000, description="Risk-score bins for the concordance."
    )
    bounds: PublicBounds = Field(
        default_factory=dict,
        description=(
            "Public (lo, hi) per covariate (and, for dp with grid=, the duration) where the "
            "node schema declares none: the centre, the coefficient box and, with dp, the "
            "clamp. Never derive them from the data."
        ),
    )
    # Iteration state, set by the server.
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

    @property
    def iterations(self) -> int:
        """The step cap asked for, else the mode's default (a DP step is paid for)."""
        if self.max_iter is not None:
            return self.max_iter
        return DP_DEFAULT_STEPS if self.dp is not None else EXACT_MAX_ITER

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
        if self.dp is not None and self.iterations > DP_MAX_ITER:
            raise ValueError(
                f"with dp, max_iter may be at most {DP_MAX_ITER}: every step after the first "
                f"costs a share of the fit's budget (the default, {DP_DEFAULT_STEPS}, is "
                "usually the most accurate)"
            )
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
        if self.dp is not None:
            dp_time_points(self, schema, node)
            missing = [
                name
                for name, bound in zip(
                    design_names(self, schema, node), design_bounds(self, schema, node), strict=True
                )
                if bound is None
            ]
            if missing:
                raise QueryError(
                    f"a DP Cox fit needs public bounds for every design column; "
                    f"{', '.join(missing)} has none",
                    rule="privacy.bounds_required",
                    node=node,
                    fix=f"pass {Param('bounds', {Hole('column'): (Hole('lo'), Hole('hi'))})} "
                    "from domain knowledge for plain numeric "
                    "covariates (transforms have no bounds: use the column itself), or ask the "
                    "node operator to declare bounds in the node schema",
                )

    def release_loss(self) -> PrivacyLoss | None:
        """The setup (no coefficients yet) or one later step: the shares add to the whole fit."""
        if self.dp is None:
            return None
        return PrivacyLoss.from_rho(self.dp_rho(setup=self.beta is None))

    def dp_rho(self, *, setup: bool) -> float:
        """The rho of one DP message: the setup holds the first step's sums, at beta = 0."""
        if self.dp is None:
            raise AssertionError("only DP requests have a DP budget")
        if self.iterations == 1:
            return self.dp.rho
        if setup:
            return DP_SETUP_SHARE * self.dp.rho
        return (1.0 - DP_SETUP_SHARE) * self.dp.rho / (self.iterations - 1)


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
    ties: str = Field(default="efron", description="How tied events are handled.")
    privacy: DPReport | None = Field(
        default=None, description="What the fit cost at each node and its noise (dp only)."
    )

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
            f"Cox proportional hazards ({self.ties.capitalize()} ties), federated over "
            f"{len(self.nodes)} nodes",
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
        if self.privacy is not None:
            spent = max(self.privacy.epsilon.values(), default=0.0)
            lines.append(
                f"differential privacy: epsilon {spent:.3g} at delta {self.privacy.delta:g} per "
                "node; standard errors include the noise; no concordance"
            )
        lines += [
            f"partial AIC {self.aic_partial:.2f}",
            f"log-likelihood ratio test {statistic:.2f} on {df} df, p = {p:.3g}",
        ]
        return "\n".join(lines)


# ---- what every node derives from the request and its schema -------------


def _design_columns(
    params: CoxPHParams, schema: DatasetSchema, node: str
) -> list[tuple[str, tuple[float, float] | None]]:
    """Each design column's name and public range, in ``design_matrix``'s order.

    A factor's dummy lies in [0, 1]; a plain numeric column in its schema bounds
    (else the request's); a transform has no declared range; an interaction
    lies in the product of its factors' ranges.
    """
    columns: list[tuple[str, tuple[float, float] | None]] = []
    for term in params.covariates.terms:
        parts: list[list[tuple[str, tuple[float, float] | None]]] = []
        for factor in term.factors:
            if factor.categorical:
                levels = agreed_levels(factor, schema, node)
                parts.append([(f"{factor.label}[T.{level}]", (0.0, 1.0)) for level in levels[1:]])
            elif factor.transform is not None:
                parts.append([(factor.label, None)])
            else:
                bound = schema.columns[factor.column].bounds or params.bounds.get(factor.column)
                parts.append([(factor.label, bound)])
        for combo in itertools.product(*parts):
            columns.append((":".join(name for name, _ in combo), _product([b for _, b in combo])))
    return columns


def _product(bounds: Sequence[tuple[float, float] | None]) -> tuple[float, float] | None:
    """The range of a product of factors with these ranges (None if one is unknown)."""
    lo, hi = 1.0, 1.0
    for bound in bounds:
        if bound is None:
            return None
        corners = [a * b for a in (lo, hi) for b in bound]
        lo, hi = min(corners), max(corners)
    return lo, hi


def design_names(params: CoxPHParams, schema: DatasetSchema, node: str) -> list[str]:
    return [name for name, _ in _design_columns(params, schema, node)]


def design_bounds(
    params: CoxPHParams, schema: DatasetSchema, node: str
) -> list[tuple[float, float] | None]:
    return [bound for _, bound in _design_columns(params, schema, node)]


@dataclass(frozen=True)
class PublicScale:
    """The centre and half-range of each design column, from public bounds only."""

    center: FloatArray
    half_width: FloatArray
    """0 where no range is declared (the coefficient box is then per unit)."""

    @classmethod
    def of(cls, params: CoxPHParams, schema: DatasetSchema, node: str) -> PublicScale:
        bounds = design_bounds(params, schema, node)
        center = [0.0 if b is None else (b[0] + b[1]) / 2.0 for b in bounds]
        half = [0.0 if b is None else (b[1] - b[0]) / 2.0 for b in bounds]
        return cls(np.asarray(center, dtype=float), np.asarray(half, dtype=float))

    def box(self) -> FloatArray:
        """The largest |coefficient| a node evaluates, per design column."""
        span = np.where(self.half_width > 0, 2.0 * self.half_width, 1.0)
        limit: FloatArray = MAX_LOG_HAZARD_RATIO / span
        return limit


def outside_box(beta: FloatArray, box: FloatArray, names: Sequence[str]) -> list[str]:
    return [name for name, b, limit in zip(names, beta, box, strict=True) if not abs(b) <= limit]


def dp_time_points(params: CoxPHParams, schema: DatasetSchema, node: str) -> FloatArray:
    """The agreed cells of a DP fit: every node releases every one, occupied or not.

    Under dp the cells must not depend on the data: ``time_points`` as they
    are, or multiples of ``grid`` up to the duration's public upper bound.
    """
    if params.time_points is not None:
        return np.asarray(params.time_points, dtype=float)
    bound = schema.columns[params.duration].bounds or params.bounds.get(params.duration)
    if params.grid is None or bound is None:
        raise QueryError(
            "a DP Cox fit needs cells fixed by the request: the set of occupied times "
            "would itself be data",
            rule="coxph.dp_time_grid",
            node=node,
            fix=f"pass {Param('time_points', Hole.items())}, or {Param('grid', Hole('width'))} "
            f"with {Param('bounds', {params.duration: (0, Hole('longest follow-up'))})} (or "
            "schema bounds for the duration)",
            column=params.duration,
        )
    cells = math.ceil(bound[1] / params.grid)
    if not 0 < cells <= MAX_TIME_POINTS:
        raise QueryError(
            f"grid {params.grid:g} up to {bound[1]:g} makes {cells} cells, not 1 to "
            f"{MAX_TIME_POINTS}",
            rule="coxph.dp_time_grid",
            node=node,
            fix=f"use a wider {Param('grid')} or {Param('time_points')}",
            column=params.duration,
        )
    return params.grid * np.arange(1, cells + 1, dtype=float)


# ---- releases ------------------------------------------------------------


class _CoxRelease(Release):
    """What every Cox reply holds: the design, the strata and the rows left out."""

    names: tuple[str, ...]
    """The covariates' design columns (from the formula and its agreed levels)."""
    levels: tuple[str, ...]
    """The strata: every combination of the agreed levels ("" when unstratified)."""
    rows_dropped: Count
    """Rows left out for a missing value (with dp: noisy, in the setup reply; 0 in steps)."""
    rows_outside_strata: Count
    """Complete rows whose strata value is none of the agreed levels (as ``rows_dropped``)."""


class CoxSetupRelease(_CoxRelease):
    """The exact setup reply: rows, events, covariate sums and cross-products."""

    n: Count
    events: Count
    sum_x: ModelStatistics
    """Column sums of the design, p (with ``xtx``, the pooled spread)."""
    xtx: ModelStatistics
    """X'X, p x p."""
    event_x: ModelStatistics
    """Sum of the design over the node's events, p (the partial likelihood's linear part)."""
    center: AgreedValues
    """The public centre of each design column (midpoint of its bounds; 0 without)."""
    half_width: AgreedValues
    """Half the public range of each design column (0 without bounds)."""


class NoisyCoxSetupRelease(_CoxRelease):
    """The DP setup reply: the first Newton step's sums at beta = 0, and the information.

    Cell ``i`` is stratum ``cell_stratum[i]`` at grid point ``cell_time[i]``;
    every stratum has every agreed point, so the cells say nothing of the data.
    The design is clamped to its public bounds and scaled to [-1, 1] first.
    """

    n: Count
    cell_stratum: AgreedIndices
    cell_time: AgreedValues
    events: Counts
    """Noisy events per cell (discrete Gaussian, as drawn: negatives too)."""
    event_x: ModelStatistics
    """Noisy sum of the design over all events, p: one total, not per cell (less noise)."""
    a0: ModelStatistics
    """Noisy rows ending in each cell (``a0`` of a step at beta = 0)."""
    a1: ModelStatistics
    """Noisy sum of the design over the rows ending in each cell, cells x p."""
    moments: ModelStatistics
    """Noisy sum of x and of x x' over all rows, p + p x p: the Newton steps' information."""
    center: AgreedValues
    half_width: AgreedValues


class CoxCellSumsRelease(_CoxRelease):
    """An exact Newton step's reply: at the given coefficients, sums per occupied grid cell.

    Cell ``i`` is stratum ``cell_stratum[i]`` at time ``cell_time[i]`` (a grid
    point; an exact time only where the node's policy allows it). Over the
    node's rows ending there: ``a0`` = sum of ``w = exp(x'beta)``, ``a1`` of
    ``w x``, ``a2`` of ``w x x'``; ``e0``-``e2`` the same over its events there.
    """

    cell_stratum: AgreedIndices
    cell_time: EventTimes
    events: Counts
    a0: ModelStatistics
    a1: ModelStatistics
    a2: ModelStatistics
    e0: ModelStatistics
    e1: ModelStatistics
    e2: ModelStatistics


class NoisyCoxCellSumsRelease(_CoxRelease):
    """A DP Newton step's reply: noisy ``a0`` and ``a1`` in every agreed cell.

    Cells are those of the setup reply, in its order. Covariates are clamped to
    their public bounds and divided by their half-ranges ``h`` before anything
    is summed, so one row moves ``(a0, a1)`` by at most
    ``exp(sum |beta_j| h_j) * sqrt(1 + p)``.
    """

    a0: ModelStatistics
    a1: ModelStatistics


class CoxConcordanceRelease(_CoxRelease):
    """The concordance reply: the node's rows counted per (cell, event or not, risk bin).

    A count's position is ``cell * bins + bin`` into the node's cells
    (``cell_stratum``, ``cell_time``); the risk-score edges are the request's.
    Empty positions are not sent.
    """

    cell_stratum: AgreedIndices
    cell_time: EventTimes
    death_cell: AgreedIndices
    death_count: Counts
    """Rows with an event, per (cell, bin)."""
    censored_cell: AgreedIndices
    censored_count: Counts
    """Rows censored, per (cell, bin)."""


COX_RELEASES: tuple[type[Release], ...] = (
    CoxSetupRelease,
    NoisyCoxSetupRelease,
    CoxCellSumsRelease,
    NoisyCoxCellSumsRelease,
    CoxConcordanceRelease,
)


# ---- node side ----------------------------------------------------------


@dataclass(frozen=True)
class CoxRows:
    """A node's complete rows inside the agreed strata: grid times, events, covariates.

    ``x`` is centred at the public centre; under dp it is first clamped to the
    public range and divided by its half-width, so ``|x_j| <= 1`` and one row's
    sums have the same bound whatever units the covariates are in.
    """

    time: FloatArray
    event: BoolArray
    x: FloatArray
    stratum: IntArray
    names: list[str]
    levels: list[str]
    scale: PublicScale
    rows_dropped: int
    rows_outside_strata: int


def cox_rows(params: CoxPHParams, local: LocalDataset) -> CoxRows:
    node = local.node_name
    columns = sorted(params.covariates.columns()) + list(params.strata)
    rows = survival_rows(params, local, columns)
    # Rows are complete in every formula column, so the design keeps them all, in order
    # -- but for values a DP release leaves out rather than refuse.
    design = design_matrix(
        params.covariates, rows.frame, local.schema, node, drop_invalid=params.dp is not None
    )
    levels, stratum = _strata(params, local, rows.frame)
    in_strata = stratum >= 0
    inside = in_strata & design.kept
    x, names = design.x[in_strata[design.kept], 1:], design.names[1:]
    if params.dp is None:
        # A DP release skips rules that depend on exact counts: the refusal would leak them.
        check_model_saturation(
            len(names),
            int(inside.sum()),
            local.policy,
            node,
            f"use fewer covariates, a wider {Param('where')} filter, or fewer missing values",
        )
    scale = PublicScale.of(params, local.schema, node)
    x = x - scale.center
    if params.dp is not None:
        x = np.clip(x, -scale.half_width, scale.half_width) / scale.half_width
    return CoxRows(
        time=rows.time[inside],
        event=rows.event[inside],
        x=x,
        stratum=stratum[inside],
        names=names,
        levels=levels,
        scale=scale,
        rows_dropped=rows.rows_dropped + design.rows_dropped,
        rows_outside_strata=int((~in_strata).sum()),
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
            per_column=True,
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


@dataclass(frozen=True)
class _Cells:
    """The cells a node sums over, and each row's cell."""

    stratum: IntArray
    time: FloatArray
    of_row: IntArray
    event: BoolArray
    """Event flags, with events after the last agreed point censored there (dp)."""


def _occupied_cells(rows: CoxRows) -> _Cells:
    """Exact releases: the (stratum, grid time) cells where some row ends."""
    keys = np.stack([rows.stratum.astype(float), rows.time], axis=1)
    cells, inverse = np.unique(keys, axis=0, return_inverse=True)
    return _Cells(
        cells[:, 0].astype(np.int64), cells[:, 1], inverse.reshape(-1).astype(np.int64), rows.event
    )


def _agreed_cells(params: CoxPHParams, local: LocalDataset, rows: CoxRows) -> _Cells:
    """DP releases: every agreed point in every stratum; follow-up ends at the last point."""
    points = dp_time_points(params, local.schema, local.node_name)
    position = np.searchsorted(points, rows.time, side="left")
    beyond = position >= points.size
    strata = len(rows.levels)
    return _Cells(
        np.repeat(np.arange(strata, dtype=np.int64), points.size),
        np.tile(points, strata),
        rows.stratum * points.size + np.minimum(position, points.size - 1),
        rows.event & ~beyond,
    )


def _checked_beta(params: CoxPHParams, rows: CoxRows, node: str) -> FloatArray:
    """The server's coefficients, refused unless they are p finite values inside the box."""
    if params.beta is None:
        raise _protocol_error(node, "coefficients")
    beta = np.asarray(params.beta, dtype=float)
    outside = (
        outside_box(beta, rows.scale.box(), rows.names)
        if beta.size == len(rows.names)
        else list(rows.names)
    )
    if outside:
        raise NodeRefusal(
            f"the coefficients of {', '.join(outside)} are missing or outside the box this "
            f"node evaluates (a log hazard ratio of at most {MAX_LOG_HAZARD_RATIO:g} across "
            "a covariate's public range, or per unit without one)",
            rule="coxph.coefficients",
            node=node,
            fix="rescale the covariates or declare their bounds; a coordinator that sends "
            "such coefficients is not following the protocol",
            terms=outside,
        )
    return beta


def _dp_release(params: CoxPHParams, *, setup: bool) -> ZCDPRelease:
    if params.dp is None:
        raise AssertionError("only DP requests make a DP release")
    return ZCDPRelease(budget=params.dp_rho(setup=setup), delta=params.dp.delta)


def coxph_setup_node(params: CoxPHParams, local: LocalDataset) -> Release:
    rows = cox_rows(params, local)
    if params.dp is None:
        return CoxSetupRelease(
            names=tuple(rows.names),
            levels=tuple(rows.levels),
            center=rows.scale.center,
            half_width=rows.scale.half_width,
            rows_dropped=rows.rows_dropped,
            rows_outside_strata=rows.rows_outside_strata,
            n=int(rows.time.size),
            events=int(rows.event.sum()),
            sum_x=rows.x.sum(axis=0),
            xtx=rows.x.T @ rows.x,
            event_x=rows.x[rows.event].sum(axis=0),
        )
    cells = _agreed_cells(params, local, rows)
    size, e = cells.time.size, cells.event
    release = _dp_release(params, setup=True)
    share = {part: fraction * release.budget for part, fraction in SETUP_SHARES.items()}
    # One row moves one cell's events, and one of n and the rows-left-out counts, by one.
    events = release.counts("events", np.bincount(cells.of_row[e], minlength=size), share["events"])
    counts = release.counts(
        "rows", [rows.time.size, rows.rows_dropped, rows.rows_outside_strata], share["rows"]
    )
    p = len(rows.names)
    # |x_j| <= 1 after scaling: one row moves the events' sum by sqrt(p), one cell's
    # (count, sum of x) by sqrt(1 + p), and (sum x, sum x x') by sqrt(p + p^2).
    event_x = release.floats("event_x", rows.x[e].sum(axis=0), share["event_x"], math.sqrt(p))
    a0, a1, _ = _bucket_sums(cells.of_row, np.ones(rows.time.size), rows.x, size)
    risk = release.floats(
        "risk", np.concatenate([a0[:, None], a1], axis=1), share["risk"], math.sqrt(1.0 + p)
    )
    moments = release.floats(
        "moments",
        np.concatenate([rows.x.sum(axis=0), (rows.x.T @ rows.x).ravel()]),
        share["moments"],
        math.sqrt(p + p * p),
    )
    # Counts go out as drawn, negatives too: clipping each node's cells at zero would add
    # a positive bias per cell that grows with the grid; the coordinator clips the pooled sums.
    return NoisyCoxSetupRelease(
        names=tuple(rows.names),
        levels=tuple(rows.levels),
        center=rows.scale.center,
        half_width=rows.scale.half_width,
        rows_dropped=int(counts[1]),
        rows_outside_strata=int(counts[2]),
        n=int(counts[0]),
        cell_stratum=cells.stratum,
        cell_time=cells.time,
        events=events,
        event_x=event_x,
        a0=risk[:, 0],
        a1=risk[:, 1:],
        moments=moments,
        privacy=dict(release.record()),
    )


def coxph_node(params: CoxPHParams, local: LocalDataset) -> Release:
    rows = cox_rows(params, local)
    beta = _checked_beta(params, rows, local.node_name)
    if params.dp is None:
        w = np.exp(rows.x @ beta)
        cells = _occupied_cells(rows)
        size, e = cells.time.size, cells.event
        _check_cells(np.bincount(cells.of_row, minlength=size), rows, local)
        _check_cell_dominance(cells.of_row, w, rows.x, size, local)
        _check_cell_dominance(cells.of_row[e], w[e], rows.x[e], size, local)
        a0, a1, a2 = _bucket_sums(cells.of_row, w, rows.x, size)
        e0, e1, e2 = _bucket_sums(cells.of_row[e], w[e], rows.x[e], size)
        return CoxCellSumsRelease(
            **_exact_cells(rows, cells),
            events=np.bincount(cells.of_row[e], minlength=size),
            a0=a0,
            a1=a1,
            a2=a2,
            e0=e0,
            e1=e1,
            e2=e2,
        )
    cells = _agreed_cells(params, local, rows)
    size = cells.time.size
    # x is in half-widths here: the same coefficients, scaled alike, give the same w.
    scaled = beta * rows.scale.half_width
    w = np.exp(rows.x @ scaled)
    a0, a1, _ = _bucket_sums(cells.of_row, w, rows.x, size)
    # The sensitivity holds for every row, whatever the data: x is clamped, beta is public.
    most_w = math.exp(float(np.abs(scaled).sum()))
    release = _dp_release(params, setup=False)
    noisy = release.floats(
        "risk",
        np.concatenate([a0[:, None], a1], axis=1),
        release.budget,
        most_w * math.sqrt(1.0 + len(rows.names)),
    )
    return NoisyCoxCellSumsRelease(
        names=tuple(rows.names),
        levels=tuple(rows.levels),
        rows_dropped=0,
        rows_outside_strata=0,
        a0=noisy[:, 0],
        a1=noisy[:, 1:],
        privacy=dict(release.record()),
    )


def coxph_concordance_node(params: CoxPHParams, local: LocalDataset) -> CoxConcordanceRelease:
    if params.dp is not None:
        raise QueryError(
            "concordance has no DP mechanism here: its pair counts are exact",
            rule="coxph.dp_concordance",
            node=local.node_name,
            fix="a DP Cox fit leaves concordance out; submit through Session.coxph",
        )
    if params.risk_edges is None:
        raise _protocol_error(local.node_name, "risk-score bins")
    rows = cox_rows(params, local)
    beta = _checked_beta(params, rows, local.node_name)
    edges = np.asarray(params.risk_edges, dtype=float)
    if edges.size != params.concordance_bins - 1 or not np.all(np.diff(edges) > 0):
        raise _protocol_error(local.node_name, f"{params.concordance_bins - 1} increasing edges")
    cells = _occupied_cells(rows)
    bins = edges.size + 1
    position = cells.of_row * bins + np.searchsorted(edges, rows.x @ beta, side="right")
    deaths, death_counts = np.unique(position[cells.event], return_counts=True)
    censored, censored_counts = np.unique(position[~cells.event], return_counts=True)
    # The bins are the coordinator's: narrow ones around one patient's score would show
    # their time and covariates, so every (cell, bin) count meets the cell rule.
    _check_cells(np.bincount(position, minlength=cells.time.size * bins), rows, local)
    return CoxConcordanceRelease(
        **_exact_cells(rows, cells),
        death_cell=deaths.astype(np.int64),
        death_count=death_counts.astype(np.int64),
        censored_cell=censored.astype(np.int64),
        censored_count=censored_counts.astype(np.int64),
    )


def _exact_cells(rows: CoxRows, cells: _Cells) -> dict[str, Any]:
    """What every exact per-cell release states first: its design, rows left out, cells."""
    return {
        "names": tuple(rows.names),
        "levels": tuple(rows.levels),
        "rows_dropped": rows.rows_dropped,
        "rows_outside_strata": rows.rows_outside_strata,
        "cell_stratum": cells.stratum,
        "cell_time": cells.time,
    }


def _check_cells(rows_per_cell: IntArray, rows: CoxRows, local: LocalDataset) -> None:
    """The cell rule on exact Cox releases: a cell's sums are its rows' covariates, so a
    cell of one patient at this node (at coefficients 0, say) would be that patient's row.
    The rows outside the strata are a cell too: two strata lists that differ by one
    level would otherwise give that level's rows as the difference."""
    check_cells(
        np.append(rows_per_cell, rows.rows_outside_strata),
        local.policy,
        local.node_name,
        what="Cox cells (stratum, grid time and, for the concordance, risk-score bin) or "
        "the rows outside the strata",
        fix=f"use a coarser grid ({Param('grid')} or {Param('time_points')}) or "
        f"{Param('concordance', False)}, or ask with {Param('dp', {'epsilon': 0.5})}",
    )


def _check_cell_dominance(
    index: IntArray, w: FloatArray, x: FloatArray, size: int, local: LocalDataset
) -> None:
    """The p % rule on every per-cell sum ``_bucket_sums`` makes of these rows: w, w x and
    w x x'. Coefficients can make one row's w swamp its cell's (the coordinator picks
    them), and a cell whose events are one patient gives that patient's x as e1 / e0."""
    p = x.shape[1]
    columns = [w, *(w * x[:, j] for j in range(p))]
    columns += [w * x[:, j] * x[:, k] for j in range(p) for k in range(j, p)]
    for terms in columns:
        check_dominance(
            largest_terms_by_cell(index, terms, size),
            local.policy,
            local.node_name,
            what="a Cox cell's risk-set or event covariates",
            fix=f"use a coarser grid ({Param('grid')} or {Param('time_points')}) so that "
            f"each cell holds several events, or ask with {Param('dp', {'epsilon': 0.5})}",
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


def _noise_sd(parts: Parts[CR], quantity: str) -> float:
    """The noise deviation of a total of the nodes' values: their variances add."""
    return math.sqrt(sum(float((p.privacy or {})[f"scale.{quantity}"]) ** 2 for _, p in parts))


def _same_scale(parts: Sequence[tuple[str, CoxSetupRelease | NoisyCoxSetupRelease]]) -> PublicScale:
    """The nodes' public centres and ranges, which must agree for their sums to add."""
    first = parts[0][1]
    for node, part in parts:
        if not (
            np.array_equal(part.center, first.center)
            and np.array_equal(part.half_width, first.half_width)
        ):
            raise QueryError(
                "nodes declare different bounds for the covariates, so they centre them "
                "differently and their sums do not add",
                rule="coxph.bounds_disagree",
                node=node,
                fix=f"pass {Param('bounds', {Hole('column'): (Hole('lo'), Hole('hi'))})} for "
                "every numeric covariate in the request",
            )
    return PublicScale(np.asarray(first.center), np.asarray(first.half_width))


@dataclass(frozen=True)
class _Evaluation:
    loglik: float
    gradient: FloatArray
    hessian: FloatArray


@dataclass(frozen=True)
class _RiskSets:
    """Pooled sums at the event cells: the risk set's (s) and the tied events' (t)."""

    s0: FloatArray
    s1: FloatArray
    s2: FloatArray
    t0: FloatArray
    t1: FloatArray
    t2: FloatArray
    d: IntArray


def _pooled_cells(cells: Sequence[tuple[IntArray, FloatArray]]) -> tuple[IntArray, list[IntArray]]:
    """The union of the nodes' cells, by stratum then time, and each node's index into it."""
    keys = np.concatenate([np.stack([s.astype(float), t], axis=1).reshape(-1, 2) for s, t in cells])
    union, inverse = np.unique(keys, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1).astype(np.int64)
    ends = np.cumsum([s.size for s, _ in cells])[:-1]
    return union[:, 0].astype(np.int64), list(np.split(inverse, ends))


def _from_end(values: FloatArray, stratum: IntArray) -> FloatArray:
    """Per stratum, sums over each cell and all later ones: the risk set at each cell.

    Cells are sorted by stratum, then time.
    """
    out = np.empty_like(values)
    for s in np.unique(stratum):
        mine = stratum == s
        out[mine] = np.cumsum(values[mine][::-1], axis=0)[::-1]
    return out


def _exact_risk_sets(parts: Parts[CoxCellSumsRelease]) -> _RiskSets:
    stratum, index = _pooled_cells([(p.cell_stratum, p.cell_time) for _, p in parts])

    def pooled(field: str) -> FloatArray:
        arrays = [np.asarray(getattr(p, field), dtype=float) for _, p in parts]
        total = np.zeros((stratum.size, *arrays[0].shape[1:]))
        for where, values in zip(index, arrays, strict=True):
            total[where] += values  # a node's cells are distinct
        return total

    d = pooled("events").astype(np.int64)
    event = d > 0
    s0, s1, s2 = (_from_end(pooled(f), stratum)[event] for f in ("a0", "a1", "a2"))
    t0, t1, t2 = (pooled(f)[event] for f in ("e0", "e1", "e2"))
    return _RiskSets(s0, s1, s2, t0, t1, t2, d[event])


def _efron(risk: _RiskSets, beta: FloatArray, event_x: FloatArray) -> _Evaluation:
    """Efron's log partial likelihood, gradient and Hessian (Breslow's when t = 0)."""
    s0, s1, s2, t0, t1, t2, d = (
        risk.s0,
        risk.s1,
        risk.s2,
        risk.t0,
        risk.t1,
        risk.t2,
        risk.d,
    )
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


def _collinear(terms: list[str], everyone: str) -> QueryError:
    return QueryError(
        f"the covariates {', '.join(terms)} are constant or collinear in the risk "
        "sets, so their effects cannot be told apart",
        rule="coxph.collinear",
        node=everyone,
        fix="remove one of these terms (or a redundant level) from the formula",
        terms=terms,
    )


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
    if params.dp is not None:
        return _serve_dp(grid, params, nodes)
    setup = _round(grid, "coxph_setup", params, nodes, "setup", CoxSetupRelease)
    setup_nodes = [node for node, _ in setup]
    everyone, names = ", ".join(setup_nodes), list(setup[0][1].names)
    levels = list(setup[0][1].levels)
    box = _same_scale(setup).box()
    n = sum(part.n for _, part in setup)
    total_events = sum(part.events for _, part in setup)
    if total_events == 0:
        raise _no_events(params, everyone)
    mean = _total(part.sum_x for _, part in setup) / n
    covariance = _total(part.xtx for _, part in setup) / n - np.outer(mean, mean)
    sd = np.sqrt(np.clip(np.diag(covariance), 0.0, None))
    # Columns constant or collinear over all rows are so in every risk set; the design
    # is not centred at the pooled means, so Newton would not see an exactly zero
    # information and would run off instead.
    flat = sd <= 1e-9 * (np.abs(mean) + 1.0)
    if np.any(flat):
        raise _collinear([name for name, f in zip(names, flat, strict=True) if f], everyone)
    correlation = covariance / np.outer(sd, sd)
    if np.linalg.eigvalsh(correlation)[0] < 1e-10:
        raise _collinear(_null_space_terms(covariance, names), everyone)
    event_x = _total(part.event_x for _, part in setup)
    round_trips = 1

    def evaluate(beta: FloatArray, label: str) -> _Evaluation:
        nonlocal round_trips
        round_trips += 1
        at = params.model_copy(update={"beta": tuple(float(b) for b in beta)})
        cells = _round(grid, "coxph", at, nodes, label, CoxCellSumsRelease)
        return _efron(_exact_risk_sets(cells), beta, event_x)

    beta = np.zeros(len(names))
    current = evaluate(beta, "evaluate-0")
    loglik_null = current.loglik
    iterations, converged = 0, False
    step = _newton_step(-current.hessian, current.gradient)
    while step is not None and not converged and iterations < params.iterations:
        iterations += 1
        # Newton converges quadratically near the optimum: once the decrement is below
        # tol, one more full step takes the error to rounding level, and the fit ends.
        converged = float(current.gradient @ step) / 2.0 < params.tol
        outside = outside_box(beta + step, box, names)
        if outside:
            # The nodes would refuse these coefficients; a real fit never gets there.
            raise _separation(outside, everyone)
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
            raise _collinear(terms, everyone)
        raise _separation(terms, everyone)
    diverging = [
        names[j] for j in np.argsort(-np.abs(step) * sd) if abs(step[j]) * sd[j] > DIVERGING_STEP
    ]
    if diverging and converged:
        raise _separation(diverging, everyone)
    if not converged:
        remaining = float(current.gradient @ step) / 2.0
        raise TaskFailed(
            f"Newton-Raphson did not converge in {params.iterations} steps: the Newton "
            f"decrement is still {remaining:.2g} (tol {params.tol:g})",
            rule="coxph.not_converged",
            node=everyone,
            fix=f"raise {Param('max_iter')}, rescale covariates, or simplify the model",
            terms=diverging,
        )
    covariance_beta = np.linalg.inv(-current.hessian)
    concordance = bound = pairs = None
    if params.concordance:
        # The scores' centre and spread over the pooled rows place the bins.
        shift = float(mean @ beta)
        lp_sd = math.sqrt(max(float(beta @ covariance @ beta), 0.0))
        edges = [
            shift + lp_sd * NormalDist().inv_cdf(i / params.concordance_bins)
            for i in range(1, params.concordance_bins)
        ]
        at = params.model_copy(
            update={"beta": tuple(float(b) for b in beta), "risk_edges": tuple(edges)}
        )
        round_trips += 1
        concordance, bound, pairs = _concordance(
            _round(grid, "coxph_concordance", at, nodes, "concordance", CoxConcordanceRelease),
            params.concordance_bins,
        )
    return CoxPHResult(
        **_as_requested(params, levels),
        names=names,
        coef=beta.tolist(),
        cov=covariance_beta.tolist(),
        log_likelihood=current.loglik,
        log_likelihood_null=loglik_null,
        n=n,
        events=total_events,
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


def _serve_dp(grid: Grid, params: CoxPHParams, nodes: Sequence[int]) -> CoxPHResult:
    """Breslow's Newton steps on noisy per-cell sums, the first from the setup's at beta = 0.

    Every step uses the same information, the events times the covariates'
    pooled covariance (exact for one risk set at beta = 0): per-cell sums of
    ``x x'`` would need noise in every cell, and the steps still go to where
    the noisy score is zero. No step is halved: halving would need more
    evaluations, each a charged release, and compares noisy likelihoods.
    """
    if params.dp is None:
        raise AssertionError("only DP requests reach the DP fit")
    setup = _round(grid, "coxph_setup", params, nodes, "setup", NoisyCoxSetupRelease)
    setup_nodes = [node for node, _ in setup]
    everyone, names = ", ".join(setup_nodes), list(setup[0][1].names)
    first = setup[0][1]
    levels, stratum = list(first.levels), np.asarray(first.cell_stratum)
    scale = _same_scale(setup)
    # The nodes' sums are in half-widths of each covariate: so is the fit, until the end.
    half, box = scale.half_width, scale.box() * scale.half_width
    # The nodes' noisy counts summed as drawn (unbiased), then clipped once: a cell cannot
    # hold fewer than no events.
    d = np.maximum(_total(part.events.astype(float) for _, part in setup), 0.0)
    if not d.any():
        raise _no_events(params, everyone)
    event_x = _total(part.event_x for _, part in setup)
    sd_events, sd_x = _noise_sd(setup, "events"), _noise_sd(setup, "event_x")
    rho = {node: float((part.privacy or {})["rho"]) for node, part in setup}
    p = len(names)
    n = sum(part.n for _, part in setup)
    if n <= p + 1:
        raise QueryError(
            f"about {n} rows over all nodes (a noisy count) for {p} coefficients",
            rule="coxph.too_few_rows",
            node=everyone,
            fix=f"use fewer covariates, a wider {Param('where')} filter, or more nodes",
        )
    information = float(d.sum()) * _pooled_covariance(
        _total(part.moments for _, part in setup), n, p, _noise_sd(setup, "moments")
    )
    # The risk sets' noise grows towards the first cell: each adds the later cells' noise.
    cells_from_end = _from_end(np.ones(stratum.size), stratum)
    a0 = _total(part.a0 for _, part in setup)
    a1 = _total(part.a1 for _, part in setup)
    sd_w = _noise_sd(setup, "risk")
    beta = np.zeros(p)
    current = _breslow_dp(a0, a1, d, stratum, sd_w * np.sqrt(cells_from_end), beta, event_x)
    loglik_null = current.loglik
    for iteration in range(1, params.iterations):
        step = np.linalg.solve(information, current.gradient)
        # Noise can overshoot a step; the nodes evaluate only inside the box.
        beta = np.clip(beta + step, -box, box)
        at = params.model_copy(update={"beta": tuple(float(b) for b in beta / half)})
        sums = _round(grid, "coxph", at, nodes, f"step-{iteration}", NoisyCoxCellSumsRelease)
        for node, part in sums:
            rho[node] = rho.get(node, 0.0) + float((part.privacy or {})["rho"])
        a0 = _total(part.a0 for _, part in sums)
        a1 = _total(part.a1 for _, part in sums)
        sd_w = _noise_sd(sums, "risk")
        current = _breslow_dp(a0, a1, d, stratum, sd_w * np.sqrt(cells_from_end), beta, event_x)
    step = np.linalg.solve(information, current.gradient)
    final = np.clip(beta + step, -box, box)
    taken = final - beta
    # The partial likelihood is not evaluated at the last iterate (that would cost a
    # release): its quadratic expansion from the last evaluation stands in for it.
    loglik = current.loglik + float(taken @ current.gradient - taken @ information @ taken / 2.0)
    inverse = np.linalg.inv(information)
    noise = _noise_variance(current, d, stratum, sd_w, sd_events, sd_x)
    covariance_beta = (inverse + inverse @ noise @ inverse) / np.outer(half, half)
    delta = params.dp.delta
    privacy = DPReport(
        mechanism=str((first.privacy or {})["mechanism"]),
        epsilon={node: PrivacyLoss.from_rho(r).epsilon(delta) for node, r in rho.items()},
        delta=delta,
        noise_std={
            "events": sd_events,
            "event_x": sd_x,
            "rows": _noise_sd(setup, "rows"),
            "moments": _noise_sd(setup, "moments"),
            "risk": sd_w,
        },
    )
    return CoxPHResult(
        **_as_requested(params, levels),
        names=names,
        coef=(final / half).tolist(),
        cov=covariance_beta.tolist(),
        log_likelihood=loglik,
        log_likelihood_null=loglik_null,
        n=n,
        events=int(d.sum()),
        concordance=None,
        concordance_bound=None,
        comparable_pairs=None,
        iterations=params.iterations,
        converged=False,
        round_trips=params.iterations,
        nodes=setup_nodes,
        rows_used={node: part.n for node, part in setup},
        rows_dropped={node: part.rows_dropped for node, part in setup},
        rows_outside_strata=sum(part.rows_outside_strata for _, part in setup),
        ties="breslow",
        privacy=privacy,
    )


def _as_requested(params: CoxPHParams, levels: list[str]) -> dict[str, Any]:
    """The result's fields that restate the request (a DP and an exact fit share them)."""
    return {
        "dataset": params.dataset,
        "duration": params.duration,
        "event": params.event,
        "formula": params.covariates.text.removeprefix("~ "),
        "strata": list(params.strata),
        "strata_levels": levels if params.strata else [],
        "time_grid": params.time_grid,
        "grid": params.grid,
        "time_points": list(params.time_points) if params.time_points is not None else None,
        "exact_times": params.exact_times,
        "alpha": params.alpha,
    }


def _pooled_covariance(moments: FloatArray, n: int, p: int, noise: float) -> FloatArray:
    """The covariates' covariance from noisy (sum x, sum x x'), made positive definite.

    Noise can leave it indefinite. Each entry of sum x x' / n carries noise of
    sd ``noise / n``; eigenvalues are floored there, as ``glm`` floors its noisy
    cross-products: enough to invert, and no more, since a higher floor shrinks
    the steps of covariates whose spread is small against their bounds.
    Post-processing only.
    """
    mean, second = moments[:p] / n, moments[p:].reshape(p, p) / n
    covariance = (second + second.T) / 2.0 - np.outer(mean, mean)
    values, vectors = np.linalg.eigh(covariance)
    floored: FloatArray = (vectors * np.maximum(values, noise / n)) @ vectors.T
    return floored


@dataclass(frozen=True)
class _NoisyEvaluation:
    """Breslow's log partial likelihood and score on noisy sums, with what made them."""

    loglik: float
    gradient: FloatArray
    s0: FloatArray
    """Each cell's risk set: its noisy sum of w, floored at its noise sd."""
    mean: FloatArray
    """Each cell's risk-set mean of x, clipped to [-1, 1] (where every row's x lies)."""


def _breslow_dp(
    a0: FloatArray,
    a1: FloatArray,
    d: FloatArray,
    stratum: IntArray,
    risk_sd: FloatArray,
    beta: FloatArray,
    event_x: FloatArray,
) -> _NoisyEvaluation:
    """The partial likelihood's score at ``beta`` from the cells' noisy sums (post-processing).

    A risk set late in follow-up can be small against its noise: its sum is
    floored at the noise sd and its mean kept inside the box every row's x is
    in, so its cell moves the score by at most its events, never to infinity.
    """
    s0 = np.maximum(_from_end(a0, stratum), risk_sd)
    mean = np.clip(_from_end(a1, stratum) / s0[:, None], -1.0, 1.0)
    loglik = float(beta @ event_x - d @ np.log(s0))
    gradient: FloatArray = event_x - d @ mean
    return _NoisyEvaluation(loglik, gradient, s0, mean)


def _noise_variance(
    at: _NoisyEvaluation,
    d: FloatArray,
    stratum: IntArray,
    sd_w: float,
    sd_events: float,
    sd_x: float,
) -> FloatArray:
    """The score's variance from the noise, to first order; the estimate's is I^-1 V I^-1.

    The score is sum(x over events) - sum_k d_k m_k with m_k = S1_k / S0_k, S
    the sums from cell k to the end: noise in cell j's sums reaches every
    k <= j, weighted by c_k = d_k / S0_k (and by c_k m_k through S0); noise in
    d_k by m_k.
    """
    c = d / at.s0
    by_cell = np.zeros_like(c)
    through_s0 = np.zeros_like(at.mean)
    for s in np.unique(stratum):
        mine = stratum == s
        by_cell[mine] = np.cumsum(c[mine])
        through_s0[mine] = np.cumsum(c[mine, None] * at.mean[mine], axis=0)
    p = at.mean.shape[1]
    variance: FloatArray = (
        sd_x**2 * np.eye(p)
        + sd_events**2 * at.mean.T @ at.mean
        + sd_w**2 * float(by_cell @ by_cell) * np.eye(p)
        + sd_w**2 * through_s0.T @ through_s0
    )
    return variance


def _no_events(params: CoxPHParams, everyone: str) -> QueryError:
    return QueryError(
        "no events in the rows used, so there is no partial likelihood",
        rule="coxph.no_events",
        node=everyone,
        fix=f"check the event column, the {Param('where')} filter and missing values",
        column=params.event,
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
    parts: Parts[CoxConcordanceRelease], bins: int
) -> tuple[float | None, float | None, int]:
    """Harrell's C from (cell, risk bin) counts; same-bin pairs count 1/2, bounding the error.

    A death is comparable with every row ending in a later cell of its stratum,
    and with the rows censored in its own cell.
    """
    stratum, index = _pooled_cells([(p.cell_stratum, p.cell_time) for _, p in parts])
    size = stratum.size * bins
    deaths, censored = np.zeros(size), np.zeros(size)
    for where, (_, part) in zip(index, parts, strict=True):
        for total, position, count in (
            (deaths, part.death_cell, part.death_count),
            (censored, part.censored_cell, part.censored_count),
        ):
            pooled = where[position // bins] * bins + position % bins
            total += np.bincount(pooled, weights=count, minlength=size)
    dead_by = deaths.reshape(-1, bins)
    censored_by = censored.reshape(-1, bins)
    ending = dead_by + censored_by
    comparable = _from_end(ending, stratum) - ending + censored_by
    lower = np.cumsum(comparable, axis=1) - comparable
    pairs = float(np.sum(dead_by * comparable.sum(axis=1, keepdims=True)))
    correct = float(np.sum(dead_by * lower))
    same = float(np.sum(dead_by * comparable))
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
    summary="Cox proportional hazards (Efron ties; Breslow under dp) by federated Newton-Raphson",
    arguments=("duration", "event", "covariates"),
    table=coxph_table,
)

__all__ = ["TASK", "CoxPHParams", "CoxPHResult", "covariate_formula"]
