"""A node's training rows: complete cases, encoded and standardised, split into train and held-out.

The design columns come from the formula machinery the statistics tasks use
(one-hot with treatment coding against the first agreed level), so every
node builds the same columns from the same request, and the server checks
that they did.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd

from oncofed.kernel.errors import QueryError
from oncofed.kernel.schema import DatasetSchema
from oncofed.tasks.base import LocalDataset, selected_rows
from oncofed.tasks.formula import Formula, design_matrix
from oncofed.tasks.training.params import Standardisation, TrainParams

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Design:
    """Encoded features of complete rows, and where those rows are in the frame."""

    x: FloatArray
    columns: list[str]
    complete: npt.NDArray[np.bool_]


@dataclass(frozen=True)
class Split:
    columns: list[str]
    x_train: FloatArray
    y_train: FloatArray  # the label, or (duration, event) as two columns
    x_test: FloatArray
    y_test: FloatArray


def encode(
    features: Formula,
    frame: pd.DataFrame,
    schema: DatasetSchema,
    standardisation: Standardisation | None,
    node: str,
) -> Design:
    """Design columns (no intercept: the first layer has a bias) on rows with every feature."""
    columns = sorted(features.columns())
    complete = frame[columns].notna().all(axis=1).to_numpy()
    design = design_matrix(features, frame, schema, node)
    names = design.names[1:]  # drop "Intercept"
    x = design.x[:, 1:]
    if standardisation is not None:
        x = standardisation.apply(x, names)
    return Design(x=x, columns=names, complete=complete)


def node_rows(params: TrainParams, local: LocalDataset) -> Split:
    """Complete rows, encoded with the federated statistics, split by the request's seed."""
    frame = selected_rows(params, local)
    targets = [t for t in (params.label, params.duration, params.event) if t is not None]
    frame = frame.loc[frame[targets].notna().all(axis=1)]
    design = encode(params.features, frame, local.schema, params.standardisation, local.node_name)
    rows = frame.loc[design.complete]
    y = rows[targets].to_numpy(dtype=np.float64)
    outcome = y[:, -1]  # the label, or the event indicator
    if not np.all((outcome == 0) | (outcome == 1)):
        column = targets[-1]
        raise QueryError(
            f"{column!r} has values other than 0 and 1",
            rule="training.outcome_values",
            node=local.node_name,
            fix=f"use a 0/1 column as the {'event' if params.event else 'label'}",
            column=column,
        )
    if params.duration is not None and np.any(y[:, 0] < 0):
        raise QueryError(
            f"{params.duration!r} has negative durations",
            rule="training.duration_values",
            node=local.node_name,
            fix="filter the rows or fix the dataset's durations",
            column=params.duration,
        )
    y = y if params.duration is not None else y[:, 0]
    order = np.random.default_rng(params.seed).permutation(len(rows))
    held_out = round(params.test_fraction * len(rows))
    test, train = order[:held_out], order[held_out:]
    x = design.x
    return Split(design.columns, x[train], y[train], x[test], y[test])


__all__ = ["Design", "Split", "encode", "node_rows"]
