"""Server side of training: federated standardisation, then Flower's strategy, unchanged.

The strategy (FedAvg, FedProx or FedAdam from ``flwr.serverapp.strategy``)
drives the governed Grid exactly as it would Flower's own runtime; the task's
parameters travel in the config record the nodes' mods read. Metric
aggregation callbacks record each round's nodes, losses and the DP-SGD loss
each node charged, and fail the task when fewer than ``min_nodes`` replied.
``setup.py`` agrees the design and the scaling first; ``grid.py`` wraps the
grid the strategy drives (refusals, silent nodes, secure aggregation) and
turns the nodes' typed releases into the replies the strategy and these
callbacks read (``records.for_strategy``).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAdam, FedAvg, FedProx

from oncofed.kernel.errors import FederatedErrors, Param, TaskFailed
from oncofed.kernel.flower import PARAMS_RECORD
from oncofed.privacy.accounting import PrivacyLoss
from oncofed.tasks.messaging import report_progress, wait_for_nodes
from oncofed.tasks.training.architectures import SURVIVAL, initial_state
from oncofed.tasks.training.grid import WatchedGrid
from oncofed.tasks.training.model import RoundMetrics, TrainedModel
from oncofed.tasks.training.params import TrainParams
from oncofed.tasks.training.records import ARRAYS, METRICS, charges, reply_nodes
from oncofed.tasks.training.setup import agreed_design, bounded_standardisation, standardisation


class _Rounds:
    """Collects what the strategy's replies say, round by round, and shows progress."""

    def __init__(self, params: TrainParams, grid: WatchedGrid) -> None:
        self.params = params
        self.grid = grid
        self.strategy: FedAvg | None = None  # set once built (it takes our callbacks)
        self.history: list[RoundMetrics] = []
        self.losses: dict[str, PrivacyLoss] = {}

    def train(self, replies: list[RecordDict], _weight_key: str) -> MetricRecord:
        names = sorted(name for r in replies for name in reply_nodes(r))
        if len(names) < self.params.min_nodes:
            self.refused()
            silent = self.grid.silent
            raise TaskFailed(
                f"round {len(self.history) + 1}: only {len(names)} node(s) sent an update "
                f"({', '.join(names) or 'none'}); the request needs {self.params.min_nodes}"
                + (
                    f"; {', '.join(silent)} did not reply within {self.params.timeout:g} s"
                    if silent
                    else ""
                ),
                rule="training.min_nodes",
                fix=f"restart the missing nodes, or lower {Param('min_nodes')}",
                silent=silent,
            )
        metrics = [r.metric_records[METRICS] for r in replies]
        examples = [float(str(m["num-examples"])) for m in metrics]
        # Under DP a node releases no loss (records.NoisyModelUpdate): none to show.
        losses = [float(str(m["train-loss"])) for m in metrics if "train-loss" in m]
        for reply in replies:
            for name, record in charges(reply).items():
                rdp = [float(v) for v in record["rdp"]]  # type: ignore[union-attr]
                charged = PrivacyLoss(tuple(rdp))
                earlier = self.losses.get(name)
                self.losses[name] = charged if earlier is None else earlier + charged
        mean_loss = (
            float(np.average(losses, weights=examples)) if len(losses) == len(metrics) else None
        )
        done = len(self.history) + 1
        self.history.append(RoundMetrics(round=done, nodes=names, train_loss=mean_loss))
        # Flower's strategies read fraction_evaluate when they configure the round's
        # evaluation, which comes after this callback: evaluate every k rounds and last.
        due = done % self.params.evaluate_every == 0 or done == self.params.rounds
        if self.strategy is not None:
            self.strategy.fraction_evaluate = 1.0 if due and self.params.dp is None else 0.0
        return MetricRecord({} if mean_loss is None else {"train-loss": mean_loss})

    def refused(self) -> None:
        """Raise the nodes' refusals so far, if there were any."""
        if self.grid.errors:
            raise FederatedErrors.combine(self.grid.errors)

    def evaluate(self, replies: list[RecordDict], _weight_key: str) -> MetricRecord:
        metrics = [r.metric_records[METRICS] for r in replies]
        if not self.history or not metrics:
            return MetricRecord({})
        pooled = pooled_metrics(self.params, metrics)
        last = self.history[-1]
        self.history[-1] = last.model_copy(update={f"eval_{k}": v for k, v in pooled.items()})
        return MetricRecord({k: v for k, v in pooled.items() if v is not None})

    def report(self, server_round: int, _arrays: ArrayRecord) -> None:
        """Flower's per-round hook (its centralised evaluation): a progress line."""
        if server_round == 0 or not self.history:
            return
        last = self.history[-1]
        parts = [f"round {last.round}/{self.params.rounds}", f"{len(last.nodes)} nodes"]
        if last.train_loss is not None:
            parts.append(f"loss {last.train_loss:.4g}")
        parts += [f"{k} {v:.3f}" for k, v in last.evaluation().items()]
        if self.losses and self.params.dp is not None:
            spent = max(loss.epsilon(self.params.dp.delta) for loss in self.losses.values())
            parts.append(f"ε {spent:.2f} of {self.params.dp.epsilon:g}")
        report_progress(self.grid, " · ".join(parts))


