"""Node side of training: local epochs of (DP-)SGD from the global model, and evaluation.

torch and Opacus are imported here only, inside the handlers, so a node
without the ``train`` extra still serves every statistics task.

With ``dp=`` the node trains with Opacus's DP-SGD (Poisson sampling,
per-example clipping, Gaussian noise). The noise multiplier is fixed for the
whole run from the request's (epsilon, delta), the run's length and this
node's sampling rate, so every round costs the same; the round's loss is
Opacus's RDP curve on ``RDP_ORDERS``, stated in the reply for the privacy
mod to charge before the update leaves.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from oncofed.privacy.accounting import PRIVACY_RECORD, RDP_ORDERS, PrivacyLoss, loss_record
from oncofed.tasks.base import LocalDataset
from oncofed.tasks.training.data import node_rows
from oncofed.tasks.training.params import TrainParams

ARRAYS = "arrays"
METRICS = "metrics"


def logistic_module(features: int) -> Any:
    import torch

    return torch.nn.Linear(features, 1, dtype=torch.float64)


def _load(module: Any, arrays: ArrayRecord) -> None:
    import torch

    state = {key: torch.from_numpy(arrays[key].numpy().copy()) for key in ("weight", "bias")}
    module.load_state_dict(state)


def _arrays(module: Any) -> ArrayRecord:
    return ArrayRecord(
        {key: Array(value.detach().numpy().copy()) for key, value in module.state_dict().items()}
    )


def noise_multiplier(params: TrainParams, sample_rate: float, steps_per_round: int) -> float:
    """Opacus's noise multiplier for the whole run at this node's sampling rate."""
    from opacus.accountants.utils import get_noise_multiplier

    assert params.dp is not None
    return float(
        get_noise_multiplier(
            target_epsilon=params.dp.epsilon,
            target_delta=params.dp.delta,
            sample_rate=sample_rate,
            steps=params.rounds * steps_per_round,
            accountant="rdp",
        )
    )


def train_node(params: TrainParams, local: LocalDataset, content: RecordDict) -> RecordDict:
    import torch
    from opacus import PrivacyEngine
    from opacus.accountants.analysis.rdp import compute_rdp

    split = node_rows(params, local)
    x = torch.from_numpy(split.x_train)
    y = torch.from_numpy(split.y_train)
    module = logistic_module(len(params.features))
    _load(module, content.array_records[ARRAYS])
    anchor = [p.detach().clone() for p in module.parameters()]
    generator = torch.Generator().manual_seed(params.seed)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, y),
        batch_size=params.batch_size,
        shuffle=True,
        generator=generator,
    )
    optimizer = torch.optim.SGD(module.parameters(), lr=params.learning_rate)
    model = module
    engine = None
    sample_rate = min(1.0, params.batch_size / max(len(y), 1))
    steps_per_round = params.local_epochs * math.ceil(1 / sample_rate)
    sigma = 0.0
    if params.dp is not None:
        sigma = noise_multiplier(params, sample_rate, steps_per_round)
        engine = PrivacyEngine(accountant="rdp")
        model, optimizer, loader = engine.make_private(
            module=module,
            optimizer=optimizer,
            data_loader=loader,
            noise_multiplier=sigma,
            max_grad_norm=params.dp.max_grad_norm,
            poisson_sampling=True,
        )
    loss_fn = torch.nn.BCEWithLogitsLoss()
    total, batches = 0.0, 0
    for _ in range(params.local_epochs):
        for xb, yb in loader:
            if len(yb) == 0:  # Poisson sampling can draw an empty batch
                continue
            optimizer.zero_grad()
            loss = loss_fn(model(xb).squeeze(-1), yb)
            if params.strategy == "fedprox":
                drift = zip(module.parameters(), anchor, strict=True)
                loss = loss + params.proximal_mu / 2 * sum(
                    torch.sum((p - a) ** 2) for p, a in drift
                )
            loss.backward()
            optimizer.step()
            total, batches = total + float(loss.detach()), batches + 1
    reply = RecordDict(
        {
            ARRAYS: _arrays(module),
            METRICS: MetricRecord({"num-examples": len(y), "train-loss": total / max(batches, 1)}),
            "meta": ConfigRecord({"node": local.node_name}),
        }
    )
    if engine is not None and params.dp is not None:
        steps = sum(count for _, _, count in engine.accountant.history)
        orders = list(RDP_ORDERS)
        rdp = compute_rdp(q=sample_rate, noise_multiplier=sigma, steps=steps, orders=orders)
        loss_curve = PrivacyLoss.from_rdp(RDP_ORDERS, [float(v) for v in np.atleast_1d(rdp)])
        reply[PRIVACY_RECORD] = loss_record(
            loss_curve,
            "DP-SGD (Opacus, Poisson sampling, RDP accountant)",
            params.dp.delta,
            noise_multiplier=sigma,
            sample_rate=sample_rate,
            steps=steps,
        )
    return reply


def evaluate_node(params: TrainParams, local: LocalDataset, content: RecordDict) -> RecordDict:
    """Summed log-loss and correct predictions on the held-out rows (they add across nodes)."""
    split = node_rows(params, local)
    arrays = content.array_records[ARRAYS]
    weight = arrays["weight"].numpy().reshape(-1)
    bias = float(arrays["bias"].numpy().reshape(-1)[0])
    score = 1 / (1 + np.exp(-(split.x_test @ weight + bias)))
    y = split.y_test
    eps = 1e-12
    log_loss = -np.sum(y * np.log(score + eps) + (1 - y) * np.log(1 - score + eps))
    return RecordDict(
        {
            METRICS: MetricRecord(
                {
                    "num-examples": len(y),
                    "loss-sum": float(log_loss),
                    "correct": int(np.sum((score >= 0.5) == (y == 1))),
                }
            ),
            "meta": ConfigRecord({"node": local.node_name}),
        }
    )


__all__ = ["ARRAYS", "METRICS", "evaluate_node", "logistic_module", "train_node"]
