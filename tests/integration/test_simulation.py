"""The same describe ServerApp/ClientApp pair under Flower's simulation runtime (Ray)."""

from __future__ import annotations

import os

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
