"""A node's training rows: complete cases, standardised, split into train and held-out."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from oncofed.errors import QueryError
from oncofed.tasks.base import LocalDataset, selected_rows
from oncofed.tasks.training.params import TrainParams

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Split:
    x_train: FloatArray
    y_train: FloatArray
    x_test: FloatArray
    y_test: FloatArray


def node_rows(params: TrainParams, local: LocalDataset) -> Split:
    """Complete rows, features standardised with the federated statistics, split by seed."""
    frame = selected_rows(params, local)
    used = [*params.features, params.label]
    complete = frame[used].dropna()
    x = complete[list(params.features)].to_numpy(dtype=np.float64)
    y = complete[params.label].to_numpy(dtype=np.float64)
    if not np.all((y == 0) | (y == 1)):
        raise QueryError(
            f"label {params.label!r} has values other than 0 and 1",
            rule="training.label_values",
            node=local.node_name,
            fix="use a 0/1 column as the label",
            column=params.label,
        )
    if params.standardisation is not None:
        mean = np.asarray(params.standardisation.mean)
        std = np.asarray(params.standardisation.std)
        x = (x - mean) / np.where(std > 0, std, 1.0)
    order = np.random.default_rng(params.seed).permutation(len(y))
    held_out = round(params.test_fraction * len(y))
    test, train = order[:held_out], order[held_out:]
    return Split(x[train], y[train], x[test], y[test])


__all__ = ["Split", "node_rows"]
