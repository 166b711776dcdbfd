"""The same describe ServerApp/ClientApp pair under Flower's simulation runtime (Ray)."""

from __future__ import annotations

import os
import socket
from typing import Any

import numpy as np
import pandas as pd
import pytest

from oncofed.kernel.flower import server_app
from oncofed.kernel.schema import infer_schema
from oncofed.node.app import build_client_app
from oncofed.node.data import FrameCatalogue
from oncofed.privacy.policy import EVERY_DATASET, DatasetPrivacy, NodePolicy
from oncofed.tasks.base import TaskParams, TaskType
from oncofed.tasks.describe import TASK, DescribeParams, DescribeResult
from tests.oracle import assert_describe_matches

pytest.importorskip("ray", reason="Flower's simulation runtime needs oncofed[simulation]")

EXACT = NodePolicy(
    exact_complete_records=False, dp={EVERY_DATASET: DatasetPrivacy(allow_exact=True)}
)
"""Simulated centres whose operators allow exact answers (there are no permits here)."""


def simulate(task: TaskType[Any, Any], params: TaskParams, catalogues: list[FrameCatalogue]) -> str:
    """The task's server function and the node ClientApp under ``run_simulation``; its result."""
    from flwr.simulation import run_simulation

    client_app = build_client_app(
        lambda context: catalogues[int(context.node_config["partition-id"])]
    )
    results: list[str] = []
    app = server_app(lambda grid: results.append(task.run_server(grid, params.model_dump_json())))
    environment = dict(os.environ)
    # Ray's head otherwise waits a fixed time for its GCS server to write the port it took,
    # which a loaded machine has missed ("Timed out waiting for file .../gcs_server_port"):
    # given a port, it connects with its own retries instead.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        os.environ["RAY_GCS_SERVER_PORT"] = str(probe.getsockname()[1])
    try:
        run_simulation(
            server_app=app,
            client_app=client_app,
            num_supernodes=len(catalogues),
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
    return results[0]


def test_describe_runs_unchanged_under_run_simulation(lung: pd.DataFrame) -> None:
    columns = ["age", "time", "wt.loss"]
    schema = infer_schema(lung)
    centres = sorted(lung["centre"].unique())
    catalogues = [
        FrameCatalogue(name, {"lung": (schema, lung[lung["centre"] == name])}, EXACT)
        for name in centres
    ]
    params = DescribeParams(dataset="lung", columns=tuple(columns), min_nodes=len(centres))
    result = DescribeResult.model_validate_json(simulate(TASK, params, catalogues))
    assert sorted(result.nodes) == centres
    assert_describe_matches(result, lung, columns)


def test_training_runs_unchanged_for_50_simulated_centres() -> None:
    """The training ServerApp/ClientApp pair for 50 centres under Ray, on this 2-core machine.

    The data follow a known logistic model; the oracle is scikit-learn's
    unpenalised fit on the pooled rows, scored on the same fresh patients.
    """
    pytest.importorskip("torch")
    pytest.importorskip("opacus")
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
        FrameCatalogue(name, {"sim": (schema, rows)}, EXACT)
        for name, rows in frame.groupby("centre")
    ]
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
    model = TrainedModel.model_validate_json(simulate(TRAIN, params, catalogues))
    assert len(model.nodes) == centres and model.rounds == 3
    pooled = LogisticRegression(penalty=None).fit(frame[["a", "b", "c"]], frame["y"])
    expected = pooled.score(fresh[["a", "b", "c"]], fresh["y"])
    accuracy = float(np.mean(model.predict(fresh) == fresh["y"]))
    assert accuracy >= expected - 0.02, (accuracy, expected)
