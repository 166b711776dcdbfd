"""Parameters of a federated training run: data, model, strategy, local training, privacy."""

from __future__ import annotations

import functools
import math
from typing import Annotated, ClassVar, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from oncofed.kernel.errors import NodeRefusal, Param
from oncofed.kernel.schema import DatasetSchema
from oncofed.privacy.accounting import RDP_ORDERS, PrivacyLoss
from oncofed.privacy.dp import DPRequest
from oncofed.privacy.policy import DatasetPrivacy
from oncofed.tasks.base import ColumnRole, TaskParams, WrittenAs, round_down
from oncofed.tasks.coxph import covariate_formula
from oncofed.tasks.describe import DescribeParams
from oncofed.tasks.formula import Formula, check_formula
from oncofed.tasks.training.architectures import DEFAULT_HIDDEN, SURVIVAL, Architecture

Strategy = Literal["fedavg", "fedprox", "fedadam"]
Scaling = Literal["describe", "bounds"]
"""``describe`` runs an exact federated describe, which a node that requires DP refuses;
``bounds`` centres and scales by the ranges the schemas declare, reading no data."""
FloatArray = npt.NDArray[np.float64]
MAX_WIDTH = 256


MAX_ROUNDS = 1000
MAX_EXPECTED_ROWS = 1_000_000
"""Caps the steps a round takes (``expected_rows / batch_size`` per local epoch)."""
EXPECTED_ROWS_NEEDED = (
    "DP-SGD needs dp.expected_rows: the rows you expect at each node, a public figure such "
    "as a published cohort size. It fixes the sampling rate (batch_size / expected_rows) and "
    "the steps per epoch, which must not come from a node's true row count"
)


class DPSGDRequest(DPRequest):
    """DP-SGD for the whole run: (epsilon, delta) is the total each node may spend on it.

    Everything the accounting depends on is in the signed request, never read
    from the data: the Poisson sampling rate is ``batch_size / expected_rows``,
    a round takes ``local_epochs * ceil(expected_rows / batch_size)`` steps, and
    the noisy gradient sum is divided by the expected batch. The true number of
    rows at a node only changes how many patients each step happens to draw.
    """

    max_grad_norm: float = Field(default=1.0, gt=0, description="Per-example clipping norm.")
    # Required for training (``TrainParams`` says so); optional here only so that a request
    # DP-SGD cannot serve at all (cox_mlp) is refused for that reason first.
    expected_rows: int | None = Field(
        default=None,
        ge=1,
        le=MAX_EXPECTED_ROWS,
        description="Training rows the researcher expects at each node (a public figure such "
        "as a published cohort size): sets the sampling rate batch_size / expected_rows and "
        "the steps per local epoch. A node's true row count is never used under DP.",
    )

    @property
    def rows(self) -> int:
        """``expected_rows``, which a validated ``TrainParams`` always has."""
        if self.expected_rows is None:
            raise ValueError(EXPECTED_ROWS_NEEDED)
        return self.expected_rows

    def sample_rate(self, batch_size: int) -> float:
        """Each row's chance of being drawn into a step's batch (Poisson sampling)."""
        return min(1.0, batch_size / self.rows)

    def steps_per_round(self, batch_size: int, local_epochs: int) -> int:
        """Steps of one round: ``local_epochs`` expected passes over ``expected_rows``."""
        return local_epochs * math.ceil(1 / self.sample_rate(batch_size))

    def expected_batch(self, batch_size: int) -> int:
        """The public normaliser of a step's noisy gradient sum (rows drawn in expectation)."""
        return min(batch_size, self.rows)


@functools.lru_cache(maxsize=64)
def dp_sgd_round(
    epsilon: float, delta: float, sample_rate: float, steps: int, rounds: int
) -> tuple[float, PrivacyLoss]:
    """Opacus's noise multiplier for a whole run at (epsilon, delta), and one round's loss.

    ``rounds`` rounds of ``steps`` steps at ``sample_rate``. The round's loss is
    Opacus's Rényi-DP curve on ``RDP_ORDERS``: what the node charges for it,
    known from the signed request alone, so the node can refuse a round (and
    say what would fit) before training it. Cached: the privacy mod and the
    training handler ask for the same run, once per message.
    """
    from opacus.accountants.utils import get_noise_multiplier

    sigma = float(
        get_noise_multiplier(
            target_epsilon=epsilon,
            target_delta=delta,
            sample_rate=sample_rate,
            steps=rounds * steps,
            accountant="rdp",
        )
    )
    return sigma, round_loss(sigma, sample_rate, steps)