def pooled_metrics(params: TrainParams, metrics: list[MetricRecord]) -> dict[str, float | None]:
    """Held-out metrics over every node's rows, from the sums and counts the nodes sent."""

    def total(key: str) -> float:
        return sum(float(str(m[key])) for m in metrics)

    def histogram(key: str) -> npt.NDArray[np.float64]:
        counts = [np.asarray(m[key], dtype=np.float64) for m in metrics]
        return np.asarray(np.sum(counts, axis=0), dtype=np.float64)

    if params.model in SURVIVAL:
        comparable = total("comparable")
        return {
            "loss": total("loss-sum") / max(total("events"), 1.0),
            "concordance": (total("concordant") + total("tied") / 2) / comparable
            if comparable
            else None,
        }
    n = total("num-examples")
    positives, negatives = histogram("positives"), histogram("negatives")
    pairs = positives.sum() * negatives.sum()
    # Each positive beats the negatives in lower bins and ties those in its own.
    below = np.concatenate([[0.0], np.cumsum(negatives)[:-1]])
    auc = float(np.sum(positives * (below + negatives / 2)) / pairs) if pairs else None
    return {
        "loss": total("loss-sum") / n if n else None,
        "accuracy": total("correct") / n if n else None,
        "auc": auc,
    }


def _strategy(params: TrainParams, rounds: _Rounds) -> FedAvg:
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


def train_serve(grid: Grid, params: TrainParams) -> TrainedModel:
    nodes = wait_for_nodes(grid, params)
    columns, levels, bounds, names = agreed_design(grid, params, nodes)
    scaling = (
        bounded_standardisation(bounds)
        if params.scaling == "bounds"
        else standardisation(grid, params)
    )
    run = params.model_copy(update={"standardisation": scaling})
    watched = WatchedGrid(grid, names, run.secure_aggregation)
    rounds = _Rounds(run, watched)
    strategy = _strategy(run, rounds)
    rounds.strategy = strategy
    config = ConfigRecord({"json": run.model_dump_json(), "participants": len(nodes)})
    initial = initial_state(len(columns), run.layers, run.seed)
    result = strategy.start(
        grid=watched,
        initial_arrays=ArrayRecord({key: Array(value) for key, value in initial.items()}),
        num_rounds=run.rounds,
        timeout=run.timeout,
        train_config=config,
        evaluate_config=config,
        evaluate_fn=rounds.report,
    )
    if len(rounds.history) < run.rounds:  # a round where no node sent an update
        rounds.refused()
        raise TaskFailed(
            f"{run.rounds - len(rounds.history)} of {run.rounds} rounds had no update",
            rule="training.no_updates",
            fix="check that the nodes are online and have the train extra installed",
        )
    state = {key: result.arrays[key].numpy() for key in initial}
    if not all(np.all(np.isfinite(value)) for value in state.values()):
        raise TaskFailed(
            "training diverged (the model's weights are not finite)",
            rule="training.diverged",
            fix=f"lower {Param('learning_rate')} or {Param('local_epochs')}",
        )
    delta = run.dp.delta if run.dp is not None else None
    assert run.standardisation is not None
    return TrainedModel(
        model=run.model,
        features=run.features.text,
        columns=columns,
        levels=levels,
        hidden=list(run.layers),
        label=run.label,
        duration=run.duration,
        event=run.event,
        standardisation=run.standardisation,
        state={key: value.tolist() for key, value in state.items()},
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


__all__ = ["pooled_metrics", "train_serve"]
