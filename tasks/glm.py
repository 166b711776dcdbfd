"""Generalised linear models (gaussian, binomial/logit, poisson/log) by federated IRLS.

Iteratively reweighted least squares is Fisher scoring; with a canonical link
it is Newton-Raphson. Each iteration needs only sums over rows: the weighted
cross-products X'WX and X'Wz of the design matrix and the working response,
and the deviance. Every node computes these on its own complete cases for the
coefficients the server broadcasts; the server adds them up, solves for the
next coefficients and broadcasts again until the deviance stops changing.
Sums over nodes are the sums over the pooled rows, so each iteration -- and
hence the fit -- is the pooled fit, iteration for iteration.

The iteration is statsmodels' ``GLM.fit()`` (IRLS), step for step: it starts
from ``family.starting_mu(y)`` (for gaussian and poisson that needs the pooled
mean of the response, so those families spend one extra round on it), stops
when ``|D_k - D_k-1| <= tol + rtol * |D_k|`` (statsmodels' rule and defaults:
absolute 1e-8), and the covariance is the inverse of the last X'WX solved --
at the previous iterate, as statsmodels has it -- times the scale. Stopping
at the same iteration is what makes the standard errors equal too.

What a node releases per round (a typed release: ``GLMDesignRelease``,
``GLMStartRelease`` or ``GLMStepRelease``): its row counts, the sum of the
response, X'WX, X'Wz, the deviance, Pearson chi-square and log-likelihood of
its rows at the given coefficients, and the null deviance at the pooled mean;
in rounds without coefficients also the unweighted X'X (for the design
checks). No row leaves it, and it refuses while the model is close to
saturated on its rows, or where one row dominates one of those sums (the p %
rule, ``privacy.dominance``: a transform such as np.exp, or coefficients that
give one patient an extreme mean).

Under differential privacy (``params.dp``) the request's epsilon is the loss
of the whole fit at each node. Every numeric column is clamped to public
bounds (the schema's, else the request's ``bounds``) before the formula's
transforms, so each design column has a range known from the bounds alone
(a transform without a finite range on them is refused, ``privacy.dp_term``);
a node maps its augmented rows ``u = (1, columns[, y])`` into ``v`` in
[-1, 1] by those ranges -- a numeric column by its midpoint and half-range, a
k-level factor's indicators centred at 1/k (``_UnitCoding``) -- and releases
sums over ``v`` with OpenDP Gaussian noise (``GLMMomentsRelease``,
``GLMNewtonRelease``). What one row adds to each sum is bounded by the
largest share any row inside the bounds could add (enumerated over the
factors' levels, proved in ``_UnitCoding``) and capped on every row before
summing (``_capped``): that bound is the sensitivity the noise is scaled to.

- gaussian: one round, the upper triangle of sum v v' (count, X'X, X'y,
  y'y) as three Gaussian releases (``GAUSSIAN_SHARES``: most of rho on X'y,
  whose noise goes into the coefficients one for one). The coordinator
  solves the noisy normal equations (eigenvalues floored at the noise sd,
  post-processing). Standard errors: scale (X'X)^-1 plus the noise's share,
  estimated by a parametric bootstrap over the stated noise -- re-drawing
  each node's noise and solving again -- because the solve (and its PD
  repair) is non-linear in the noise, and the bootstrap needs no
  delta-method algebra per node.
- binomial and poisson: ``max_iter`` (signed by the researcher, at most
  ``DP_MAX_STEPS``, default ``DP_DEFAULT_STEPS``) noisy Newton steps from
  zero. Step k costs ``dp_step_share(k, max_iter)`` of rho, doubling from
  step to step (``release_loss``; the coordinator names the step in
  ``dp_step``): a full fit costs the request's epsilon at each node, and a
  coordinator that asks for more or dearer steps pays for each from the
  permit's budget, which the node's ledger caps. Per row, the score
  residual and weight are clamped to what the family bounds: |y - mu| <= 1,
  w <= 1/4 (binomial); the mean capped at the response's upper bound Y,
  |y - mu| <= Y, w <= Y (poisson: the MLE wherever no fitted mean exceeds Y).
  The last ``DP_AVERAGED_STEPS`` iterates are averaged, weighted by their
  rho (each is the fit plus independent noise once Newton has converged);
  the covariance is the sandwich H^-1 + H^-1 (sum a_k^2 Var(e_k)) H^-1.
  Deviance and log-likelihood are not released.

The exact path's data-dependent refusals (saturation, weight concentration,
a response outside the family's domain) are not applied under DP: each would
reveal something about the rows, which the noise protects instead.
"""

from __future__ import annotations

import itertools
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, ClassVar, Generic, Literal, TypeVar

import numpy as np
import numpy.typing as npt
import pandas as pd
from flwr.serverapp import Grid
from pydantic import Field, field_validator, model_validator
from rich.text import Text

from oncofed.kernel.errors import NodeRefusal, OncofedError, Param, QueryError, TaskFailed
from oncofed.kernel.schema import DatasetSchema
from oncofed.privacy.accounting import PrivacyLoss
from oncofed.privacy.disclosure import check_cells, check_dominance, largest_terms
from oncofed.privacy.dp import DPRequest, ZCDPRelease
from oncofed.privacy.release import (
    AgreedValues,
    Count,
    ModelStatistic,
    ModelStatistics,
    Moments,
    Release,
)
from oncofed.privacy.saturation import check_model_saturation
from oncofed.tasks.base import (
    ColumnRole,
    DPReport,
    LocalDataset,
    PublicBounds,
    TaskParams,
    TaskType,
    WrittenAs,
    dp_report,
    public_bounds,
    released,
    selected_rows,
)
from oncofed.tasks.broadcast import broadcast
from oncofed.tasks.formula import (
    TRANSFORMS,
    Factor,
    Formula,
    agreed_levels,
    check_formula,
    design_matrix,
    parse_formula,
    same_design,
)
from oncofed.tasks.messaging import wait_for_nodes
from oncofed.tasks.wald import WaldCoefficients

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
FamilyName = Literal["gaussian", "binomial", "poisson"]
T = TypeVar("T")

FLOAT_EPS = float(np.finfo(float).eps)
# Eigenvalue ratio of the unit-diagonal cross-product matrix below which the
# design (or the information) counts as singular; beyond it a float64 solve
# could no longer give coefficients to 1e-6 anyway.
SINGULAR_RATIO = 1e-12
# Size, on the scale of the linear predictor, of a further Newton step above
# which the coefficients are still moving after the deviance stopped changing:
# at a true optimum that step is ~1e-10; under separation it is ~1 per iteration.
DIVERGING_STEP = 1e-4
NOISE_FLOOR = 64 * FLOAT_EPS
WEIGHT_RULE = "privacy.weight_concentration"
DP_MAX_STEPS = 20
"""Most noisy Newton steps one DP fit may pay for (``dp_step_share`` gives each its part)."""
DP_DEFAULT_STEPS = 10
"""Newton from zero needs 4-6 steps; under dp the early ones are nearly free
(``dp_step_share``: with 10 steps the first five cost 3 % of rho together)."""
DP_STEP_GROWTH = 2.0
"""Under dp, each Newton step gets this many times the rho of the one before it."""
DP_AVERAGED_STEPS = 3
"""The last steps' iterates averaged (weighted by their rho) into the DP estimate."""
EXACT_MAX_ITER = 50
DP_MAX_STEP = 2.0
"""Largest change of any row's linear predictor one noisy Newton step may make."""
COUNT_SHARE, GRADIENT_SHARE, HESSIAN_SHARE = 0.02, 0.63, 0.35
"""How a DP Newton step's rho is split. The last steps' gradient noise is what stays in
the coefficients; the Hessian's changes a step's length, which matters where an early
cheap step left the iterate far off (measured on the benchmark's data: 0.20 of rho on the
Hessian left the binomial intercept a quarter worse than 0.35); the count only sizes df."""
GAUSSIAN_SHARES = {"xx": 0.35, "xy": 0.62, "yy": 0.03}
"""How the DP gaussian release's rho is split between the blocks of sum v v'. X'y's noise
goes into the coefficients one for one, X'X's only times the coefficients in unit
coordinates (small: each column's effect across its range is a fraction of the
response's), y'y only sets the scale. Chosen on the benchmark's simulation (its worst
coefficient error is flat between 0.3 and 0.4 for X'X), not on any node's data."""
MAX_EXTREME_ROWS = 4096
"""Most factor-level combinations enumerated to bound one row's share (see _UnitCoding)."""
BOOTSTRAP_DRAWS = 400
"""Re-draws of the stated noise behind the gaussian DP fit's standard errors."""


# ---- families --------------------------------------------------------------


class Family(ABC):
    """Variance, canonical link and deviance of one exponential family, as statsmodels has them."""

    name: FamilyName
    link_name: str
    # statsmodels starts from (y + mean(y)) / 2: the pooled mean, one round before IRLS.
    needs_mean = True

    def starting_mu(self, y: FloatArray, mean: float) -> FloatArray:
        return (y + mean) / 2.0

    @abstractmethod
    def link(self, mu: FloatArray) -> FloatArray: ...

    @abstractmethod
    def inverse(self, eta: FloatArray) -> FloatArray: ...

    @abstractmethod
    def deriv(self, mu: FloatArray) -> FloatArray: ...

    @abstractmethod
    def variance(self, mu: FloatArray) -> FloatArray: ...

    @abstractmethod
    def unit_deviance(self, y: FloatArray, mu: FloatArray) -> FloatArray:
        """Each row's term of the deviance (the p % rule checks them one by one)."""

    def deviance(self, y: FloatArray, mu: FloatArray) -> float:
        return float(np.sum(self.unit_deviance(y, mu)))

    @abstractmethod
    def loglike(self, y: FloatArray, mu: FloatArray) -> float | None:
        """Log-likelihood at scale 1; None where it needs the pooled scale (gaussian)."""

    @abstractmethod
    def check_response(self, y: FloatArray, label: str, node: str) -> None:
        """Refuse a response outside the family's domain."""


