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

import json
import math

import numpy as np
import numpy.typing as npt
from flwr.app import ArrayRecord, RecordDict

from oncofed.kernel.errors import QueryError
from oncofed.privacy.accounting import RDP_ORDERS, PrivacyLoss, loss_record
from oncofed.tasks.base import LocalDataset
from oncofed.tasks.formula import agreed_levels
from oncofed.tasks.training import architectures
from oncofed.tasks.training.data import encode, node_rows
from oncofed.tasks.training.params import TrainParams
from oncofed.tasks.training.records import (
    ARRAYS,
    BinaryEvaluation,
    ModelUpdate,
    SurvivalEvaluation,
    TrainingDesign,
)

FloatArray = npt.NDArray[np.float64]

AUC_BINS = 1000
"""Score histogram bins on P(label = 1): the pooled AUC is exact up to ties within a bin."""


def _state(arrays: ArrayRecord, params: TrainParams) -> dict[str, FloatArray]:
    names = architectures.layer_names(params.layers)
    if sorted(arrays) != sorted(names):
        raise QueryError(
            f"the model weights sent are {sorted(arrays)}, not those of {params.model} "
            f"with hidden layers {list(params.layers)}",
            rule="training.weights",
            fix="make sure the coordinator and the nodes run the same oncofed version",
        )
    return {key: arrays[key].numpy().copy() for key in names}


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


def train_node(params: TrainParams, local: LocalDataset, content: RecordDict) -> ModelUpdate:
    """One round of local (DP-)SGD from the global weights, released as sums (``records.py``)."""
    import torch
    from opacus import PrivacyEngine
    from opacus.accountants.analysis.rdp import compute_rdp

    split = node_rows(params, local)
    module = architectures.build(len(split.columns), params.layers)
    architectures.load(module, _state(content.array_records[ARRAYS], params))
    anchor = [p.detach().clone() for p in module.parameters()]
    generator = torch.Generator().manual_seed(params.seed)
    survival = params.model in architectures.SURVIVAL
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(
            torch.from_numpy(split.x_train), torch.from_numpy(split.y_train)
        ),
        batch_size=params.batch_size,
        shuffle=True,
        generator=generator,
    )
    optimizer = torch.optim.SGD(module.parameters(), lr=params.learning_rate)
    model = module
    engine = None
    rows = len(split.y_train)
    sample_rate = min(1.0, params.batch_size / max(rows, 1))
    steps_per_round = params.local_epochs * math.ceil(1 / sample_rate)
    sigma = 0.0
    if params.dp is not None:
        sigma = noise_multiplier(params, sample_rate, steps_per_round)
        # secure_mode needs torchcsprng, which no registry here offers for this torch.
        engine = PrivacyEngine(accountant="rdp", secure_mode=False)
        model, optimizer, loader = engine.make_private(
            module=module,
            optimizer=optimizer,
            data_loader=loader,
            noise_multiplier=sigma,
            max_grad_norm=params.dp.max_grad_norm,
            poisson_sampling=True,
        )
    total, batches = 0.0, 0
    for _ in range(params.local_epochs):
        for xb, yb in loader:
            if len(yb) == 0:  # Poisson sampling can draw an empty batch
                continue
            optimizer.zero_grad()
            out = model(xb).squeeze(-1)
            if survival:
                loss = architectures.cox_loss(out, yb[:, 0], yb[:, 1])
            else:
                loss = architectures.binary_loss(out, yb)
            if params.strategy == "fedprox":
                drift = zip(module.parameters(), anchor, strict=True)
                loss = loss + params.proximal_mu / 2 * sum(
                    torch.sum((p - a) ** 2) for p, a in drift
                )
            loss.backward()
            optimizer.step()
            total, batches = total + float(loss.detach()), batches + 1
    privacy = None
    if engine is not None and params.dp is not None:
        steps = sum(count for _, _, count in engine.accountant.history)
        orders = list(RDP_ORDERS)
        rdp = compute_rdp(q=sample_rate, noise_multiplier=sigma, steps=steps, orders=orders)
        loss_curve = PrivacyLoss.from_rdp(RDP_ORDERS, [float(v) for v in np.atleast_1d(rdp)])
        privacy = dict(
            loss_record(
                loss_curve,
                "DP-SGD (Opacus, Poisson sampling, RDP accountant)",
                params.dp.delta,
                noise_multiplier=sigma,
                sample_rate=sample_rate,
                steps=steps,
            )
        )
    state = architectures.state_arrays(module)
    return ModelUpdate(
        weights={key: value * rows for key, value in state.items()},
        rows=rows,
        loss=total / max(batches, 1) * rows,
        privacy=privacy,
    )


