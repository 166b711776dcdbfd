"""The trained model a researcher gets back: weights plus everything needed to use them.

Prediction needs only NumPy (``predict_proba`` returns P(label = 1) per row of
a DataFrame, standardising the features with the federated statistics the
model was trained with); ``to_module`` rebuilds the ``torch.nn.Module``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
from pydantic import BaseModel, Field

from oncofed.tasks.training.params import Standardisation, Strategy


class RoundMetrics(BaseModel):
    round: int
    nodes: list[str]
    train_loss: float
    eval_loss: float | None = None
    eval_accuracy: float | None = None


class TrainedModel(BaseModel):
    model: str
    features: list[str]
    label: str
    standardisation: Standardisation
    weight: list[float]
    bias: float
    strategy: Strategy
    rounds: int
    study: str
    nodes: list[str]
    epsilon: dict[str, float] = Field(
        default_factory=dict,
        description="DP-SGD loss charged at each node (at the request's delta).",
    )
    delta: float | None = None
    history: list[RoundMetrics] = Field(default_factory=list)

    def predict_proba(self, frame: pd.DataFrame) -> npt.NDArray[np.float64]:
        """P(label = 1) for each row; rows with a missing feature get NaN."""
        x = frame[self.features].to_numpy(dtype=np.float64, na_value=np.nan)
        std = np.asarray(self.standardisation.std)
        z = (x - np.asarray(self.standardisation.mean)) / np.where(std > 0, std, 1.0)
        return np.asarray(1 / (1 + np.exp(-(z @ np.asarray(self.weight) + self.bias))))

    def predict(self, frame: pd.DataFrame, threshold: float = 0.5) -> npt.NDArray[np.int64]:
        """Predicted class (1 where P(label = 1) >= threshold)."""
        return (self.predict_proba(frame) >= threshold).astype(np.int64)

    def to_module(self) -> Any:
        """The logistic model as a ``torch.nn.Linear`` on standardised features."""
        import torch

        from oncofed.tasks.training.node import logistic_module

        module = logistic_module(len(self.features))
        module.load_state_dict(
            {
                "weight": torch.tensor([self.weight], dtype=torch.float64),
                "bias": torch.tensor([self.bias], dtype=torch.float64),
            }
        )
        return module

    def save(self, path: Path) -> None:
        path.write_text(self.model_dump_json(indent=2), encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> TrainedModel:
        return cls.model_validate_json(path.read_text(encoding="utf-8"))


__all__ = ["RoundMetrics", "TrainedModel"]