class Gaussian(Family):
    name = "gaussian"
    link_name = "Identity"

    def link(self, mu: FloatArray) -> FloatArray:
        return mu

    def inverse(self, eta: FloatArray) -> FloatArray:
        return eta

    def deriv(self, mu: FloatArray) -> FloatArray:
        return np.ones_like(mu)

    def variance(self, mu: FloatArray) -> FloatArray:
        return np.ones_like(mu)

    def unit_deviance(self, y: FloatArray, mu: FloatArray) -> FloatArray:
        return (y - mu) ** 2

    def loglike(self, y: FloatArray, mu: FloatArray) -> float | None:
        return None

    def check_response(self, y: FloatArray, label: str, node: str) -> None:
        """Any real number is a gaussian response; design_matrix already refused NaN."""


class Binomial(Family):
    name = "binomial"
    link_name = "Logit"
    needs_mean = False

    def starting_mu(self, y: FloatArray, mean: float) -> FloatArray:
        return (y + 0.5) / 2.0

    @staticmethod
    def _clean(p: FloatArray) -> FloatArray:
        return np.clip(p, FLOAT_EPS, 1.0 - FLOAT_EPS)

    def link(self, mu: FloatArray) -> FloatArray:
        p = self._clean(mu)
        return np.log(p / (1.0 - p))

    def inverse(self, eta: FloatArray) -> FloatArray:
        with np.errstate(over="ignore"):  # exp overflow is a probability of exactly 0
            return 1.0 / (1.0 + np.exp(-eta))

    def deriv(self, mu: FloatArray) -> FloatArray:
        p = self._clean(mu)
        return 1.0 / (p * (1.0 - p))

    def variance(self, mu: FloatArray) -> FloatArray:
        p = self._clean(mu)
        return p * (1.0 - p)

    def unit_deviance(self, y: FloatArray, mu: FloatArray) -> FloatArray:
        ones = np.clip(y / (mu + 1e-20), FLOAT_EPS, np.inf)
        zeros = np.clip((1.0 - y) / (1.0 - mu + 1e-20), FLOAT_EPS, np.inf)
        terms: FloatArray = 2.0 * (y * np.log(ones) + (1.0 - y) * np.log(zeros))
        return terms

    def loglike(self, y: FloatArray, mu: FloatArray) -> float:
        odds = (mu + 1e-20) / (1.0 - mu + 1e-20)
        return float(np.sum(y * np.log(odds) + np.log(1.0 - mu + 1e-20)))

    def check_response(self, y: FloatArray, label: str, node: str) -> None:
        if not np.all((y == 0.0) | (y == 1.0)):
            raise QueryError(
                f"the binomial response {label} has values other than 0 and 1",
                rule="glm.response_domain",
                node=node,
                fix="use a 0/1 outcome, e.g. a column coded 1 = event, 0 = none, or keep "
                f"only 0/1 rows with {Param('where', f'{label} in (0, 1)')}",
                column=label,
            )


class Poisson(Family):
    name = "poisson"
    link_name = "Log"

    def link(self, mu: FloatArray) -> FloatArray:
        return np.log(np.clip(mu, FLOAT_EPS, np.inf))

    def inverse(self, eta: FloatArray) -> FloatArray:
        return np.exp(eta)

    def deriv(self, mu: FloatArray) -> FloatArray:
        return 1.0 / np.clip(mu, FLOAT_EPS, np.inf)

    def variance(self, mu: FloatArray) -> FloatArray:
        return np.abs(mu)

    def unit_deviance(self, y: FloatArray, mu: FloatArray) -> FloatArray:
        ratio = np.clip(y / mu, FLOAT_EPS, np.inf)
        terms: FloatArray = 2.0 * (y * np.log(ratio) - (y - mu))
        return terms

    def loglike(self, y: FloatArray, mu: FloatArray) -> float:
        # log(y!) over distinct counts: math.lgamma, as scipy is no runtime dependency.
        values, times = np.unique(y, return_counts=True)
        log_factorials = sum(
            int(k) * math.lgamma(v + 1.0) for v, k in zip(values, times, strict=True)
        )
        return float(np.sum(y * np.log(mu) - mu) - log_factorials)

    def check_response(self, y: FloatArray, label: str, node: str) -> None:
        if not np.all((y >= 0.0) & (y == np.floor(y))):
            raise QueryError(
                f"the poisson response {label} has values that are not counts "
                "(non-negative whole numbers)",
                rule="glm.response_domain",
                node=node,
                fix="model a count such as a number of events, or use "
                f"{Param('family', 'gaussian')}",
                column=label,
            )


FAMILIES: dict[str, Family] = {f.name: f for f in (Gaussian(), Binomial(), Poisson())}


# ---- parameters and result ---------------------------------------------------


def dp_step_share(step: int, steps: int) -> float:
    """Step ``step``'s share of a DP Newton fit's rho: growing by ``DP_STEP_GROWTH``.

    The coefficients keep the noise of the last steps' gradients, while the
    early steps only bring Newton near the optimum, where a step's noise
    matters only to second order: so most of the budget goes to the last.
    The shares of steps 1..steps add to one (zCDP rhos compose by adding).
    """
    weights = DP_STEP_GROWTH ** np.arange(steps)
    return float(weights[step - 1] / weights.sum())


class GLMParams(TaskParams):
    DP = True
    SERVER_STATE: ClassVar[frozenset[str]] = frozenset({"coefficients", "response_mean", "dp_step"})
    formula: Annotated[Formula, WrittenAs('"status ~ age + C(sex) + np.log(wt.loss)"')] = Field(
        description="Model formula with a response: outcome ~ predictors."
    )
    family: FamilyName = Field(
        default="gaussian",
        description="gaussian (identity link), binomial (logit) or poisson (log).",
    )
    max_iter: int | None = Field(
        default=None,
        ge=1,
        le=1000,
        description=f"Iteration cap (default {EXACT_MAX_ITER}); with dp, binomial and poisson "
        f"take exactly this many noisy Newton steps (default {DP_DEFAULT_STEPS}, at most "
        f"{DP_MAX_STEPS}).",
    )
    tol: float = Field(
        default=1e-8, gt=0, lt=1, description="Stop when the deviance changes less (absolute)."
    )
    rtol: float = Field(
        default=0.0, ge=0, lt=1, description="Relative part of the stop rule, times |deviance|."
    )
    coefficients: tuple[float, ...] | None = Field(
        default=None, description="Iteration state: the coefficients to evaluate at."
    )
    response_mean: float | None = Field(
        default=None, description="Iteration state: pooled mean of the response."
    )
    dp_step: int | None = Field(
        default=None,
        ge=1,
        le=DP_MAX_STEPS,
        description="Iteration state under dp: which noisy Newton step this is, which sets "
        "its share of the fit's rho (default: the first without coefficients, else the last).",
    )
    bounds: PublicBounds = Field(
        default_factory=dict,
        description=(
            "Public (lo, hi) per numeric formula column for a DP fit, where the node schema "
            "declares none; values are clamped to them. Never derive them from the data."
        ),
    )

    @field_validator("formula", mode="before")
    @classmethod
    def _parse_formula(cls, formula: object) -> object:
        # Parsed here, so a typo or a forbidden function fails before anything is sent;
        # words given apart (a command line's unquoted formula) are one formula.
        if isinstance(formula, list | tuple) and all(isinstance(w, str) for w in formula):
            formula = " ".join(formula)
        return parse_formula(formula) if isinstance(formula, str) else formula

    @model_validator(mode="after")
    def _needs_response(self) -> GLMParams:
        if self.formula.response is None:
            raise ValueError("a GLM formula needs a response: 'outcome ~ predictors'")
        return self

    @model_validator(mode="after")
    def _dp_steps_paid_for(self) -> GLMParams:
        if self.dp is not None and self.family != "gaussian" and self.iterations > DP_MAX_STEPS:
            raise ValueError(
                f"under dp, max_iter is the number of noisy Newton steps, which share the "
                f"fit's epsilon at every node (later steps more): ask for at most "
                f"{DP_MAX_STEPS} (the default, {DP_DEFAULT_STEPS}, is usually right)"
            )
        if self.dp_step is not None and self.dp_step > self.iterations:
            raise ValueError(f"dp_step {self.dp_step} is past the signed {self.iterations} steps")
        return self

    @property
    def iterations(self) -> int:
        """The iteration cap asked for, else the mode's default (a DP step is paid for)."""
        if self.max_iter is not None:
            return self.max_iter
        return DP_DEFAULT_STEPS if self.dp is not None else EXACT_MAX_ITER

    def dp_rounds(self) -> int:
        """Messages one DP fit sends each node; the request's rho is split over them."""
        return 1 if self.family == "gaussian" else self.iterations

    def dp_rho(self) -> float:
        """The rho of this message: all of it for gaussian, else this Newton step's share.

        Without ``dp_step`` the message is the first step (no coefficients) or
        else the last, the most expensive: what a node charges always matches
        what ``release_loss`` declared before computing it.
        """
        if self.dp is None:
            raise AssertionError("only DP requests have a DP budget")
        if self.family == "gaussian":
            return self.dp.rho
        step = self.dp_step or (1 if self.coefficients is None else self.iterations)
        return self.dp.rho * dp_step_share(step, self.iterations)

    def release_loss(self) -> PrivacyLoss | None:
        # dp states the loss of the whole fit; each message pays its share.
        if self.dp is None:
            return None
        return PrivacyLoss.from_rho(self.dp_rho())

    def required_columns(self) -> dict[str, ColumnRole]:
        roles = super().required_columns()
        factors = self.formula.factors()
        roles.update({f.column: "factor" for f in factors if f.categorical})
        roles.update({f.column: "numeric" for f in factors if not f.categorical})
        return roles

    def declared_levels(self) -> dict[str, tuple[str, ...]]:
        return self.formula.declared_levels()

    def check_schema(self, schema: DatasetSchema, node: str) -> None:
        super().check_schema(schema, node)
        check_formula(self.formula, schema, node)


