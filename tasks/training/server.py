"""Server side of training: federated standardisation, then Flower's strategy, unchanged.

The strategy (FedAvg, FedProx or FedAdam from ``flwr.serverapp.strategy``)
drives the governed Grid exactly as it would Flower's own runtime; the task's
parameters travel in the config record the nodes' mods read. Metric
aggregation callbacks record each round's nodes, losses and the DP-SGD loss
each node charged, and fail the task when fewer than ``min_nodes`` replied.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAdam, FedAvg, FedProx, Strategy

from oncofed.errors import FederatedErrors, OncofedError, TaskFailed
from oncofed.flower import PARAMS_RECORD, Run, reply_error
from oncofed.privacy.accounting import PRIVACY_RECORD, PrivacyLoss
from oncofed.tasks.base import wait_for_nodes
from oncofed.tasks.describe import DescribeParams, describe_serve
from oncofed.tasks.training.model import RoundMetrics, TrainedModel
from oncofed.tasks.training.node import ARRAYS, METRICS
from oncofed.tasks.training.params import Standardisation, TrainParams

AggregateMetrics = Callable[[list[RecordDict], str], MetricRecord]


class _WatchedGrid(Grid):
    """The task's grid, keeping the refusals a strategy would only log.

    Flower's strategies drop error replies and go on; a researcher must see
    which node refused and why (e.g. ``privacy.budget``), so the task raises
    them once a round has too few updates.
    """

    def __init__(self, grid: Grid) -> None:
        self._grid = grid
        self.errors: list[OncofedError] = []

    @property
    def run(self) -> Run:
        return self._grid.run

    def set_run(self, run: Run) -> None:
        self._grid.set_run(run)

    def create_message(self, *args: Any, **kwargs: Any) -> Message:
        return self._grid.create_message(*args, **kwargs)

    def get_node_ids(self) -> Iterable[int]:
        return self._grid.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self._grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self._grid.pull_messages(message_ids)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        replies = list(self._grid.send_and_receive(messages, timeout=timeout))
        self.errors.extend(reply_error(r) for r in replies if r.has_error())
        return replies


class _Rounds:
    """Collects what the strategy's replies say, round by round."""

    def __init__(self, params: TrainParams, grid: _WatchedGrid) -> None:
        self.params = params
        self.grid = grid
        self.history: list[RoundMetrics] = []
        self.losses: dict[str, PrivacyLoss] = {}

    def train(self, replies: list[RecordDict], _weight_key: str) -> MetricRecord:
        names = sorted(str(r.config_records["meta"]["node"]) for r in replies)
        if len(replies) < self.params.min_nodes:
            self.refused()
            raise TaskFailed(
                f"round {len(self.history) + 1}: only {len(replies)} node(s) sent an update "
                f"({', '.join(names) or 'none'}); the request needs {self.params.min_nodes}",
                rule="training.min_nodes",
                fix="restart the missing nodes, or lower min_nodes",
            )
        examples = [float(str(r.metric_records[METRICS]["num-examples"])) for r in replies]
        losses = [float(str(r.metric_records[METRICS]["train-loss"])) for r in replies]
        for reply in replies:
            record = reply.config_records.get(PRIVACY_RECORD)
            if record is not None:
                name = str(reply.config_records["meta"]["node"])
                rdp = [float(v) for v in record["rdp"]]  # type: ignore[union-attr]
                charged = PrivacyLoss(tuple(rdp))
                earlier = self.losses.get(name)
                self.losses[name] = charged if earlier is None else earlier + charged
        mean_loss = float(np.average(losses, weights=examples))
        self.history.append(
            RoundMetrics(round=len(self.history) + 1, nodes=names, train_loss=mean_loss)
        )
        return MetricRecord({"train-loss": mean_loss})

    def refused(self) -> None:
        """Raise the nodes' refusals so far, if there were any."""
        if self.grid.errors:
            raise FederatedErrors.combine(self.grid.errors)

    def evaluate(self, replies: list[RecordDict], _weight_key: str) -> MetricRecord:
        metrics = [r.metric_records[METRICS] for r in replies]
        n = sum(int(str(m["num-examples"])) for m in metrics)
        if n == 0 or not self.history:
            return MetricRecord({})
        loss = sum(float(str(m["loss-sum"])) for m in metrics) / n
        accuracy = sum(int(str(m["correct"])) for m in metrics) / n
        last = self.history[-1]
        self.history[-1] = last.model_copy(update={"eval_loss": loss, "eval_accuracy": accuracy})
        return MetricRecord({"loss": loss, "accuracy": accuracy})


