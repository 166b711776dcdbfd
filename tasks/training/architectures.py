"""The vetted architectures: a request names one and sizes it; no code travels.

Every model is a stack of ``Linear`` layers with ReLU between them, ending in
one output: the logit of P(label = 1) for ``logistic`` (no hidden layer) and
``mlp``, the log relative risk for ``cox_mlp``. The same weights run in
PyTorch (training, at the node) and in NumPy (``forward``: evaluation at the
node and prediction on the researcher's side), so a researcher needs no torch
to use a trained model.

Losses are here too, because the loss is what makes an architecture a
classifier or a survival model: binary cross-entropy, and the negative Cox
partial log-likelihood with Breslow's handling of tied times.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

Architecture = Literal["logistic", "mlp", "cox_mlp"]
SURVIVAL: frozenset[str] = frozenset({"cox_mlp"})
DEFAULT_HIDDEN: dict[str, tuple[int, ...]] = {"logistic": (), "mlp": (32,), "cox_mlp": (32,)}

FloatArray = npt.NDArray[np.float64]


def layer_names(hidden: Sequence[int]) -> list[str]:
    """Parameter names in ``torch.nn.Sequential`` order (ReLUs take the odd indices)."""
    return [f"{2 * i}.{kind}" for i in range(len(hidden) + 1) for kind in ("weight", "bias")]


def build(inputs: int, hidden: Sequence[int]) -> Any:
    """The ``torch.nn.Sequential`` for ``inputs`` design columns (float64)."""
    import torch

    widths = [inputs, *hidden, 1]
    layers: list[Any] = []
    for i, (width_in, width_out) in enumerate(itertools.pairwise(widths)):
        if i:
            layers.append(torch.nn.ReLU())
        layers.append(torch.nn.Linear(width_in, width_out, dtype=torch.float64))
    return torch.nn.Sequential(*layers)


def initial_state(inputs: int, hidden: Sequence[int], seed: int) -> dict[str, FloatArray]:
    """PyTorch's default ``Linear`` initialisation, U(-1/sqrt(fan_in), 1/sqrt(fan_in)).

    Drawn in NumPy from the request's seed, so the coordinator needs no torch.
    """
    rng = np.random.default_rng(seed)
    widths = [inputs, *hidden, 1]
    state: dict[str, FloatArray] = {}
    for i, (width_in, width_out) in enumerate(itertools.pairwise(widths)):
        bound = 1 / np.sqrt(width_in)
        state[f"{2 * i}.weight"] = rng.uniform(-bound, bound, (width_out, width_in))
        state[f"{2 * i}.bias"] = rng.uniform(-bound, bound, width_out)
    return state


def state_arrays(module: Any) -> dict[str, FloatArray]:
    return {key: value.detach().numpy().copy() for key, value in module.state_dict().items()}


def load(module: Any, state: Mapping[str, FloatArray]) -> None:
    import torch

    module.load_state_dict({key: torch.from_numpy(np.array(v)) for key, v in state.items()})


def forward(state: Mapping[str, FloatArray], hidden: Sequence[int], x: FloatArray) -> FloatArray:
    """The model's output per row, in NumPy: a logit, or a log relative risk."""
    out = x
    for i in range(len(hidden) + 1):
        if i:
            out = np.maximum(out, 0.0)
        out = out @ np.asarray(state[f"{2 * i}.weight"]).T + np.asarray(state[f"{2 * i}.bias"])
    return np.asarray(out[:, 0], dtype=np.float64)


def binary_loss(logits: Any, labels: Any) -> Any:
    import torch

    return torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)


def cox_loss(log_risk: Any, duration: Any, event: Any) -> Any:
    """Mean negative Cox partial log-likelihood over the batch's events (Breslow ties).

    A patient's risk set is everyone in the batch still at risk at their
    time: sorted by time descending, that is a running log-sum-exp, read at
    the last patient of each group of tied times so ties share one risk set.
    """
    import torch

    order = torch.argsort(duration, descending=True, stable=True)
    times = duration[order].detach().numpy()
    # Index of the last row with the same time, in the descending order.
    last = np.searchsorted(-times, -times, side="right") - 1
    risk = log_risk[order]
    log_risk_set = torch.logcumsumexp(risk, dim=0)[torch.from_numpy(last)]
    observed = event[order]
    events = torch.clamp(observed.sum(), min=1.0)
    return -torch.sum(observed * (risk - log_risk_set)) / events


__all__ = [
    "DEFAULT_HIDDEN",
    "SURVIVAL",
    "Architecture",
    "binary_loss",
    "build",
    "cox_loss",
    "forward",
    "initial_state",
    "layer_names",
    "load",
    "state_arrays",
]