class GLMResult(WaldCoefficients):
    """A fitted GLM, read like statsmodels' ``GLMResults``."""

    dataset: str
    formula: str
    family: FamilyName
    link: str
    deviance: float | None
    """None for a DP binomial or poisson fit, whose nodes release no deviance (nor the
    statistics below that derive from it)."""
    null_deviance: float | None
    pearson_chi2: float | None
    scale: float
    llf: float | None
    aic: float | None
    bic: float | None
    df_model: int
    df_resid: int
    nobs: int
    iterations: int
    converged: bool
    round_trips: int
    nodes: list[str]
    rows_used: dict[str, int]
    """Rows per node (under DP: the noisy counts, rounded)."""
    rows_dropped: dict[str, int]
    """Rows with a missing value per node; empty under DP, where it is not released."""
    privacy: DPReport | None = Field(
        default=None,
        description="The DP mechanism, loss and noise, when dp= was asked for; the "
        "standard errors then include the noise.",
    )

    @property
    def tvalues(self) -> pd.Series:
        """Wald z statistics (statsmodels' name; GLM uses the normal distribution)."""
        return self.wald_z()

    @property
    def pvalues(self) -> pd.Series:
        return self.wald_pvalues().rename("P>|z|")

    def conf_int(self, alpha: float = 0.05) -> pd.DataFrame:
        """Wald confidence intervals; columns 0 and 1 as in statsmodels."""
        lower, upper = self.wald_interval(alpha)
        return pd.DataFrame({0: lower, 1: upper})

    def to_frame(self, alpha: float = 0.05) -> pd.DataFrame:
        """The coefficient table: coef, std err, z, P>|z| and the confidence limits."""
        ci = self.conf_int(alpha)
        return pd.DataFrame(
            {
                "coef": self.params,
                "std err": self.bse,
                "z": self.tvalues,
                "P>|z|": self.pvalues,
                f"[{alpha / 2:g}": ci[0],
                f"{1 - alpha / 2:g}]": ci[1],
            }
        )

    def summary(self, alpha: float = 0.05) -> str:
        """A text table laid out like statsmodels' ``GLMResults.summary()``."""
        dp = self.privacy is not None
        method = ("DP moments" if self.family == "gaussian" else "DP Newton") if dp else "IRLS"
        left = [
            ("Dep. Variable:", self.formula.split("~")[0].strip()),
            ("Model:", "GLM (federated)"),
            ("Model Family:", self.family.capitalize()),
            ("Link Function:", self.link),
            ("Method:", method),
            ("No. Iterations:", str(self.iterations)),
            ("Nodes:", str(len(self.nodes))),
            ("Rows dropped:", "n/a (DP)" if dp else str(sum(self.rows_dropped.values()))),
        ]
        right = [
            ("No. Observations:", f"{self.nobs}{' (noisy)' if dp else ''}"),
            ("Df Residuals:", str(self.df_resid)),
            ("Df Model:", str(self.df_model)),
            ("Scale:", f"{self.scale:#.5g}"),
            ("Log-Likelihood:", _optional(self.llf, "#.5g")),
            ("Deviance:", _optional(self.deviance, "#.5g")),
            ("Pearson chi2:", _optional(self.pearson_chi2, "#.3g")),
            ("AIC:", _optional(self.aic, "#.5g")),
        ]
        width = 78
        lines = [
            "Generalized Linear Model Regression Results".center(width),
            "=" * width,
        ]
        for (lk, lv), (rk, rv) in zip(left, right, strict=True):
            lines.append(f"{lk:<17}{lv:>20}   {rk:<20}{rv:>18}")
        table = self.to_frame(alpha)
        label = max([len(n) for n in self.names] + [10])
        header = f"{'':<{label}}" + "".join(f"{c:>11}" for c in table.columns)
        rule_width = max(width, len(header))
        lines += ["=" * rule_width, header, "-" * rule_width]
        for name, row in table.iterrows():
            cells = [_number(float(v)) for v in row]
            lines.append(f"{name!s:<{label}}" + "".join(f"{c:>11}" for c in cells))
        lines.append("=" * rule_width)
        lines.append(f"Formula: {self.formula}    dataset: {self.dataset}")
        lines.append(f"Nodes: {', '.join(self.nodes)}; {self.round_trips} round trips")
        if self.privacy is not None:
            spent = max(self.privacy.epsilon.values(), default=0.0)
            lines.append(
                f"Differentially private ({self.privacy.mechanism}): epsilon {spent:.3g} at "
                f"delta {self.privacy.delta:g} at each node; std errors include the noise"
                + ("" if self.converged else "; the last step was larger than its noise")
            )
        return "\n".join(lines)


def _optional(value: float | None, spec: str) -> str:
    return "n/a (DP)" if value is None else format(value, spec)


def _number(number: float, digits: int = 4) -> str:
    if number != 0 and (abs(number) >= 1e5 or abs(number) < 10**-digits):
        return f"{number:.{digits - 1}e}"
    return f"{number:.{digits}f}"


# ---- releases --------------------------------------------------------------


class _GLMRows(Release):
    """What every GLM reply holds: the design columns and the rows behind its sums."""

    names: tuple[str, ...]
    """The design columns the node built (from the formula and its agreed levels)."""
    rows_dropped: Count
    """Rows left out for a missing value in a formula column."""
    n: Count
    """Complete rows the sums are over."""
    sum_y: ModelStatistic
    """The sum of the response over them (the pooled mean's numerator)."""


class GLMDesignRelease(_GLMRows):
    """A reply before the fitted means are known: rows, response sum and unweighted X'X.

    gaussian and poisson start IRLS from the pooled mean of the response, so
    their first round only pools that mean (and X'X, for the design checks).
    """

    xtx: ModelStatistics
    """X'X, p x p."""


class GLMStepRelease(_GLMRows):
    """A reply at an IRLS iterate's coefficients: the weighted cross-products and fit sums."""

    xtwx: ModelStatistics
    """X'WX at the node's fitted means, p x p."""
    xtwz: ModelStatistics
    """X'Wz with z the working response, p."""
    deviance: ModelStatistic
    pearson: ModelStatistic
    """Pearson chi-square: sum of (y - mu)^2 / V(mu)."""
    loglike: ModelStatistics
    """The log-likelihood at scale 1, or empty for gaussian (it needs the pooled scale)."""
    null_deviance: ModelStatistics
    """The deviance at the pooled mean, or empty in a round that does not carry the mean."""


class GLMStartRelease(GLMStepRelease):
    """A reply at the starting means (no coefficients yet): a step's sums and unweighted X'X."""

    xtx: ModelStatistics
    """X'X, p x p, for the design checks."""


class _GLMUnitBox(Release):
    """What every DP GLM reply holds: its design columns and the box its numbers live in.

    A node releases sums over its rows of ``v = (u - centre) / half_width``, the
    augmented row ``u = (1, design columns but the intercept[, response])``
    mapped into [-1, 1] by the public bounds, so that one row moves them by a
    bounded amount. ``centre`` and ``half_width`` come from those bounds (the
    schema's or the request's), never from the data; the server maps the sums
    back with them.
    """

    names: tuple[str, ...]
    centre: AgreedValues
    half_width: AgreedValues


class GLMMomentsRelease(_GLMUnitBox):
    """A DP gaussian reply: noisy cross-products of the unit rows (count, X'X, X'y, y'y)."""

    moments: Moments
    """The upper triangle, row by row, of sum v v' (its first entry is the row count)."""


class GLMNewtonRelease(_GLMUnitBox):
    """A DP binomial or poisson reply at the server's coefficients: one noisy Newton step."""

    n: Count
    """Noisy count of complete rows."""
    gradient: ModelStatistics
    """sum v (y - mu), the score in unit coordinates."""
    hessian: ModelStatistics
    """The upper triangle, row by row, of sum w v v' (the Fisher information)."""


GLM_RELEASES: tuple[type[Release], ...] = (
    GLMDesignRelease,
    GLMStartRelease,
    GLMStepRelease,
    GLMMomentsRelease,
    GLMNewtonRelease,
)


def glm_release(params: GLMParams) -> type[GLMDesignRelease] | type[GLMStepRelease]:
    """The release a node answers this request with (the server reads replies as this)."""
    if params.coefficients is not None:
        return GLMStepRelease
    if FAMILIES[params.family].needs_mean and params.response_mean is None:
        return GLMDesignRelease
    return GLMStartRelease


# ---- node side -----------------------------------------------------------