def _strategy(params: TrainParams, rounds: _Rounds) -> Strategy:
    common = {
        "fraction_train": params.fraction,
        # Held-out metrics are exact counts: not released when the run is under DP.
        "fraction_evaluate": 0.0 if params.dp is not None else 1.0,
        "min_train_nodes": params.min_nodes,
        "min_evaluate_nodes": params.min_nodes,
        "min_available_nodes": params.min_nodes,
        "arrayrecord_key": ARRAYS,
        "configrecord_key": PARAMS_RECORD,
        "train_metrics_aggr_fn": rounds.train,
        "evaluate_metrics_aggr_fn": rounds.evaluate,
    }
    if params.strategy == "fedprox":
        return FedProx(proximal_mu=params.proximal_mu, **common)  # type: ignore[arg-type]
    if params.strategy == "fedadam":
        return FedAdam(**common)  # type: ignore[arg-type]
    return FedAvg(**common)  # type: ignore[arg-type]


def standardisation(grid: Grid, params: TrainParams) -> Standardisation:
    """Federated mean and standard deviation of each feature (the describe task)."""
    stats = describe_serve(
        grid,
        DescribeParams(
            dataset=params.dataset,
            columns=params.features,
            where=params.where,
            study=params.study,
            min_nodes=params.min_nodes,
            timeout=params.timeout,
        ),
    ).to_frame()
    return Standardisation(
        mean=tuple(float(m) for m in stats.loc[list(params.features), "mean"]),
        std=tuple(float(s) if s else 1.0 for s in stats.loc[list(params.features), "std"]),
    )


def train_serve(grid: Grid, params: TrainParams) -> TrainedModel:
    nodes = wait_for_nodes(grid, params)
    run = params.model_copy(update={"standardisation": standardisation(grid, params)})
    watched = _WatchedGrid(grid)
    rounds = _Rounds(run, watched)
    config = ConfigRecord({"json": run.model_dump_json(), "participants": len(nodes)})
    initial = ArrayRecord(
        {
            "weight": Array(np.zeros((1, len(run.features)), dtype=np.float64)),
            "bias": Array(np.zeros(1, dtype=np.float64)),
        }
    )
    result = _strategy(run, rounds).start(
        grid=watched,
        initial_arrays=initial,
        num_rounds=run.rounds,
        timeout=run.timeout,
        train_config=config,
        evaluate_config=config,
    )
    if len(rounds.history) < run.rounds:  # a round where no node sent an update
        rounds.refused()
        raise TaskFailed(
            f"{run.rounds - len(rounds.history)} of {run.rounds} rounds had no update",
            rule="training.no_updates",
            fix="check that the nodes are online and have the train extra installed",
        )
    weight = result.arrays["weight"].numpy().reshape(-1)
    bias = float(result.arrays["bias"].numpy().reshape(-1)[0])
    if not (np.all(np.isfinite(weight)) and math.isfinite(bias)):
        raise TaskFailed(
            "training diverged (the model's weights are not finite)",
            rule="training.diverged",
            fix="lower learning_rate or local_epochs",
        )
    delta = run.dp.delta if run.dp is not None else None
    assert run.standardisation is not None
    return TrainedModel(
        model=run.model,
        features=list(run.features),
        label=run.label,
        standardisation=run.standardisation,
        weight=[float(w) for w in weight],
        bias=bias,
        strategy=run.strategy,
        rounds=len(rounds.history),
        study=run.study,
        nodes=sorted({n for r in rounds.history for n in r.nodes}),
        epsilon={name: loss.epsilon(delta) for name, loss in sorted(rounds.losses.items())}
        if delta is not None
        else {},
        delta=delta,
        history=rounds.history,
    )


__all__ = ["standardisation", "train_serve"]
