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
from oncofed.tasks.encoding import category_labels
from oncofed.tasks.formula import Formula, agreed_levels, design_matrix
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
    """Complete rows, encoded with the federated statistics, split by the request's seed.

    Under DP nothing here may refuse because of what a row holds: a refusal is
    free (nothing is charged) and, with ``where=`` narrowed to one patient,
    would answer a yes/no question about her exactly. So a row whose outcome is
    not 0/1, or whose factor has a level outside the agreed ones, is left out
    like a row with a missing value -- a per-row rule, so two datasets that
    differ in one patient still differ in at most one training row, which is
    what DP-SGD's guarantee is about. For the same reason there is no held-out
    split under DP (held-out metrics are not released under DP anyway): which
    rows a seeded permutation holds out depends on the row count, so one
    patient more could move many others in or out of training.
    """
    frame = selected_rows(params, local)
    targets = [t for t in (params.label, params.duration, params.event) if t is not None]
    frame = frame.loc[frame[targets].notna().all(axis=1)]
    if params.dp is not None:
        frame = _rows_dp_can_use(params, frame, local, targets[-1])
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
    x = design.x
    if params.dp is not None:
        return Split(design.columns, x, y, x[:0], y[:0])
    order = np.random.default_rng(params.seed).permutation(len(rows))
    held_out = round(params.test_fraction * len(rows))
    test, train = order[:held_out], order[held_out:]
    return Split(design.columns, x[train], y[train], x[test], y[test])


def _rows_dp_can_use(
    params: TrainParams, frame: pd.DataFrame, local: LocalDataset, outcome: str
) -> pd.DataFrame:
    """The rows DP-SGD trains on: each kept or left out by its own values alone."""
    keep = frame[outcome].isin([0, 1]).to_numpy()
    for factor in params.features.factors():
        if factor.categorical:
            levels = agreed_levels(factor, local.schema, local.node_name)
            labels = category_labels(frame[factor.column], local.schema.columns[factor.column])
            # Missing values stay: the complete-case rule in ``encode`` leaves them out.
            keep &= (labels.isna() | labels.isin(levels)).to_numpy()
    return frame.loc[keep]


__all__ = ["Design", "Split", "encode", "node_rows"]