def glm_node(
    params: GLMParams, local: LocalDataset
) -> GLMDesignRelease | GLMStepRelease | GLMMomentsRelease | GLMNewtonRelease:
    if params.dp is not None:
        return glm_node_dp(params, local, params.dp)
    node = local.node_name
    family = FAMILIES[params.family]
    design = design_matrix(params.formula, selected_rows(params, local), local.schema, node)
    x, y = design.x, design.y
    if y is None:
        raise AssertionError("GLMParams requires a response")
    rows, p = x.shape
    label = params.formula.response.label if params.formula.response else ""
    family.check_response(y, label, node)
    check_model_saturation(
        p,
        rows,
        local.policy,
        node,
        f"use fewer terms, a wider {Param('where')} filter, or fewer missing values",
    )
    # A level (or combination of levels) that few patients hold makes its coefficient
    # their mean outcome: the cell rule of a table holds for it too.
    check_cells(
        level_counts(x, design.names),
        local.policy,
        node,
        what="factor levels or level combinations of the model",
        fix="merge rare levels, filter to a cohort where every level holds enough rows, "
        f"or ask with {Param('dp', {'epsilon': 0.5})}",
    )
    names, dropped, sum_y = tuple(design.names), int(design.rows_dropped), float(np.sum(y))
    mu, eta = _node_mu(params, family, x, y, node)
    if params.coefficients is None:
        _check_dominance(local, largest_terms(y), largest_terms(x, x))
    if mu is None or eta is None:
        return GLMDesignRelease(
            names=names, rows_dropped=dropped, n=int(rows), sum_y=sum_y, xtx=x.T @ x
        )
    w = 1.0 / (family.deriv(mu) ** 2 * family.variance(mu))
    # Coefficients can make the weights vanish on all but a few rows (a diverging
    # fit, or coefficients chosen to single patients out); X'WX would then describe
    # those rows. So the saturation limit also applies to the weights' effective
    # number of rows (Kish): (sum w)^2 / sum w^2.
    square = float(np.sum(w**2))
    effective = float(np.sum(w)) ** 2 / square if square > 0 else 0.0
    saturation = local.policy.max_model_saturation
    if rows and p > saturation * effective:
        raise NodeRefusal(
            f"at these coefficients the model's {p} coefficients rest on too few "
            f"effectively weighted rows (at most {saturation:g} per row): its "
            "cross-products would describe single patients",
            rule=WEIGHT_RULE,
            node=node,
            fix="the fit is diverging (e.g. perfect separation): simplify the model; "
            "coefficients are only accepted from a fit that spreads over the rows",
        )
    z = eta + family.deriv(mu) * (y - mu)
    pearson = (y - mu) ** 2 / family.variance(mu)
    # The fit statistics are sums over rows too: coefficients that give one row an
    # extreme mean make its deviance or Pearson term the whole sum (and the
    # log-likelihood moves with the deviance).
    _check_dominance(
        local,
        largest_terms(x, x, w),
        largest_terms(x, w * z),
        largest_terms(np.column_stack([family.unit_deviance(y, mu), pearson])),
    )
    loglike = family.loglike(y, mu)
    null_deviance = (
        [family.deviance(y, np.full_like(y, params.response_mean))]
        if params.response_mean is not None
        else []
    )
    step = GLMStepRelease(
        names=names,
        rows_dropped=dropped,
        n=int(rows),
        sum_y=sum_y,
        xtwx=(x * w[:, None]).T @ x,
        xtwz=x.T @ (w * z),
        deviance=family.deviance(y, mu),
        pearson=float(np.sum(pearson)),
        loglike=np.array([] if loglike is None else [loglike]),
        null_deviance=np.array(null_deviance),
    )
    if params.coefficients is not None:
        return step
    return GLMStartRelease(**step.model_dump(), xtx=x.T @ x)


def _check_dominance(
    local: LocalDataset, *terms: tuple[FloatArray, FloatArray, FloatArray]
) -> None:
    """The p % rule on every sum an exact reply carries (see ``check_dominance``)."""
    for one in terms:
        check_dominance(
            one,
            local.policy,
            local.node_name,
            what="the model's cross-products (X'X, X'WX, X'Wz) or response",
            fix="drop or change the term that lets one patient's value dominate (e.g. np.exp "
            f"of a wide column, or an outlying value), or ask with {Param('dp', {'epsilon': 0.5})}",
        )


def level_counts(x: FloatArray, names: Sequence[str]) -> IntArray:
    """Rows per factor level and per combination of levels in a design.

    A treatment-coded factor's columns ``C(f)[T.level]`` count their levels; its
    first level holds the rest of the rows. A 0/1 interaction column counts the
    rows holding both levels.
    """
    counts: list[int] = []
    coded: dict[str, int] = {}
    for j, name in enumerate(names):
        column = x[:, j]
        if "[" not in name or not np.all((column == 0) | (column == 1)):
            continue
        counts.append(int(column.sum()))
        if ":" not in name and "[T." in name:
            factor = name.split("[T.")[0]
            coded[factor] = coded.get(factor, 0) + counts[-1]
    counts.extend(x.shape[0] - held for held in coded.values())
    return np.asarray(counts, dtype=np.int64)


def _node_mu(
    params: GLMParams, family: Family, x: FloatArray, y: FloatArray, node: str
) -> tuple[FloatArray | None, FloatArray | None]:
    """Fitted means and linear predictor at this round's state (None: not yet known)."""
    if params.coefficients is not None:
        beta = np.asarray(params.coefficients, dtype=float)
        if beta.size != x.shape[1]:
            raise QueryError(
                f"{beta.size} coefficients were sent for {x.shape[1]} design columns",
                rule="glm.state",
                node=node,
                fix="submit GLMs through the session's glm(); do not send iteration state",
            )
        eta = x @ beta
        return family.inverse(eta), eta
    if family.needs_mean and params.response_mean is None:
        return None, None
    mu = family.starting_mu(y, params.response_mean or 0.0)
    return mu, family.link(mu)


def glm_node_dp(
    params: GLMParams, local: LocalDataset, request: DPRequest
) -> GLMMomentsRelease | GLMNewtonRelease:
    """One noisy release over this node's complete rows, each row's share bounded.

    The sums and the bound on one row's share of each come from ``_dp_sums``
    (which enforces every bound on every row before summing); here each sum
    gets its part of this message's rho. The data-dependent refusals of the
    exact path (saturation, weight concentration, a response outside the
    family's domain) are not applied: each would reveal something about the
    rows, and the noise is what protects them.
    """
    sums = _dp_sums(params, local)
    release = ZCDPRelease(budget=params.dp_rho(), delta=request.delta)
    part = release.budget
    if params.family == "gaussian":
        moments = np.zeros(sum(p.size for p in sums.positions.values()))
        for block, share in GAUSSIAN_SHARES.items():
            moments[sums.positions[block]] = release.floats(
                f"moments.{block}", sums.sums[block], share * part, sums.bounds[block]
            )
        return GLMMomentsRelease(
            names=sums.names,
            centre=sums.centre,
            half_width=sums.half_width,
            moments=moments,
            privacy=dict(release.record()),
        )
    # One row is one count.
    count = release.counts("count", [sums.rows], COUNT_SHARE * part)
    gradient = release.floats(
        "gradient", sums.sums["gradient"], GRADIENT_SHARE * part, sums.bounds["gradient"]
    )
    hessian = release.floats(
        "hessian", sums.sums["hessian"], HESSIAN_SHARE * part, sums.bounds["hessian"]
    )
    return GLMNewtonRelease(
        names=sums.names,
        centre=sums.centre,
        half_width=sums.half_width,
        n=int(count[0]),
        gradient=gradient,
        hessian=hessian,
        privacy=dict(release.record()),
    )


@dataclass(frozen=True)
class _DPSums:
    """One node's DP statistics before noise, and what one row can add to each."""

    names: tuple[str, ...]
    centre: FloatArray
    half_width: FloatArray
    rows: int
    sums: dict[str, FloatArray]
    bounds: dict[str, float]
    """L2 norm of the most one row adds to each sum: its sensitivity (rows added or
    removed), proved in ``_UnitCoding`` and enforced on every row by ``_capped``."""
    positions: dict[str, npt.NDArray[np.intp]]
    """gaussian: where each block's entries sit in the upper triangle of sum v v'."""