def round_loss(sigma: float, sample_rate: float, steps: int) -> PrivacyLoss:
    """The loss of ``steps`` DP-SGD steps with noise multiplier ``sigma`` (Opacus's RDP)."""
    from opacus.accountants.analysis.rdp import compute_rdp

    rdp = compute_rdp(q=sample_rate, noise_multiplier=sigma, steps=steps, orders=list(RDP_ORDERS))
    return PrivacyLoss.from_rdp(RDP_ORDERS, [float(v) for v in np.atleast_1d(rdp)])


class Standardisation(BaseModel):
    """Federated means and standard deviations of the numeric features, set by the server."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    columns: tuple[str, ...] = ()
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    def apply(self, x: FloatArray, names: list[str]) -> FloatArray:
        """Standardise the design columns named in ``columns``; one-hot columns stay 0/1."""
        out = x.copy()
        for column, mean, std in zip(self.columns, self.mean, self.std, strict=True):
            j = names.index(column)
            out[:, j] = (out[:, j] - mean) / (std if std > 0 else 1.0)
        return out


class TrainParams(TaskParams):
    DP: ClassVar[bool] = True
    SERVER_STATE: ClassVar[frozenset[str]] = frozenset({"standardisation"})
    model: Architecture = Field(default="logistic", description="Vetted architecture.")
    features: Annotated[Formula, WrittenAs('"age + tsize + C(tgrade)"')] = Field(
        description="Numeric columns (standardised) and C(column) factors (one-hot, agreed levels)."
    )
    label: str | None = Field(default=None, description="0/1 outcome (logistic, mlp).")
    duration: str | None = Field(default=None, description="Time to event or censoring (cox_mlp).")
    event: str | None = Field(default=None, description="1 = event observed (cox_mlp).")
    hidden: tuple[int, ...] | None = Field(
        default=None, max_length=4, description="Hidden layer widths (mlp: (32,), cox_mlp: (32,))."
    )
    strategy: Strategy = Field(
        default="fedavg", description="Flower strategy: fedavg, fedprox or fedadam."
    )
    rounds: int = Field(default=10, ge=1, le=MAX_ROUNDS, description="Federated rounds.")
    fraction: float = Field(default=1.0, gt=0, le=1, description="Nodes sampled per round.")
    local_epochs: int = Field(
        default=1, ge=1, le=100, description="Passes over its rows each node makes per round."
    )
    batch_size: int = Field(default=32, ge=1, le=100_000, description="Rows per SGD step.")
    learning_rate: float = Field(default=0.1, gt=0, le=10, description="SGD step size.")
    proximal_mu: float = Field(default=0.1, ge=0, description="FedProx's proximal weight.")
    test_fraction: float = Field(
        default=0.2, ge=0, lt=1, description="Each node's held-out share for evaluation."
    )
    evaluate_every: int = Field(
        default=1, ge=1, description="Evaluate on the held-out rows every k rounds (and last)."
    )
    scaling: Scaling = Field(
        default="describe",
        description="Numeric features: federated mean/sd (describe), or the schema's bounds.",
    )
    # The reference (docs/analyses/reference.md) is generated from these descriptions; under
    # DP the seed steers neither the Poisson sampling nor the noise (docs/training.md).
    seed: int = Field(
        default=0,
        ge=0,
        description="Split and initialisation; under dp neither the sampling nor the noise, "
        "which the node seeds from the operating system.",
    )
    timeout: float = Field(
        default=600.0, gt=0, le=86_400, description="Seconds to wait for nodes and each round."
    )
    dp: DPSGDRequest | None = Field(  # type: ignore[assignment]
        default=None,
        description="DP-SGD at every node: the (epsilon, delta) the whole run may cost there, "
        "max_grad_norm, the per-example clipping norm, and expected_rows, a public row count "
        "that fixes the sampling rate (no row count or loss leaves a node under dp).",
    )
    standardisation: Standardisation | None = Field(
        default=None, description="Set by the server from a federated describe; not by users."
    )

    @field_validator("features", mode="before")
    @classmethod
    def _formula(cls, features: object) -> object:
        if isinstance(features, str) or (
            isinstance(features, list | tuple) and all(isinstance(f, str) for f in features)
        ):
            return covariate_formula(features)
        return features

    @field_validator("hidden")
    @classmethod
    def _widths(cls, hidden: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if hidden is not None and not all(1 <= width <= MAX_WIDTH for width in hidden):
            raise ValueError(f"hidden layer widths must be between 1 and {MAX_WIDTH}")
        return hidden

    @model_validator(mode="after")
    def _consistent(self) -> TrainParams:
        for term in self.features.terms:
            factor = term.factors[0]
            if len(term.factors) > 1 or factor.transform is not None:
                raise ValueError(
                    f"feature {term.label!r}: training takes plain columns and C(column) "
                    "factors; let the network learn interactions and transforms"
                )
        if self.features.response is not None or not self.features.terms:
            raise ValueError("features are the right-hand side only, with at least one column")
        targets = [self.label, self.duration, self.event]
        if self.model in SURVIVAL:
            if self.duration is None or self.event is None or self.label is not None:
                raise ValueError(f"{self.model} needs duration= and event=, not label=")
            if self.dp is not None:
                raise ValueError(
                    f"{self.model} cannot train with DP-SGD: the Cox partial likelihood "
                    "couples the patients of a risk set, so one patient's gradient is not "
                    "bounded by clipping; use logistic or mlp under DP"
                )
        elif self.label is None or self.duration is not None or self.event is not None:
            raise ValueError(f"{self.model} needs label=, not duration= or event=")
        if self.dp is not None and self.dp.expected_rows is None:
            raise ValueError(EXPECTED_ROWS_NEEDED)
        if self.model == "logistic" and self.hidden:
            raise ValueError("logistic has no hidden layers: use model='mlp'")
        used = {f.column for f in self.features.factors()}
        clash = sorted(used & {t for t in targets if t is not None})
        if clash:
            raise ValueError(f"{clash} cannot be both a feature and the outcome")
        return self

    @property
    def layers(self) -> tuple[int, ...]:
        return self.hidden if self.hidden is not None else DEFAULT_HIDDEN[self.model]

    @property
    def numeric_features(self) -> tuple[str, ...]:
        return tuple(f.column for f in self.features.factors() if not f.categorical)

    def request_for(self, task: str) -> TaskParams | None:
        """Scaling by federated moments asks every node to describe the numeric features."""
        if task != "describe" or self.scaling != "describe" or not self.numeric_features:
            return None
        return DescribeParams(
            dataset=self.dataset,
            columns=self.numeric_features,
            where=self.where,
            study=self.study,
            min_nodes=self.min_nodes,
            timeout=self.timeout,
        )

    def required_columns(self) -> dict[str, ColumnRole]:
        roles = super().required_columns()
        for factor in self.features.factors():
            roles[factor.column] = "factor" if factor.categorical else "numeric"
        for target in (self.label, self.duration, self.event):
            if target is not None:
                roles[target] = "numeric"
        return roles

    def declared_levels(self) -> dict[str, tuple[str, ...]]:
        return self.features.declared_levels()

    def check_schema(self, schema: DatasetSchema, node: str) -> None:
        super().check_schema(schema, node)
        check_formula(self.features, schema, node)

    # Weights times rows (exact) or weights and a node count of 1 (DP), rows and metric sums
    # all add across nodes (see records.py).
    SECURE_SUM: ClassVar[bool] = True

    def reads_rows(self, action: str) -> bool:
        # The design message answers with column names built from the schema's levels.
        return action != "design"

    def dp_sgd(self) -> tuple[float, PrivacyLoss]:
        """This run's noise multiplier and one round's loss (``dp_sgd_round``)."""
        if self.dp is None:
            raise AssertionError("only DP runs have a noise multiplier")
        return dp_sgd_round(
            self.dp.epsilon,
            self.dp.delta,
            self.dp.sample_rate(self.batch_size),
            self.dp.steps_per_round(self.batch_size, self.local_epochs),
            self.rounds,
        )

    def release_loss(self) -> PrivacyLoss | None:
        # dp is the whole run's loss; every round costs the same share of it.
        return None if self.dp is None else self.dp_sgd()[1]

    def release_too_large(self, epsilon: float, privacy: DatasetPrivacy, node: str) -> NodeRefusal:
        """A round above the node's cap: what fits, in rounds or in the run's epsilon."""
        if self.dp is None:
            raise AssertionError("only DP runs have a release size")
        most, dp = privacy.max_epsilon_per_release, self.dp
        rate = dp.sample_rate(self.batch_size)
        steps = dp.steps_per_round(self.batch_size, self.local_epochs)
        rounds, total = _fitting_run(
            dp.epsilon, dp.delta, rate, steps, self.rounds, most, privacy.delta
        )
        fixes = []
        if rounds is not None:
            fixes.append(f"spread the same dp over {Param('rounds', rounds)}")
        if total is not None:
            run = {"epsilon": total, **dp.model_dump(exclude_defaults=True, exclude={"epsilon"})}
            fixes.append(f"keep {self.rounds} rounds with {Param('dp', run)}")
        fixes.append("ask the node's operator to raise max_epsilon_per_release")
        return NodeRefusal(
            f"each round of DP-SGD may cost at most epsilon {most:g} at this node, and each "
            f"of this run's {self.rounds} rounds costs {epsilon:.3g}: dp epsilon "
            f"{dp.epsilon:g} is the whole run's, spread over its rounds",
            rule="privacy.max_epsilon_per_release",
            node=node,
            fix=", or ".join(fixes),
            setting=most,
        )


def _fitting_run(
    epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    rounds: int,
    most: float,
    node_delta: float,
) -> tuple[int | None, float | None]:
    """The fewest rounds at which a round of this run costs at most ``most`` (at the node's
    delta), and the largest run epsilon at which each of ``rounds`` rounds does.

    Both go through ``sigma``, the noise multiplier at which a round costs
    ``most``: a run fits when Opacus would give it at least that much noise,
    that is when ``sigma`` over the whole run spends at least the run's
    epsilon (``get_noise_multiplier`` returns a multiplier whose run spends at
    most its target). Rényi-DP adds up over steps, so one step's curve at a
    multiplier gives both a round's and a run's loss.
    """
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

    alphas = [float(a) for a in RDPAccountant.DEFAULT_ALPHAS]  # what get_noise_multiplier uses
    orders = sorted(set(RDP_ORDERS) | set(alphas))

    def one_step(sigma: float) -> dict[float, float]:
        rdp = compute_rdp(q=sample_rate, noise_multiplier=sigma, steps=1, orders=orders)
        return dict(zip(orders, (float(v) for v in np.atleast_1d(rdp)), strict=True))

    def round_epsilon(step: dict[float, float]) -> float:
        curve = [steps * step[a] for a in RDP_ORDERS]
        return PrivacyLoss.from_rdp(RDP_ORDERS, curve).epsilon(node_delta)

    def run_spends(step: dict[float, float], run_rounds: int) -> float:
        rdp = np.asarray([run_rounds * steps * step[a] for a in alphas])
        return float(get_privacy_spent(orders=alphas, rdp=rdp, delta=delta)[0])

    # A bracket [lo, hi] of multipliers, a round too costly at lo and within `most` at hi,
    # narrowed where log(loss) against log(sigma), nearly a line, crosses log(most).
    asked, asked_round = dp_sgd_round(epsilon, delta, sample_rate, steps, rounds)
    lo, loss_lo = asked, asked_round.epsilon(node_delta)
    hi = lo * loss_lo / most
    step = one_step(hi)
    loss_hi = round_epsilon(step)
    while loss_hi > most:
        if hi > 1e4:
            return None, None
        lo, loss_lo, hi = hi, loss_hi, 2 * hi
        step = one_step(hi)
        loss_hi = round_epsilon(step)
    for _ in range(12):
        if loss_hi >= 0.999 * most:
            break
        share = math.log(loss_lo / most) / math.log(loss_lo / loss_hi)
        mid = lo * (hi / lo) ** min(max(share, 0.01), 0.99)
        mid_step = one_step(mid)
        loss_mid = round_epsilon(mid_step)
        if loss_mid > most:
            lo, loss_lo = mid, loss_mid
        else:
            hi, loss_hi, step = mid, loss_mid, mid_step
    fewest: int | None = None
    if run_spends(step, MAX_ROUNDS) >= epsilon:
        low, high = rounds, MAX_ROUNDS  # `high` rounds spend the run's epsilon at hi, `low` not
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (low, middle) if run_spends(step, middle) >= epsilon else (middle, high)
        fewest = high
    return fewest, round_down(run_spends(step, rounds))


__all__ = [
    "MAX_EXPECTED_ROWS",
    "MAX_ROUNDS",
    "DPSGDRequest",
    "Scaling",
    "Standardisation",
    "Strategy",
    "TrainParams",
    "dp_sgd_round",
]