def design_node(params: TrainParams, local: LocalDataset) -> TrainingDesign:
    """The encoded columns, factor levels and (to scale by) numeric bounds; no row is read."""
    design = encode(params.features, local.frame.iloc[:0], local.schema, None, local.node_name)
    levels = {
        f.column: list(agreed_levels(f, local.schema, local.node_name))
        for f in params.features.factors()
        if f.categorical
    }
    bounds = {}
    if params.scaling == "bounds":
        for column in params.numeric_features:
            declared = local.schema.columns[column].bounds
            if declared is None:
                raise QueryError(
                    f"scaling='bounds' needs declared bounds for {column!r}, and it has none",
                    rule="training.bounds",
                    node=local.node_name,
                    fix=f"the operator declares bounds = [lo, hi] for {column!r} in the "
                    "dataset schema (public values, never read from the data), or the "
                    "researcher uses scaling='describe'",
                    column=column,
                )
            bounds[column] = list(declared)
    return TrainingDesign(
        columns=tuple(design.columns), levels=json.dumps(levels), bounds=json.dumps(bounds)
    )


def evaluate_node(
    params: TrainParams, local: LocalDataset, content: RecordDict
) -> BinaryEvaluation | SurvivalEvaluation:
    """Held-out metrics as sums and counts, which add up exactly across nodes."""
    split = node_rows(params, local)
    state = _state(content.array_records[ARRAYS], params)
    out = architectures.forward(state, params.layers, split.x_test)
    if params.model in architectures.SURVIVAL:
        return survival_metrics(out, split.y_test[:, 0], split.y_test[:, 1])
    return binary_metrics(out, split.y_test)


def binary_metrics(logit: FloatArray, y: FloatArray) -> BinaryEvaluation:
    """Summed log-loss, correct predictions, and score histograms by class for the AUC."""
    # log(1 + e^-z) for y = 1 and log(1 + e^z) for y = 0, without overflow.
    loss = np.logaddexp(0.0, np.where(y == 1, -logit, logit))
    score = 1 / (1 + np.exp(-logit))
    bins = np.minimum((score * AUC_BINS).astype(np.int64), AUC_BINS - 1)
    return BinaryEvaluation(
        rows=len(y),
        loss_sum=float(np.sum(loss)),
        correct=int(np.sum((score >= 0.5) == (y == 1))),
        positives=np.bincount(bins[y == 1], minlength=AUC_BINS),
        negatives=np.bincount(bins[y == 0], minlength=AUC_BINS),
    )


def survival_metrics(
    log_risk: FloatArray, duration: FloatArray, event: FloatArray
) -> SurvivalEvaluation:
    """Negative log partial likelihood and Harrell's pair counts among this node's rows."""
    import torch

    loss = architectures.cox_loss(
        torch.from_numpy(log_risk), torch.from_numpy(duration), torch.from_numpy(event)
    )
    concordant, tied, comparable = concordance_counts(log_risk, duration, event)
    events = int(np.sum(event))
    return SurvivalEvaluation(
        rows=len(duration),
        loss_sum=float(loss) * max(events, 1),
        events=events,
        concordant=concordant,
        tied=tied,
        comparable=comparable,
    )


def concordance_counts(
    risk: FloatArray, duration: FloatArray, event: FloatArray
) -> tuple[int, int, int]:
    """Harrell's pairs: an event at time t against everyone whose time is later.

    Concordant when the earlier event had the higher risk, tied when the risks
    are equal. Two events at the same time are not comparable; an event and a
    patient censored at that time are (both as in lifelines).
    Sweeping times from the latest down with a Fenwick tree over risk ranks
    counts them in O(n log n).
    """
    _, rank = np.unique(risk, return_inverse=True)
    size = int(rank.max()) + 1 if len(rank) else 0
    tree = [0] * (size + 1)  # rank r lives at position r + 1

    def below(r: int) -> int:  # how many inserted ranks are < r
        count = 0
        while r > 0:
            count += tree[r]
            r -= r & -r
        return count

    def insert(rows: npt.NDArray[np.int64]) -> int:
        for i in rows:
            r = int(rank[i]) + 1
            while r <= size:
                tree[r] += 1
                r += r & -r
        return len(rows)

    order = np.argsort(-duration, kind="stable")
    concordant = tied = comparable = inserted = 0
    start = 0
    while start < len(order):
        stop = start
        while stop < len(order) and duration[order[stop]] == duration[order[start]]:
            stop += 1
        group = order[start:stop]
        events = group[event[group] == 1]
        # A patient censored at the event's own time was still at risk then.
        inserted += insert(group[event[group] != 1])
        for i in events:
            lower, not_higher = below(int(rank[i])), below(int(rank[i]) + 1)
            concordant += lower
            tied += not_higher - lower
            comparable += inserted
        inserted += insert(events)
        start = stop
    return concordant, tied, comparable


__all__ = [
    "AUC_BINS",
    "binary_metrics",
    "concordance_counts",
    "design_node",
    "evaluate_node",
    "survival_metrics",
    "train_node",
]
