"""The same describe ServerApp/ClientApp pair under Flower's simulation runtime (Ray)."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

from oncofed.flower import server_app
from oncofed.node.app import build_client_app
from oncofed.node.data import FrameCatalogue, infer_schema
from oncofed.tasks.describe import TASK, DescribeParams, DescribeResult
from tests.oracle import assert_describe_matches

pytest.importorskip("ray", reason="Flower's simulation runtime needs oncofed[simulation]")


def test_describe_runs_unchanged_under_run_simulation(lung: pd.DataFrame) -> None:
    from flwr.simulation import run_simulation

    columns = ["age", "time", "wt.loss"]
    schema = infer_schema(lung)
    centres = sorted(lung["centre"].unique())
    catalogues = [
        FrameCatalogue(name, {"lung": (schema, lung[lung["centre"] == name])}) for name in centres
    ]
    client_app = build_client_app(
        lambda context: catalogues[int(context.node_config["partition-id"])]
    )
    params = DescribeParams(dataset="lung", columns=tuple(columns), min_nodes=len(centres))
    results: list[str] = []
    app = server_app(lambda grid: results.append(TASK.run_server(grid, params.model_dump_json())))

    environment = dict(os.environ)
    try:
        run_simulation(
            server_app=app,
            client_app=client_app,
            num_supernodes=len(centres),
            backend_config={
                "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                "init_args": {"num_cpus": 2, "include_dashboard": False},
            },
        )
    finally:
        # Ray writes PYTHONPATH and other variables into this process; later tests spawn processes.
        os.environ.clear()
        os.environ.update(environment)

    assert len(results) == 1, "the server function did not finish under simulation"
    result = DescribeResult.model_validate_json(results[0])
    assert sorted(result.nodes) == centres
    assert_describe_matches(result, lung, columns)


def test_training_runs_unchanged_for_50_simulated_centres() -> None:
    """The training ServerApp/ClientApp pair for 50 centres under Ray, on this 2-core machine.

    The data follow a known logistic model; the oracle is scikit-learn's
    unpenalised fit on the pooled rows, scored on the same fresh patients.
    """
    pytest.importorskip("torch")
    pytest.importorskip("opacus")
    from flwr.simulation import run_simulation
    from sklearn.linear_model import LogisticRegression

    from oncofed.tasks.training import TASK as TRAIN
    from oncofed.tasks.training import TrainedModel, TrainParams

    centres = 50
    rng = np.random.default_rng(50)

    def patients(n: int) -> pd.DataFrame:
        x = rng.normal(size=(n, 3))
        p = 1 / (1 + np.exp(-(x @ np.array([1.5, -1.0, 0.5]) - 0.3)))
        return pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2], "y": rng.random(n) < p})

    frame = patients(centres * 40).astype({"y": float})
    frame["centre"] = np.repeat([f"centre-{i:02d}" for i in range(centres)], 40)
    fresh = patients(2000)
    schema = infer_schema(frame)
    catalogues = [
        FrameCatalogue(name, {"sim": (schema, rows)}) for name, rows in frame.groupby("centre")
    ]
    client_app = build_client_app(
        lambda context: catalogues[int(context.node_config["partition-id"])]
    )
    params = TrainParams(
        dataset="sim",
        features=("a", "b", "c"),
        label="y",
        rounds=3,
        local_epochs=10,
        batch_size=8,
        learning_rate=0.1,
        evaluate_every=3,
        min_nodes=centres,
        test_fraction=0.0,
    )
    results: list[str] = []
    app = server_app(lambda grid: results.append(TRAIN.run_server(grid, params.model_dump_json())))
    environment = dict(os.environ)
    try:
        run_simulation(
            server_app=app,
            client_app=client_app,
            num_supernodes=centres,
            backend_config={
                "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                "init_args": {"num_cpus": 2, "include_dashboard": False},
            },
        )
    finally:
        os.environ.clear()
        os.environ.update(environment)

    assert len(results) == 1, "the server function did not finish under simulation"
    model = TrainedModel.model_validate_json(results[0])
    assert len(model.nodes) == centres and model.rounds == 3
    pooled = LogisticRegression(penalty=None).fit(frame[["a", "b", "c"]], frame["y"])
    expected = pooled.score(fresh[["a", "b", "c"]], fresh["y"])
    accuracy = float(np.mean(model.predict(fresh) == fresh["y"]))
    assert accuracy >= expected - 0.02, (accuracy, expected)
