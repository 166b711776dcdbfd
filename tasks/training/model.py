"""The trained model a researcher gets back: weights plus everything needed to use them.

Prediction needs only NumPy and pandas: the features of a DataFrame are
encoded exactly as the nodes encoded theirs (numeric columns standardised
with the federated statistics, factors one-hot on the agreed levels) and run
through the same layers. ``to_module`` rebuilds the ``torch.nn.Module``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
from pydantic import BaseModel, Field
from rich.console import Group
from rich.table import Table

from oncofed.kernel.errors import QueryError
from oncofed.kernel.schema import infer_schema
from oncofed.tasks.formula import Factor, parse_formula
from oncofed.tasks.tables import footer, number
from oncofed.tasks.training import architectures
from oncofed.tasks.training.architectures import SURVIVAL, Architecture
from oncofed.tasks.training.data import encode
from oncofed.tasks.training.params import Standardisation, Strategy

FloatArray = npt.NDArray[np.float64]


class RoundMetrics(BaseModel):
    round: int
    nodes: list[str]
    train_loss: float | None = Field(
        default=None, description="Mean training loss; none under DP (nodes release none)."
    )
    eval_loss: float | None = None
    eval_accuracy: float | None = None
    eval_auc: float | None = None
    eval_concordance: float | None = None

    def evaluation(self) -> dict[str, float]:
        """The held-out metrics this round has, by short name."""
        found = {
            "eval loss": self.eval_loss,
            "accuracy": self.eval_accuracy,
            "AUC": self.eval_auc,
            "C": self.eval_concordance,
        }
        return {k: v for k, v in found.items() if v is not None}


class TrainedModel(BaseModel):
    model: Architecture
    features: str = Field(description="The features as a formula right-hand side.")
    columns: list[str] = Field(description="Encoded input columns, in the first layer's order.")
    levels: dict[str, tuple[str, ...]] = Field(description="Agreed levels of each factor.")
    hidden: list[int]
    label: str | None = None
    duration: str | None = None
    event: str | None = None
    standardisation: Standardisation
    state: dict[str, list[Any]] = Field(description="Layer weights, as torch names them.")
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

    def output(self, frame: pd.DataFrame) -> FloatArray:
        """Per row: the logit or the log relative risk; NaN where a feature is missing."""
        formula = parse_formula(self.features, needs_response=False)
        terms = [
            term.model_copy(
                update={"factors": tuple(_with_levels(f, self.levels) for f in term.factors)}
            )
            for term in formula.terms
        ]
        formula = formula.model_copy(update={"terms": tuple(terms)})
        design = encode(formula, frame, infer_schema(frame), self.standardisation, "prediction")
        if design.columns != self.columns:
            raise QueryError(
                f"the frame encodes to {design.columns}, not the model's {self.columns}",
                rule="training.predict_columns",
                fix="pass a frame with the model's feature columns and types",
            )
        out = np.full(len(frame), np.nan)
        state = {key: np.asarray(value, dtype=np.float64) for key, value in self.state.items()}
        out[design.complete] = architectures.forward(state, self.hidden, design.x)
        return out

    def predict_proba(self, frame: pd.DataFrame) -> FloatArray:
        """P(label = 1) per row (classifiers only)."""
        if self.model in SURVIVAL:
            raise QueryError(
                f"{self.model} predicts risk, not probabilities",
                rule="training.predict_kind",
                fix="use predict_risk(frame)",
            )
        return np.asarray(1 / (1 + np.exp(-self.output(frame))))

    def predict_risk(self, frame: pd.DataFrame) -> FloatArray:
        """Log relative risk per row (survival models): higher means earlier events."""
        if self.model not in SURVIVAL:
            raise QueryError(
                f"{self.model} is a classifier",
                rule="training.predict_kind",
                fix="use predict_proba(frame) or predict(frame)",
            )
        return self.output(frame)

    def predict(self, frame: pd.DataFrame, threshold: float = 0.5) -> FloatArray:
        """Classifiers: the class (1 where P(label = 1) >= threshold); survival: the log risk.

        Rows with a missing feature get NaN (so the classes come back as floats).
        """
        if self.model in SURVIVAL:
            return self.predict_risk(frame)
        proba = self.predict_proba(frame)
        return np.where(np.isnan(proba), np.nan, (proba >= threshold).astype(np.float64))

    def to_module(self) -> Any:
        """The network as a ``torch.nn.Sequential`` on the encoded columns."""
        module = architectures.build(len(self.columns), self.hidden)
        architectures.load(
            module, {k: np.asarray(v, dtype=np.float64) for k, v in self.state.items()}
        )
        return module

    def to_frame(self) -> pd.DataFrame:
        """One row per round: the nodes that trained, the training loss, held-out metrics.

        The training loss is missing (NaN) under DP, where nodes release none.
        """
        return pd.DataFrame(
            [
                {"round": m.round, "nodes": len(m.nodes), "train loss": m.train_loss}
                | dict[str, float | None](m.evaluation())
                for m in self.history
            ]
        ).set_index("round")

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.model_dump_json(indent=2), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> TrainedModel:
        return cls.model_validate_json(Path(path).read_text(encoding="utf-8"))


def training_table(model: TrainedModel) -> Group:
    """Each round's metrics, then what was trained, on which nodes, at what privacy cost."""
    table = Table(
        title=f"{model.model} by {model.strategy}: {model.features}", title_justify="left"
    )
    frame = model.to_frame()
    table.add_column("round", justify="right")
    for column in frame.columns:
        table.add_column(str(column), justify="right")
    for label, row in frame.iterrows():
        table.add_row(str(label), *(number(v) for v in row.tolist()))
    epsilon = ", ".join(f"{node} {eps:.3g}" for node, eps in sorted(model.epsilon.items()))
    privacy = f"DP-SGD ε at δ={model.delta:g}: {epsilon}" if model.epsilon else "no DP-SGD"
    target = model.label or f"{model.duration}, {model.event}"
    detail = f"{len(model.columns)} inputs -> {target}; {privacy}"
    return Group(table, footer(detail, model.nodes))


def _with_levels(factor: Factor, levels: dict[str, tuple[str, ...]]) -> Factor:
    if not factor.categorical:
        return factor
    return factor.model_copy(update={"levels": levels[factor.column]})


__all__ = ["RoundMetrics", "TrainedModel", "training_table"]
