"""Parameters of a federated training run: data, model, strategy, local training, privacy."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from oncofed.privacy.accounting import PrivacyLoss
from oncofed.privacy.dp import DPRequest
from oncofed.tasks.base import ColumnRole, TaskParams

Strategy = Literal["fedavg", "fedprox", "fedadam"]


class DPSGDRequest(DPRequest):
    """DP-SGD for the whole run: (epsilon, delta) is the total each node may spend on it."""

    max_grad_norm: float = Field(default=1.0, gt=0, description="Per-example clipping norm.")


class Standardisation(BaseModel):
    """Federated means and standard deviations of the features, set by the server."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mean: tuple[float, ...]
    std: tuple[float, ...]


class TrainParams(TaskParams):
    model: Literal["logistic"] = Field(default="logistic", description="Vetted architecture.")
    features: tuple[str, ...] = Field(min_length=1, description="Numeric feature columns.")
    label: str = Field(min_length=1, description="0/1 outcome column.")
    strategy: Strategy = "fedavg"
    rounds: int = Field(default=10, ge=1, le=1000)
    fraction: float = Field(default=1.0, gt=0, le=1, description="Nodes sampled per round.")
    local_epochs: int = Field(default=1, ge=1, le=100)
    batch_size: int = Field(default=32, ge=1, le=100_000)
    learning_rate: float = Field(default=0.1, gt=0, le=10)
    proximal_mu: float = Field(default=0.1, ge=0, description="FedProx's proximal weight.")
    test_fraction: float = Field(
        default=0.2, ge=0, lt=1, description="Each node's held-out share for evaluation."
    )
    seed: int = Field(default=0, ge=0, description="Split and initialisation, not DP noise.")
    dp: DPSGDRequest | None = None  # type: ignore[assignment]
    standardisation: Standardisation | None = Field(
        default=None, description="Set by the server from a federated describe; not by users."
    )

    @field_validator("features")
    @classmethod
    def _unique(cls, features: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(features)) != len(features):
            raise ValueError("features must not repeat")
        return features

    @model_validator(mode="after")
    def _label_not_a_feature(self) -> TrainParams:
        if self.label in self.features:
            raise ValueError("the label cannot also be a feature")
        return self

    def required_columns(self) -> dict[str, ColumnRole]:
        roles = super().required_columns()
        roles.update(dict.fromkeys((*self.features, self.label), "numeric"))
        return roles

    def release_loss(self) -> PrivacyLoss | None:
        # DP-SGD sizes its noise to the run and states each round's loss in the reply.
        return None


__all__ = ["DPSGDRequest", "Standardisation", "Strategy", "TrainParams"]