def _dp_sums(params: GLMParams, local: LocalDataset) -> _DPSums:
    """This node's unit rows and the sums a DP GLM releases, every row's share capped.

    Numeric columns are clamped to their public bounds before the formula's
    transforms, so every design column lies in a range computed from the bounds
    alone; ``_UnitCoding`` maps the augmented rows ``u = (1, columns[, y])``
    into ``v`` in [-1, 1] (clamping again) and bounds what one row adds.

    - gaussian: sum v v' (upper triangle) in three blocks, each its own
      Gaussian release: ``xx`` (count, sum x, X'X), ``xy`` (sum y, X'y) and
      ``yy``. The coefficients' error comes mostly from X'y's noise, X'X's
      reaches them only times the coefficients (small in unit coordinates), and
      y'y only sets the scale: ``GAUSSIAN_SHARES``.
    - binomial, poisson: the score sum v_x (y - mu) and the information
      sum w v_x v_x' at the coordinator's coefficients, with |y - mu| <= R and
      0 <= w <= W per row (``_bounded_residuals``): one row adds at most
      R max|v_x| and W max|upper(v_x v_x')|.
    """
    node = local.node_name
    family = FAMILIES[params.family]
    response = params.formula.response
    if response is None:
        raise AssertionError("GLMParams requires a response")
    frame = selected_rows(params, local).copy()
    clamped = {f.column for f in params.formula.factors() if not f.categorical}
    if family.name == "binomial":
        clamped.discard(response.column)  # its range is the family's: 0 to 1
    for column in sorted(clamped):
        lo, hi = public_bounds(params, local, column)
        values = frame[column].to_numpy(dtype=float, na_value=np.nan)
        frame[column] = np.clip(values, lo, hi)
    design = design_matrix(params.formula, frame, local.schema, node, drop_invalid=True)
    if design.y is None:
        raise AssertionError("GLMParams requires a response")
    ranges, groups = _design_layout(params, local)
    if len(ranges) != len(design.names):
        raise AssertionError("design ranges and design columns disagree")
    y_range = _response_range(params, local, family, response)
    y = np.clip(design.y, *y_range)
    x = design.x
    skip = 1 if params.formula.intercept else 0
    box = [(1.0, 1.0), *ranges[skip:]]
    columns = [np.ones(len(x)), *x[:, skip:].T]
    if family.name == "gaussian":
        box.append(y_range)
        columns.append(y)
    # Augmented index of design column j: the constant is column 0 either way.
    shift = 1 - skip
    coding = _UnitCoding.of(
        box, [(tuple(j + shift for j in cols), reference) for cols, reference in groups]
    )
    unit = coding.unit(np.column_stack(columns))
    extremes = coding.extreme_rows()
    m = unit.shape[1]
    names = tuple(design.names)
    sums: dict[str, FloatArray] = {}
    bounds: dict[str, float] = {}
    positions: dict[str, npt.NDArray[np.intp]] = {}
    if family.name == "gaussian":
        upper = np.triu_indices(m)
        for block, mask in _moment_blocks(m).items():
            bound = _largest_share(extremes, mask)
            shares = np.sqrt(_quartic(unit, mask))
            capped = unit * _capped(shares, bound)[:, None]
            positions[block] = np.flatnonzero(mask[upper])
            sums[block] = (capped.T @ unit)[upper][positions[block]]
            bounds[block] = bound
        return _DPSums(names, coding.centre, coding.half, len(x), sums, bounds, positions)
    beta = _dp_coefficients(params, x.shape[1], node)
    residual, weight, r_max, w_max = _bounded_residuals(family, x @ beta, y, y_range[1])
    triangle = np.triu(np.ones((m, m), dtype=bool))
    # Score: one row adds v_x r with |r| <= R, so at most R max|v_x|.
    bounds["gradient"] = r_max * float(np.sqrt(np.max(np.sum(extremes**2, axis=1))))
    shares = np.abs(residual) * np.sqrt(np.sum(unit**2, axis=1))
    sums["gradient"] = (unit * _capped(shares, bounds["gradient"])[:, None]).T @ residual
    # Information: one row adds w upper(v_x v_x') with 0 <= w <= W.
    bounds["hessian"] = w_max * _largest_share(extremes, triangle)
    shares = weight * np.sqrt(_quartic(unit, triangle))
    weighted = unit * (weight * _capped(shares, bounds["hessian"]))[:, None]
    sums["hessian"] = (weighted.T @ unit)[np.triu_indices(m)]
    return _DPSums(names, coding.centre, coding.half, len(x), sums, bounds, positions)


@dataclass(frozen=True)
class _UnitCoding:
    """How a node maps its augmented rows into [-1, 1]: from public bounds and levels only.

    A numeric column's range ``(lo, hi)`` maps to [-1, 1] by its midpoint and
    half-width. The treatment-coded columns of a categorical main effect with
    k levels are 0/1 indicators of which at most one is 1 (exactly one when
    the factor keeps every level); they are centred at 1/k with half-width
    1 - 1/k, so a row holds 1 in its level's column and -1/(k - 1) in the
    others (-1/(k - 1) everywhere at the reference level). For k = 2 that is
    the midpoint coding; for k > 2 a row's squared norm over the factor's
    columns is at most 1 + (k - 2)/(k - 1)^2 instead of k - 1, while the
    levels stay as far apart as centring at 1/2 keeps them per unit of that
    norm -- what the coefficients' noise depends on.

    Why one row adds at most ``_largest_share(extreme_rows(), mask)`` to a
    sum of its entries' products v_i v_j over the pairs in ``mask``: the
    L2 norm of that share is sqrt(sum_mask v_i^2 v_j^2), which grows with
    every |v_i|. A numeric column's |v_i| is at most 1 (clamped); a factor's
    columns take one of its k patterns above (the design is treatment-coded
    from the agreed levels, and rows with other values are dropped). So the
    largest share is at a row with |v_i| = 1 in every numeric column and one
    pattern per factor: ``extreme_rows`` lists all of them (up to
    ``MAX_EXTREME_ROWS`` combinations; beyond that every |v_i| is taken as 1,
    which bounds every pattern too). ``_capped`` enforces the bound on every
    actual row regardless, before anything is summed.
    """

    centre: FloatArray
    half: FloatArray
    groups: tuple[tuple[tuple[int, ...], bool], ...]
    """Each categorical main effect's columns, and whether its reference level exists."""

    @classmethod
    def of(
        cls,
        box: Sequence[tuple[float, float]],
        groups: Sequence[tuple[tuple[int, ...], bool]],
    ) -> _UnitCoding:
        centre = np.array([(lo + hi) / 2.0 for lo, hi in box])
        half = np.array([(hi - lo) / 2.0 for lo, hi in box])
        centre[0], half[0] = 0.0, 1.0  # the constant stays 1
        kept = []
        for columns, reference in groups:
            levels = len(columns) + (1 if reference else 0)
            if levels < 2:
                continue
            centre[list(columns)] = 1.0 / levels
            half[list(columns)] = 1.0 - 1.0 / levels
            kept.append((tuple(columns), reference))
        if np.any(half <= 0.0):
            raise AssertionError("a non-constant design column has an empty range")
        return cls(centre, half, tuple(kept))

    def unit(self, columns: FloatArray) -> FloatArray:
        unit: FloatArray = np.clip((columns - self.centre) / self.half, -1.0, 1.0)
        return unit

    def extreme_rows(self) -> FloatArray:
        """|v| of every row whose products could be largest (see the class docstring)."""
        m = self.centre.size
        patterns: list[list[FloatArray]] = []
        for columns, reference in self.groups:
            cols = list(columns)
            indicators = [np.eye(len(cols))[i] for i in range(len(cols))]
            if reference:
                indicators.append(np.zeros(len(cols)))
            patterns.append([np.abs((d - self.centre[cols]) / self.half[cols]) for d in indicators])
        if math.prod(len(p) for p in patterns) > MAX_EXTREME_ROWS:
            return np.ones((1, m))
        rows = []
        for combination in itertools.product(*patterns):
            row = np.ones(m)
            for (columns, _), values in zip(self.groups, combination, strict=True):
                row[list(columns)] = values
            rows.append(row)
        return np.array(rows)


def _moment_blocks(m: int) -> dict[str, npt.NDArray[np.bool_]]:
    """The pairs (i <= j) of sum v v' in each gaussian block; the response is the last column."""
    i, j = np.indices((m, m))
    upper = i <= j
    return {
        "xx": upper & (j < m - 1),
        "xy": (i < m - 1) & (j == m - 1),
        "yy": (i == m - 1) & (j == m - 1),
    }


def _quartic(rows: FloatArray, mask: npt.NDArray[np.bool_]) -> FloatArray:
    """Per row, sum over the pairs in ``mask`` of v_i^2 v_j^2: its share's squared L2 norm."""
    squares = rows**2
    quartic: FloatArray = np.einsum("ni,ij,nj->n", squares, mask.astype(float), squares)
    return quartic


def _largest_share(extremes: FloatArray, mask: npt.NDArray[np.bool_]) -> float:
    return float(np.sqrt(np.max(_quartic(extremes, mask))))


def _capped(shares: FloatArray, bound: float) -> FloatArray:
    """Per row, the factor that scales its share down to ``bound`` (1 for every row the
    coding's bound already covers): the clamp that makes the stated sensitivity hold."""
    with np.errstate(divide="ignore"):
        factor: FloatArray = np.minimum(1.0, bound / np.maximum(shares, 1e-300))
    return factor


def _bounded_residuals(
    family: Family, eta: FloatArray, y: FloatArray, y_max: float
) -> tuple[FloatArray, FloatArray, float, float]:
    """Per-row score residual y - mu and weight, clamped to the bounds R and W returned.

    binomial: y and mu are in [0, 1], so |y - mu| <= 1 and mu (1 - mu) <= 1/4.
    poisson: the mean is capped at the response's public upper bound Y, so
    |y - mu| <= Y and mu <= Y. The fit is then the Poisson MLE wherever no
    fitted mean exceeds the largest count the bounds allow, and an M-estimator
    that stops trusting the model beyond it otherwise.
    """
    if family.name == "binomial":
        mu = family.inverse(eta)
        return np.clip(y - mu, -1.0, 1.0), np.clip(mu * (1.0 - mu), 0.0, 0.25), 1.0, 0.25
    mu = np.exp(np.minimum(eta, math.log(y_max)))
    return np.clip(y - mu, -y_max, y_max), np.clip(mu, 0.0, y_max), y_max, y_max


def _dp_coefficients(params: GLMParams, p: int, node: str) -> FloatArray:
    """The coefficients a DP Newton step is evaluated at (zero for the first)."""
    if params.coefficients is None:
        return np.zeros(p)
    beta = np.asarray(params.coefficients, dtype=float)
    if beta.size != p or not np.all(np.isfinite(beta)):
        raise QueryError(
            f"{beta.size} coefficients were sent for {p} design columns, or some are not finite",
            rule="glm.state",
            node=node,
            fix="submit GLMs through the session's glm(); do not send iteration state",
        )
    return beta


