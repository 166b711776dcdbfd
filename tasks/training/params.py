"""Parameters of a federated training run: data, model, strategy, local training, privacy."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from oncofed.kernel.schema import DatasetSchema
from oncofed.privacy.accounting import PrivacyLoss
from oncofed.privacy.dp import DPRequest
from oncofed.tasks.base import ColumnRole, TaskParams, WrittenAs
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


class DPSGDRequest(DPRequest):
    """DP-SGD for the whole run: (epsilon, delta) is the total each node may spend on it."""

    max_grad_norm: float = Field(default=1.0, gt=0, description="Per-example clipping norm.")


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
    rounds: int = Field(default=10, ge=1, le=1000, description="Federated rounds.")
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
    seed: int = Field(default=0, ge=0, description="Split and initialisation, not DP noise.")
    timeout: float = Field(
        default=600.0, gt=0, le=86_400, description="Seconds to wait for nodes and each round."
    )
    dp: DPSGDRequest | None = Field(  # type: ignore[assignment]
        default=None,
        description="DP-SGD at every node: the (epsilon, delta) the whole run may cost there, "
        "and max_grad_norm, the per-example clipping norm.",
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

    # Weights times rows, rows and metric sums all add across nodes (see records.py).
    SECURE_SUM: ClassVar[bool] = True

    def reads_rows(self, action: str) -> bool:
        # The design message answers with column names built from the schema's levels.
        return action != "design"

    def release_loss(self) -> PrivacyLoss | None:
        # DP-SGD sizes its noise to the run and states each round's loss in the reply.
        return None


__all__ = [
    "DPSGDRequest",
    "Scaling",
    "Standardisation",
    "Strategy",
    "TrainParams",
]
