"""train: the cost of federation and of DP-SGD, each against a baseline from the same run.

Run: python bench/bench_training.py [--rows 20000] [--nodes 4] [--epochs 2] [--repeat 3]

Seeded synthetic patients (five numeric features, a logistic outcome) split
over N node processes.

* Federation overhead: the marginal time of one federated round (a run of
  R+k rounds minus a run of R rounds, divided by k, so the one-off design and
  standardisation steps cancel) against the node's own training handler
  running the same epochs on all the rows in this process -- what one
  machine holding the pooled data would spend on the same round.
* Privacy overhead: that handler with Opacus DP-SGD (Poisson sampling,
  per-example clipping, noise) against plain SGD, same rows, epochs, batch
  size and learning rate.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import numpy as np
import pandas as pd
from flwr.app import Array, ArrayRecord, RecordDict
from timing import median_seconds

from oncofed.client.sandbox import Sandbox
from oncofed.kernel.schema import infer_schema
from oncofed.privacy.policy import NodePolicy
from oncofed.tasks.base import LocalDataset
from oncofed.tasks.training.architectures import initial_state
from oncofed.tasks.training.node import train_node
from oncofed.tasks.training.params import Standardisation, TrainParams
from oncofed.tasks.training.records import ARRAYS

FEATURES = ["age", "tumour_mm", "psa", "bmi", "grade"]
LEARNING_RATE = 0.05


def synthetic(rows: int, nodes: int, seed: int = 11) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, len(FEATURES)))
    eta = x @ np.array([0.8, -0.5, 0.3, 0.0, 1.1]) - 0.2
    frame = pd.DataFrame(x, columns=FEATURES)
    frame["relapse"] = (rng.random(rows) < 1 / (1 + np.exp(-eta))).astype(float)
    frame["centre"] = rng.choice([f"centre-{i}" for i in range(nodes)], rows)
    return frame


def local_round(frame: pd.DataFrame, params: TrainParams) -> Callable[[], RecordDict]:
    """One round of the node's handler on every row, from the same initial weights."""
    pooled = frame.drop(columns="centre")
    local = LocalDataset("pooled", "bench", infer_schema(pooled), pooled, NodePolicy())
    state = initial_state(len(FEATURES), params.layers, params.seed)
    content = RecordDict({ARRAYS: ArrayRecord({k: Array(v) for k, v in state.items()})})
    stats = pooled[FEATURES]
    run = params.model_copy(
        update={
            "standardisation": Standardisation(
                columns=tuple(FEATURES),
                mean=tuple(stats.mean()),
                std=tuple(stats.std()),
            )
        }
    )
    return lambda: train_node(run, local, content)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=2, help="local epochs per round")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2, help="R: the shorter run's rounds")
    parser.add_argument("--extra", type=int, default=3, help="k: the longer run's extra rounds")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    frame = synthetic(args.rows, args.nodes)
    request: dict[str, object] = {
        "features": FEATURES,
        "label": "relapse",
        "local_epochs": args.epochs,
        "batch_size": args.batch_size,
        "learning_rate": LEARNING_RATE,
    }
    with (
        Sandbox.from_frame(frame, split_by="centre", dataset="bench") as net,
        net.session(dataset="bench", progress=False) as session,
    ):

        def federated(rounds: int) -> float:
            return median_seconds(
                lambda: session.train(
                    FEATURES,
                    "relapse",
                    rounds=rounds,
                    local_epochs=args.epochs,
                    batch_size=args.batch_size,
                    learning_rate=LEARNING_RATE,
                    evaluate_every=1000,  # held-out metrics after the last round only
                    min_nodes=args.nodes,
                ),
                args.repeat,
                warm_up=True,
            )

        short, long = federated(args.rounds), federated(args.rounds + args.extra)
    per_round = (long - short) / args.extra

    local = {**request, "dataset": "bench", "rounds": args.rounds}
    params = TrainParams.model_validate(local)
    # DP-SGD's sampling rate comes from the request (a public figure), never the rows.
    dp_request = {"epsilon": 3.0, "delta": 1e-5, "expected_rows": len(frame)}
    dp = TrainParams.model_validate({**local, "dp": dp_request})
    plain_s = median_seconds(local_round(frame, params), args.repeat, warm_up=True)
    dp_s = median_seconds(local_round(frame, dp), args.repeat, warm_up=True)

    print(
        f"{args.rows} rows over {args.nodes} node processes, {args.epochs} local epochs of "
        f"batch {args.batch_size} per round; median of {args.repeat} runs"
    )
    print(f"{'':36} {'seconds':>9} {'x baseline':>11}")
    print(f"{'local round, all rows, plain SGD':36} {plain_s:9.3f} {1.0:11.2f}")
    print(f"{'federated round (marginal)':36} {per_round:9.3f} {per_round / plain_s:11.2f}")
    print(f"{'local round, all rows, DP-SGD':36} {dp_s:9.3f} {dp_s / plain_s:11.2f}")
    print(
        f"(federated runs: {args.rounds} rounds {short:.2f} s, "
        f"{args.rounds + args.extra} rounds {long:.2f} s)"
    )


if __name__ == "__main__":
    main()