def _factor_range(params: GLMParams, local: LocalDataset, factor: Factor) -> tuple[float, float]:
    """The range of one factor's values on clamped rows: an indicator's, or the bounds
    through the (increasing) transform."""
    if factor.categorical:
        return 0.0, 1.0
    lo, hi = public_bounds(params, local, factor.column)
    if factor.transform is None:
        return lo, hi
    with np.errstate(all="ignore"):
        low, high = TRANSFORMS[factor.transform](np.array([lo, hi]))
    if not (math.isfinite(low) and math.isfinite(high)):
        raise QueryError(
            f"{factor.label} has no finite range on the bounds ({lo:g}, {hi:g}) of "
            f"{factor.column!r}, so a DP release cannot bound what one row adds",
            rule="privacy.dp_term",
            node=local.node_name,
            fix=f"give {factor.column!r} bounds inside the domain of np.{factor.transform} "
            "(e.g. lo > 0 for np.log, hi < 700 for np.exp), or drop the transform",
            column=factor.column,
        )
    return float(low), float(high)


def _design_layout(
    params: GLMParams, local: LocalDataset
) -> tuple[list[tuple[float, float]], list[tuple[tuple[int, ...], bool]]]:
    """The range of every design column, in design_matrix's order, from public bounds only;
    and the columns of each categorical main effect, with whether its first level is the
    reference (all zero) or has a column of its own.

    A term's columns are products of its factors' values, and a product of
    values in intervals lies between the products of the intervals' ends.
    """
    formula, node = params.formula, local.node_name
    ranges = [(1.0, 1.0)] if formula.intercept else []
    groups: list[tuple[tuple[int, ...], bool]] = []
    # design_matrix gives the first categorical main effect every level when there is
    # no intercept; the others drop their first level.
    full_rank = None
    if not formula.intercept:
        full_rank = next(
            (
                t.factors[0]
                for t in formula.terms
                if len(t.factors) == 1 and t.factors[0].categorical
            ),
            None,
        )
    for term in formula.terms:
        low, high, width = 1.0, 1.0, 1
        for factor in term.factors:
            f_lo, f_hi = _factor_range(params, local, factor)
            corners = (low * f_lo, low * f_hi, high * f_lo, high * f_hi)
            low, high = min(corners), max(corners)
            if factor.categorical:
                levels = len(agreed_levels(factor, local.schema, node))
                width *= levels if factor == full_rank and len(term.factors) == 1 else levels - 1
        if len(term.factors) == 1 and term.factors[0].categorical and width > 0:
            start = len(ranges)
            groups.append((tuple(range(start, start + width)), term.factors[0] != full_rank))
        ranges += [(low, high)] * width
    return ranges, groups


def _response_range(
    params: GLMParams, local: LocalDataset, family: Family, response: Factor
) -> tuple[float, float]:
    if family.name == "binomial":
        return 0.0, 1.0
    lo, hi = _factor_range(params, local, response)
    if family.name == "poisson":
        if hi <= 0.0:
            raise QueryError(
                f"the poisson response {response.label} needs a positive upper bound",
                rule="privacy.bounds_required",
                node=local.node_name,
                fix=f"give {response.column!r} bounds (0, largest plausible count)",
                column=response.column,
            )
        return max(lo, 0.0), hi
    return lo, hi


# ---- server side -----------------------------------------------------------


@dataclass(frozen=True)
class _Fit:
    """One round's sums at the fitted means, over all nodes."""

    xtwx: FloatArray
    xtwz: FloatArray
    deviance: float
    pearson: float
    loglike: float | None
    """None where the nodes release none (gaussian)."""
    null_deviance: float | None
    """None in a round that did not carry the pooled mean."""


@dataclass
class _Round:
    """One round's node releases, summed over nodes."""

    names: list[str]
    nodes: list[str]
    n: int
    sum_y: float
    rows_used: dict[str, int]
    rows_dropped: dict[str, int]
    xtx: FloatArray | None
    """X'X, in rounds without coefficients."""
    step: _Fit | None
    """The IRLS sums, in rounds at known fitted means."""

    @property
    def fit(self) -> _Fit:
        return _released_in_round(self.step, "X'WX")

    @property
    def design(self) -> FloatArray:
        return _released_in_round(self.xtx, "X'X")


def _released_in_round(value: T | None, what: str) -> T:
    if value is None:
        raise TaskFailed(
            f"the nodes did not release {what} in this round",
            rule="glm.protocol",
            fix="upgrade every node to the same oncofed version",
        )
    return value


def _round(grid: Grid, params: GLMParams, nodes: Sequence[int], label: str) -> _Round:
    replies = broadcast(grid, "glm", params, nodes, group_id=f"glm/{label}")
    kind = glm_release(params)
    parts = released(replies, kind)
    names: list[str] | None = None
    for node, part in parts:
        names = same_design(names, list(part.names), node, "glm")
    if names is None:
        raise AssertionError("broadcast returns at least one reply")
    releases = [part for _, part in parts]
    xtx = [r.xtx for r in releases if isinstance(r, GLMDesignRelease | GLMStartRelease)]
    steps = [r for r in releases if isinstance(r, GLMStepRelease)]
    return _Round(
        names=names,
        nodes=[node for node, _ in parts],
        n=sum(r.n for r in releases),
        sum_y=sum(r.sum_y for r in releases),
        rows_used={node: part.n for node, part in parts},
        rows_dropped={node: part.rows_dropped for node, part in parts},
        xtx=_total(xtx) if len(xtx) == len(releases) else None,
        step=_fit(steps) if len(steps) == len(releases) else None,
    )


def _total(arrays: Sequence[FloatArray]) -> FloatArray:
    total: FloatArray = np.sum(np.stack(arrays), axis=0)
    return total


def _fit(steps: Sequence[GLMStepRelease]) -> _Fit:
    return _Fit(
        xtwx=_total([s.xtwx for s in steps]),
        xtwz=_total([s.xtwz for s in steps]),
        deviance=sum(s.deviance for s in steps),
        pearson=sum(s.pearson for s in steps),
        loglike=_optional_total([s.loglike for s in steps]),
        null_deviance=_optional_total([s.null_deviance for s in steps]),
    )


def _optional_total(values: Sequence[FloatArray]) -> float | None:
    """The sum of a statistic every node released one value of; None if any released none."""
    if any(v.size != 1 for v in values):
        return None
    return sum(float(v[0]) for v in values)


def glm_serve(grid: Grid, params: GLMParams) -> GLMResult:
    if params.dp is not None:
        return _serve_dp(grid, params)
    family = FAMILIES[params.family]
    nodes = wait_for_nodes(grid, params)
    first = _round(grid, params, nodes, "start")
    names, everyone = first.names, ", ".join(first.nodes)
    xtx = first.design
    _check_design(xtx, first.n, names, everyone)
    state = params.model_copy(update={"response_mean": first.sum_y / first.n})
    current = first
    round_trips = 1
    if first.step is None:
        current = _round(grid, state, nodes, "start-mean")
        round_trips += 1
    # Steps are compared on the linear predictor's scale: the change of a coefficient
    # times the root mean square of its design column.
    rms = np.sqrt(np.diag(xtx) / first.n)
    previous_deviance = current.fit.deviance
    beta = previous_beta = np.zeros(len(names))
    information = current.fit.xtwx
    converged = False
    iteration = 0
    while iteration < params.iterations and not converged:
        iteration += 1
        information = current.fit.xtwx
        previous_beta = beta
        beta = _solve(information, current.fit.xtwz, names, family, everyone)
        update = {"coefficients": tuple(float(b) for b in beta)}
        try:
            current = _round(grid, state.model_copy(update=update), nodes, f"iteration-{iteration}")
        except OncofedError as refusal:
            # Weights that collapse onto a few rows mid-fit are the mark of a diverging fit.
            last_step = np.abs(beta - previous_beta) * rms
            moving = [names[j] for j in np.argsort(-last_step) if last_step[j] > DIVERGING_STEP]
            if WEIGHT_RULE in refusal.rule.split(",") and iteration > 1 and moving:
                raise _separation_error(family, moving, everyone) from refusal
            raise
        round_trips += 1
        deviance = current.fit.deviance
        if not math.isfinite(deviance):
            raise TaskFailed(
                f"the deviance became {deviance} at iteration {iteration}",
                rule="glm.numerical",
                node=everyone,
                fix="rescale covariates (e.g. years instead of days) or simplify the model",
            )
        change = abs(deviance - previous_deviance)
        converged = (
            # IRLS with the identity link is one exact least-squares solve (W = 1, z = y).
            family.name == "gaussian"
            or change <= params.tol + params.rtol * abs(deviance)
            # A sum over millions of rows cannot resolve changes below its rounding.
            or change <= NOISE_FLOOR * abs(deviance)
        )
        previous_deviance = deviance
    # The final round released X'WX and X'Wz at the fitted coefficients, so the next
    # Newton step costs no round trip.
    next_step = (
        np.abs(_solve(current.fit.xtwx, current.fit.xtwz, names, family, everyone) - beta) * rms
    )
    moving = [names[j] for j in np.argsort(-next_step) if next_step[j] > DIVERGING_STEP]
    if converged and not moving:
        return _result(params, family, current, first, beta, information, iteration, round_trips)
    # Near an optimum Newton steps shrink fast; when no optimum exists they stay ~1.
    last_step = np.abs(beta - previous_beta) * rms
    if moving and (converged or (iteration > 1 and next_step.max() >= 0.5 * last_step.max())):
        raise _separation_error(family, moving, everyone)
    raise TaskFailed(
        f"IRLS did not converge in {iteration} iterations (the deviance is still changing"
        + (f"; still moving: {', '.join(moving)})" if moving else ")"),
        rule="glm.not_converged",
        node=everyone,
        fix=f"raise {Param('max_iter')}, rescale covariates, or simplify the model",
    )


