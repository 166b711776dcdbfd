"""Node side of training: local epochs of (DP-)SGD from the global model, and evaluation.

torch and Opacus are imported only inside functions (the handlers here, the
accounting in ``params.py``), so a node without the ``train`` extra still
serves every statistics task.

With ``dp=`` the node trains with Opacus's DP-SGD (Poisson sampling,
per-example clipping, Gaussian noise). The noise multiplier is fixed for the
whole run from the request's (epsilon, delta), the run's length and the
sampling rate the request fixes (``batch_size / dp.expected_rows``), so every
round costs the same at every node whatever its data; the round's loss is
Opacus's RDP curve on ``RDP_ORDERS``, stated in the reply for the privacy
mod to charge before the update leaves. Only the noisy weights leave: no row
count and no loss (``records.NoisyModelUpdate``), and neither the sampling
nor the noise is seeded from the request.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

import numpy as np
import numpy.typing as npt
from flwr.app import ArrayRecord, RecordDict

from oncofed.kernel.errors import Param, QueryError
from oncofed.privacy.accounting import loss_record
from oncofed.tasks.base import LocalDataset
from oncofed.tasks.formula import agreed_levels
from oncofed.tasks.training import architectures
from oncofed.tasks.training.data import Split, encode, node_rows
from oncofed.tasks.training.params import DPSGDRequest, TrainParams
from oncofed.tasks.training.records import (
    ARRAYS,
    BinaryEvaluation,
    ModelUpdate,
    NoisyModelUpdate,
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


def train_node(
    params: TrainParams, local: LocalDataset, content: RecordDict
) -> ModelUpdate | NoisyModelUpdate:
    """One round of local (DP-)SGD from the global weights, released as sums (``records.py``)."""
    split = node_rows(params, local)
    module = architectures.build(len(split.columns), params.layers)
    architectures.load(module, _state(content.array_records[ARRAYS], params))
    if params.dp is not None:
        return _train_dp(params, params.dp, module, split)
    return _train_exact(params, module, split)


def _train_exact(params: TrainParams, module: Any, split: Split) -> ModelUpdate:
    """Plain minibatch SGD, reproducible from the request's seed; the sums FedAvg adds."""
    import torch

    anchor = [p.detach().clone() for p in module.parameters()]
    survival = params.model in architectures.SURVIVAL
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(
            torch.from_numpy(split.x_train), torch.from_numpy(split.y_train)
        ),
        batch_size=params.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(params.seed),
    )
    optimizer = torch.optim.SGD(module.parameters(), lr=params.learning_rate)
    total, batches = 0.0, 0
    for _ in range(params.local_epochs):
        for xb, yb in loader:
            optimizer.zero_grad()
            out = module(xb).squeeze(-1)
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
    rows = len(split.y_train)
    state = architectures.state_arrays(module)
    return ModelUpdate(
        weights={key: value * rows for key, value in state.items()},
        rows=rows,
        loss=total / max(batches, 1) * rows,
    )


def _os_seeded_generator() -> Any:
    """A torch generator seeded from the operating system's cryptographic source.

    ``secure_mode`` of Opacus's PrivacyEngine would draw from torchcsprng, which
    no registry here offers for this torch. This is the next best: the request
    (its ``seed``) cannot steer it, and no two rounds share a seed. The generator
    itself is still torch's Mersenne Twister, not a CSPRNG (docs/training.md).
    """
    import torch

    return torch.Generator().manual_seed(secrets.randbits(63))


def _train_dp(params: TrainParams, dp: DPSGDRequest, module: Any, split: Split) -> NoisyModelUpdate:
    """One round of DP-SGD whose every data-dependent output goes through the mechanism.

    The sampling rate, the number of steps and the gradient's normaliser come
    from the signed request (``DPSGDRequest``), never from this node's row
    count, so the noise multiplier and the privacy record are the same for any
    data. Each step draws every row with probability ``sample_rate`` (Poisson
    sampling) and always takes its step: an empty draw adds noise alone, since
    skipping it would let the weights tell whether anyone was drawn. Only the
    weights leave (``NoisyModelUpdate``).
    """
    import torch
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    rate = dp.sample_rate(params.batch_size)
    steps = dp.steps_per_round(params.batch_size, params.local_epochs)
    # The privacy mod checked this round's loss before the handler ran: the same numbers.
    sigma, loss_curve = params.dp_sgd()
    anchor = [p.detach().clone() for p in module.parameters()]
    model = GradSampleModule(module, loss_reduction="mean")
    optimizer = DPOptimizer(
        torch.optim.SGD(module.parameters(), lr=params.learning_rate),
        noise_multiplier=sigma,
        max_grad_norm=dp.max_grad_norm,
        # Opacus would take len(dataset) * sample_rate: this node's row count.
        expected_batch_size=dp.expected_batch(params.batch_size),
        loss_reduction="mean",
        generator=_os_seeded_generator(),
        # Sums several Gaussian draws per coordinate against floating-point attacks
        # (Opacus's fix for Mironov-style attacks); it needs no torchcsprng here.
        secure_mode=True,
    )
    if params.strategy == "fedprox":
        # The proximal term involves no patient, so it is outside the per-example
        # gradients Opacus clips and noises (which overwrite p.grad): add it after.
        def proximal(_: object) -> None:
            for p, a in zip(module.parameters(), anchor, strict=True):
                if p.grad is not None:
                    p.grad += params.proximal_mu * (p.detach() - a)

        optimizer.attach_step_hook(proximal)
    sampler = _os_seeded_generator()
    x, y = torch.from_numpy(split.x_train), torch.from_numpy(split.y_train)
    for _ in range(steps):
        drawn = torch.rand(len(y), generator=sampler) < rate
        xb, yb = x[drawn], y[drawn]
        optimizer.zero_grad()
        out = model(xb).squeeze(-1)
        # An empty draw's sum of gradients is zero; a mean over no rows would be NaN.
        loss = architectures.binary_loss(out, yb) if len(yb) else out.sum()
        loss.backward()
        _zero_non_finite(module)
        optimizer.step()
    privacy = loss_record(
        loss_curve,
        "DP-SGD (Opacus, Poisson sampling, RDP accountant)",
        dp.delta,
        noise_multiplier=sigma,
        sample_rate=rate,
        steps=steps,
    )
    state = architectures.state_arrays(module)
    return NoisyModelUpdate(weights=state, nodes=np.ones(1), privacy=dict(privacy))


def _zero_non_finite(module: Any) -> None:
    """A patient whose gradient is not finite contributes zero instead.

    Opacus's clipping turns an infinite gradient into NaN, and NaN weights are
    refused by the release gate: a refusal that would say whether such a
    patient was drawn. Zero is inside the clipping ball, so DP-SGD's bound holds.
    """
    import torch

    samples = [p.grad_sample for p in module.parameters() if p.grad_sample is not None]
    if not samples or len(samples[0]) == 0:
        return
    bad = torch.zeros(len(samples[0]), dtype=torch.bool)
    for g in samples:
        bad |= ~torch.isfinite(g.reshape(len(g), -1)).all(dim=1)
    if bool(bad.any()):
        for g in samples:
            g[bad] = 0


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
                    f"researcher uses {Param('scaling', 'describe')}",
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