def _check_design(xtx: FloatArray, n: int, names: list[str], everyone: str) -> None:
    """Refuse designs without a unique fit, naming the columns at fault."""
    p = len(names)
    if n <= p:
        raise QueryError(
            f"{n} complete rows over all nodes for {p} coefficients",
            rule="glm.too_few_rows",
            node=everyone,
            fix=f"use fewer terms, a wider {Param('where')} filter, or columns with fewer "
            "missing values",
        )
    empty = [name for name, d in zip(names, np.diag(xtx), strict=True) if d == 0.0]
    if empty:
        raise QueryError(
            f"design column(s) {', '.join(empty)} are zero in every row at every node "
            "(a level no row has, or a column that is always 0)",
            rule="glm.empty_column",
            node=everyone,
            fix="drop the absent level from levels=[...] or remove the term",
        )
    involved = _singular_columns(xtx, names)
    if involved:
        raise QueryError(
            f"design columns {', '.join(involved)} are collinear: "
            "one is a combination of the others in the pooled data",
            rule="glm.collinear",
            node=everyone,
            fix="remove one of these terms (or a redundant level) from the formula",
        )


def _singular_columns(matrix: FloatArray, names: list[str]) -> list[str]:
    """Columns in the near-null space of a cross-product matrix ([] if it is regular)."""
    d = np.sqrt(np.diag(matrix))
    if np.any(d == 0.0):
        return [name for name, v in zip(names, d, strict=True) if v == 0.0]
    values, vectors = np.linalg.eigh(matrix / np.outer(d, d))
    if values[0] > SINGULAR_RATIO * values[-1]:
        return []
    null = np.abs(vectors[:, 0])
    return [name for name, v in zip(names, null, strict=True) if v > 0.1 * null.max()]


def _solve(
    information: FloatArray, score: FloatArray, names: list[str], family: Family, everyone: str
) -> FloatArray:
    """The next IRLS coefficients, solved with unit-diagonal scaling for accuracy."""
    involved = _singular_columns(information, names)
    if involved:
        # The design itself was checked regular: the weights of these columns vanished.
        raise _separation_error(family, involved, everyone)
    d = np.sqrt(np.diag(information))
    solution: FloatArray = np.linalg.solve(information / np.outer(d, d), score / d) / d
    return solution


def _separation_error(family: Family, terms: list[str], everyone: str) -> TaskFailed:
    listed = ", ".join(terms)
    if family.name == "binomial":
        return TaskFailed(
            "perfect separation: the outcome is predicted exactly for some rows, so fitted "
            f"probabilities go to 0 or 1 and the coefficients of {listed} grow without bound "
            "(no maximum-likelihood estimate exists)",
            rule="glm.separation",
            node=everyone,
            fix="drop or merge the terms or levels that predict the outcome perfectly "
            "(e.g. a level where everyone had the event), or fit a simpler model",
            terms=terms,
        )
    if family.name == "poisson":
        return TaskFailed(
            f"the coefficients of {listed} grow without bound: fitted means go to 0 "
            "(e.g. a level with only zero counts), so no maximum-likelihood estimate exists",
            rule="glm.separation",
            node=everyone,
            fix="drop or merge levels without any counts, or fit a simpler model",
            terms=terms,
        )
    return TaskFailed(
        f"the information matrix is singular in {listed}",
        rule="glm.singular",
        node=everyone,
        fix="remove redundant terms from the formula",
        terms=terms,
    )


def _result(
    params: GLMParams,
    family: Family,
    final: _Round,
    first: _Round,
    beta: FloatArray,
    information: FloatArray,
    iterations: int,
    round_trips: int,
) -> GLMResult:
    p = len(beta)
    n = final.n
    df_resid = n - p
    fit = final.fit
    deviance, pearson = fit.deviance, fit.pearson
    if family.name == "gaussian":
        scale = pearson / df_resid
        # statsmodels' gaussian llf is the concentrated one: the scale profiled out at RSS/n.
        llf = -n / 2.0 * (math.log(deviance / n) + 1.0 + math.log(2.0 * math.pi))
    else:
        scale = 1.0
        llf = _released_in_round(fit.loglike, "the log-likelihood")
    d = np.sqrt(np.diag(information))
    cov = np.linalg.inv(information / np.outer(d, d)) / np.outer(d, d) * scale
    return GLMResult(
        dataset=params.dataset,
        formula=params.formula.text,
        family=family.name,
        link=family.link_name,
        names=final.names,
        coef=[float(b) for b in beta],
        cov=[[float(v) for v in row] for row in cov],
        deviance=deviance,
        null_deviance=_released_in_round(fit.null_deviance, "the null deviance"),
        pearson_chi2=pearson,
        scale=scale,
        llf=llf,
        aic=-2.0 * llf + 2.0 * p,
        bic=-2.0 * llf + p * math.log(n),
        df_model=p - 1,
        df_resid=df_resid,
        nobs=n,
        iterations=iterations,
        converged=True,
        round_trips=round_trips,
        nodes=first.nodes,
        rows_used=final.rows_used,
        rows_dropped=final.rows_dropped,
    )


# ---- server side under DP -----------------------------------------------------


UnitBox = TypeVar("UnitBox", "GLMMomentsRelease", "GLMNewtonRelease")


@dataclass(frozen=True)
class _DPRound(Generic[UnitBox]):
    """One DP round: each node's release, the nodes' report and each node's rho."""

    parts: list[tuple[str, UnitBox]]
    report: DPReport
    rho: dict[str, float]


def _dp_round(
    grid: Grid,
    params: GLMParams,
    nodes: Sequence[int],
    label: str,
    kind: type[UnitBox],
) -> _DPRound[UnitBox]:
    replies = broadcast(grid, "glm", params, nodes, group_id=f"glm/{label}")
    parts = released(replies, kind)
    names: list[str] | None = None
    for node, part in parts:
        names = same_design(names, list(part.names), node, "glm")
    report = dp_report(replies)
    if report is None or any(part.privacy is None for _, part in parts):
        raise TaskFailed(
            "a node answered a DP request without a privacy statement",
            rule="glm.protocol",
            fix="upgrade every node to the same oncofed version",
        )
    rho = {node: float(part.privacy["rho"]) for node, part in parts if part.privacy}
    return _DPRound(parts=parts, report=report, rho=rho)


def _to_raw(part: _GLMUnitBox) -> FloatArray:
    """T with u = T v: a node's unit coordinates back to the raw augmented row."""
    transform = np.diag(part.half_width)
    transform[:, 0] += part.centre
    return transform


def _symmetric(upper: FloatArray, m: int) -> FloatArray:
    matrix = np.zeros((m, m))
    matrix[np.triu_indices(m)] = upper
    return matrix + np.triu(matrix, 1).T


def _noise_std(part: Release, quantity: str) -> float:
    if part.privacy is None:
        raise AssertionError("_dp_round checked every part's privacy statement")
    return float(part.privacy[f"scale.{quantity}"])


def _positive_definite(matrix: FloatArray, to_unit: FloatArray, noise: float) -> FloatArray:
    """``matrix`` with every eigenvalue raised to at least the noise of one entry.

    Noise can leave a cross-product matrix indefinite. In unit coordinates, where
    each entry carries noise of sd ``noise``, eigenvalues are floored at that sd:
    enough to invert, and no more, since a higher floor (e.g. the noise's
    spectral norm, 2 sd sqrt(m)) shrinks the coefficients of columns whose
    spread is small against their bounds. Post-processing only.
    """
    back = np.linalg.inv(to_unit)
    unit = back @ matrix @ back.T
    values, vectors = np.linalg.eigh((unit + unit.T) / 2.0)
    floor = noise
    repaired: FloatArray = to_unit @ ((vectors * np.maximum(values, floor)) @ vectors.T) @ to_unit.T
    return repaired


def _design_index(params: GLMParams, p: int) -> npt.NDArray[np.intp]:
    """Where the design columns sit in the augmented row (1, columns but the intercept, ...)."""
    start = 0 if params.formula.intercept else 1
    return np.arange(start, start + p)


def _serve_dp(grid: Grid, params: GLMParams) -> GLMResult:
    nodes = wait_for_nodes(grid, params)
    if params.family == "gaussian":
        return _gaussian_dp(params, _dp_round(grid, params, nodes, "dp", GLMMomentsRelease))
    return _newton_dp(grid, params, nodes)


def _gaussian_dp(params: GLMParams, round_: _DPRound[GLMMomentsRelease]) -> GLMResult:
    """Least squares on the nodes' noisy cross-products; standard errors by bootstrap.

    The normal equations are solved once; the noise's share of the
    coefficients' variance is found by re-drawing each node's noise at its
    stated scale around the released sums and solving again (a parametric
    bootstrap of the post-processing, PD repair included), and is added to the
    sampling variance scale * (X'X)^-1.
    """
    parts = [part for _, part in round_.parts]
    names = list(parts[0].names)
    p, m = len(names), len(parts[0].centre)
    index = _design_index(params, p)
    to_raw = [_to_raw(part) for part in parts]
    released_moments = [_symmetric(part.moments, m) for part in parts]
    # Each block of sum v v' carries its own noise (GAUSSIAN_SHARES): per entry, per node.
    upper = np.triu_indices(m)
    stds = []
    for part in parts:
        sd = np.zeros(len(upper[0]))
        for block, mask in _moment_blocks(m).items():
            sd[mask[upper]] = _noise_std(part, f"moments.{block}")
        stds.append(sd)
    noise = math.sqrt(sum(_noise_std(part, "moments.xx") ** 2 for part in parts))
    y_noise = math.sqrt(sum(_noise_std(part, "moments.yy") ** 2 for part in parts))
    everyone = ", ".join(node for node, _ in round_.parts)

    def solve(moments: Sequence[FloatArray]) -> tuple[FloatArray, FloatArray, float, float]:
        total = sum((t @ mm @ t.T for t, mm in zip(to_raw, moments, strict=True)), np.zeros((m, m)))
        xtx = _positive_definite(
            total[np.ix_(index, index)], to_raw[0][np.ix_(index, index)], noise
        )
        xty = total[index, -1]
        beta = _solve(xtx, xty, names, FAMILIES["gaussian"], everyone)
        rss = float(total[-1, -1] - 2.0 * beta @ xty + beta @ xtx @ beta)
        # Noise can make the residual sum negative; the noise in y'y is its resolution.
        floor = y_noise * float(to_raw[0][-1, -1]) ** 2
        return beta, xtx, max(rss, floor), float(total[0, 0])

    beta, xtx, rss, n_noisy = solve(released_moments)
    n = round(n_noisy)
    if n <= p + 1:
        raise QueryError(
            f"about {max(n, 0)} complete rows over all nodes for {p} coefficients",
            rule="glm.too_few_rows",
            node=everyone,
            fix=f"use fewer terms, a wider {Param('where')} filter, or columns with fewer "
            "missing values",
        )
    # A fixed seed: the bootstrap re-uses public numbers only, and a result should not
    # change when it is recomputed from the same releases.
    rng = np.random.default_rng(0)
    draws = []
    for _ in range(BOOTSTRAP_DRAWS):
        redrawn = [
            mm + _symmetric(rng.normal(0.0, 1.0, sd.size) * sd, m)
            for mm, sd in zip(released_moments, stds, strict=True)
        ]
        draws.append(solve(redrawn)[0])
    scale = rss / (n - p)
    d = np.sqrt(np.diag(xtx))
    sampling = np.linalg.inv(xtx / np.outer(d, d)) / np.outer(d, d) * scale
    cov = sampling + np.cov(np.array(draws), rowvar=False)
    sum_y = sum(
        float((t @ mm @ t.T)[0, -1]) for t, mm in zip(to_raw, released_moments, strict=True)
    )
    yty = sum(float((t @ mm @ t.T)[-1, -1]) for t, mm in zip(to_raw, released_moments, strict=True))
    null_deviance = max(yty - sum_y * sum_y / n, rss)
    llf = -n / 2.0 * (math.log(rss / n) + 1.0 + math.log(2.0 * math.pi))
    rows = {node: round(float(part.moments[0])) for node, part in round_.parts}
    return _dp_result(
        params,
        names,
        beta,
        cov,
        round_,
        rows,
        n,
        scale,
        1,
        True,
        deviance=rss,
        null_deviance=null_deviance,
        llf=llf,
    )


def _newton_dp(grid: Grid, params: GLMParams, nodes: Sequence[int]) -> GLMResult:
    """max_iter noisy Newton steps from zero, each richer than the last; the last averaged.

    Step k costs ``dp_step_share(k, max_iter)`` of rho (``dp_step`` tells the
    nodes which step a message is): the early steps, whose noise Newton's
    later steps correct, are cheap, and most of the budget goes to the last.
    Once at the optimum a step gives beta_hat + H^-1 e_k, with e_k that step's
    fresh gradient noise: the last ``DP_AVERAGED_STEPS`` iterates are averaged
    with weights a_k proportional to their rho (inverse-variance weights), and
    the covariance is the sandwich H^-1 + H^-1 (sum a_k^2 Var(e_k)) H^-1, with H
    averaged over those steps; the Hessian's own noise only changes a step's
    length, a second-order effect at the optimum.
    """
    family = FAMILIES[params.family]
    beta: FloatArray | None = None
    spent: dict[str, float] = {}
    counts: dict[str, list[int]] = {}
    last: _DPRound[GLMNewtonRelease] | None = None
    kept: list[tuple[FloatArray, FloatArray, FloatArray, FloatArray, float]] = []
    """(iterate, information, gradient noise covariance, step, rho share) of averaged steps."""
    names: list[str] = []
    steps = params.iterations
    for iteration in range(1, steps + 1):
        state = params.model_copy(
            update={
                "coefficients": None if beta is None else tuple(float(b) for b in beta),
                "dp_step": iteration,
            }
        )
        last = _dp_round(grid, state, nodes, f"dp-step-{iteration}", GLMNewtonRelease)
        for node, rho in last.rho.items():
            spent[node] = spent.get(node, 0.0) + rho
        parts = [part for _, part in last.parts]
        for node, part in last.parts:
            counts.setdefault(node, []).append(part.n)
        names = list(parts[0].names)
        p, m = len(names), len(parts[0].centre)
        index = _design_index(params, p)
        to_raw = [_to_raw(part) for part in parts]
        hessian = sum(
            (t @ _symmetric(part.hessian, m) @ t.T for t, part in zip(to_raw, parts, strict=True)),
            np.zeros((m, m)),
        )
        gradient = sum(
            (t @ part.gradient for t, part in zip(to_raw, parts, strict=True)), np.zeros(m)
        )
        noise = math.sqrt(sum(_noise_std(part, "hessian") ** 2 for part in parts))
        information = _positive_definite(
            hessian[np.ix_(index, index)], to_raw[0][np.ix_(index, index)], noise
        )
        gradient_cov = sum(
            (
                _noise_std(part, "gradient") ** 2 * (t @ t.T)
                for t, part in zip(to_raw, parts, strict=True)
            ),
            np.zeros((m, m)),
        )[np.ix_(index, index)]
        step = _solve(information, gradient[index], names, family, ", ".join(spent))
        # A noisy Hessian can be nearly singular in some direction and send the
        # iterate where every weight vanishes; a step moving any row's linear
        # predictor by more than DP_MAX_STEP is shortened to it.
        reach = float(np.sum(np.abs(to_raw[0][np.ix_(index, index)].T @ step)))
        step = step * min(1.0, DP_MAX_STEP / reach) if reach > 0 else step
        beta = step if beta is None else np.add(beta, step, dtype=np.float64)
        if iteration > steps - DP_AVERAGED_STEPS:
            share = dp_step_share(iteration, steps)
            kept.append((beta, information, gradient_cov, step, share))
    if last is None:
        raise AssertionError("max_iter >= 1")
    iterates, informations, noises, moves, shares = (np.array(v) for v in zip(*kept, strict=True))
    weights = shares / shares.sum()
    inverse: FloatArray = np.linalg.inv(informations.mean(axis=0)).astype(np.float64)
    one_step: FloatArray = inverse @ noises[-1] @ inverse
    averaged: FloatArray = inverse @ np.einsum("k,kij->ij", weights**2, noises) @ inverse
    # Converged as far as the noise can tell: the last step no larger than its noise.
    converged = bool(np.all(np.abs(moves[-1]) <= 4.0 * np.sqrt(np.diag(one_step))))
    rows = {node: round(float(np.mean(c))) for node, c in counts.items()}
    n = round(sum(float(np.mean(c)) for c in counts.values()))
    return _dp_result(
        params,
        names,
        weights @ iterates,
        inverse + averaged,
        _DPRound(parts=last.parts, report=last.report, rho=spent),
        rows,
        n,
        1.0,
        steps,
        converged,
        deviance=None,
        null_deviance=None,
        llf=None,
    )


def _composed(rho: dict[str, float], delta: float) -> dict[str, float]:
    """Each node's loss over every round of the fit (zCDP rhos add)."""
    return {node: PrivacyLoss.from_rho(r).epsilon(delta) for node, r in sorted(rho.items())}


def _dp_result(
    params: GLMParams,
    names: list[str],
    beta: FloatArray,
    cov: FloatArray,
    round_: _DPRound[GLMMomentsRelease] | _DPRound[GLMNewtonRelease],
    rows: dict[str, int],
    n: int,
    scale: float,
    iterations: int,
    converged: bool,
    *,
    deviance: float | None,
    null_deviance: float | None,
    llf: float | None,
) -> GLMResult:
    p = len(beta)
    family = FAMILIES[params.family]
    return GLMResult(
        dataset=params.dataset,
        formula=params.formula.text,
        family=family.name,
        link=family.link_name,
        names=names,
        coef=[float(b) for b in beta],
        cov=[[float(v) for v in row] for row in cov],
        deviance=deviance,
        null_deviance=null_deviance,
        pearson_chi2=deviance,
        scale=scale,
        llf=llf,
        aic=None if llf is None else -2.0 * llf + 2.0 * p,
        bic=None if llf is None else -2.0 * llf + p * math.log(n),
        df_model=p - 1,
        df_resid=n - p,
        nobs=n,
        iterations=iterations,
        converged=converged,
        round_trips=iterations,
        nodes=[node for node, _ in round_.parts],
        rows_used=rows,
        rows_dropped={},
        privacy=round_.report.model_copy(
            update={"epsilon": _composed(round_.rho, round_.report.delta)}
        ),
    )


def glm_table(result: GLMResult) -> Text:
    """statsmodels' summary layout, as text (rich would read ``[T.level]`` as markup)."""
    return Text(result.summary())


TASK: TaskType[GLMParams, GLMResult] = TaskType(
    name="glm",
    params=GLMParams,
    result=GLMResult,
    serve=glm_serve,
    node_handlers={"glm": glm_node},
    releases=GLM_RELEASES,
    summary="generalised linear models (gaussian, binomial, poisson) by federated IRLS",
    arguments=("formula",),
    table=glm_table,
)
