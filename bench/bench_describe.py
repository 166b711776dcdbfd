"""describe: the governed runtime against pooled pandas, DuckDB and Flower's simulation.

Run: python bench/bench_describe.py [--rows 100000] [--nodes 5] [--repeat 5]

Every figure is measured in this run on this machine and printed as a ratio
to pooled pandas, so a noisy shared machine moves numerator and denominator
together. Network start-up is reported apart from per-query time.
"""

from __future__ import annotations

import argparse
import time

import duckdb
import numpy as np
import pandas as pd
from timing import median_seconds

from oncofed.client.sandbox import Sandbox
from oncofed.kernel.flower import server_app
from oncofed.kernel.schema import infer_schema
from oncofed.node.app import build_client_app
from oncofed.node.data import FrameCatalogue
from oncofed.tasks.describe import TASK, DescribeParams

COLUMNS = ["age", "tumour_mm", "psa", "bmi"]


def synthetic(rows: int, nodes: int, seed: int = 7) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "age": rng.normal(63, 10, rows),
            "tumour_mm": rng.gamma(2.0, 9.0, rows),
            "psa": rng.lognormal(1.5, 0.8, rows),
            "bmi": rng.normal(27, 4, rows),
            "centre": rng.choice([f"centre-{i}" for i in range(nodes)], rows),
        }
    )
    frame.loc[rng.random(rows) < 0.05, "bmi"] = np.nan
    return frame


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--nodes", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--no-simulation", action="store_true", help="skip Flower/Ray")
    args = parser.parse_args()
    frame = synthetic(args.rows, args.nodes)

    def pooled() -> object:
        return frame[COLUMNS].agg(["count", "mean", "var", "std"])

    con = duckdb.connect()
    con.register("pooled", frame)
    sql = ", ".join(
        f'count("{c}"), avg("{c}"), var_samp("{c}"), stddev_samp("{c}")' for c in COLUMNS
    )

    def duck() -> object:
        return con.execute(f"SELECT {sql} FROM pooled").fetchall()

    baseline = median_seconds(pooled, args.repeat)
    duck_time = median_seconds(duck, args.repeat)

    start = time.perf_counter()
    with Sandbox.from_frame(frame, split_by="centre", dataset="bench") as net:
        startup = time.perf_counter() - start
        with net.session(progress=False) as session:
            session.describe(COLUMNS, min_nodes=args.nodes)  # warm the nodes' data cache

            def governed() -> object:
                return session.describe(COLUMNS, min_nodes=args.nodes)

            governed_time = median_seconds(governed, args.repeat)

    rows = [
        ("pooled pandas (baseline)", baseline),
        ("pooled DuckDB", duck_time),
        (f"oncofed governed runtime, {args.nodes} node processes over gRPC", governed_time),
    ]
    if not args.no_simulation:
        rows.append(("Flower run_simulation (Ray), incl. Ray start", simulate(frame, args.nodes)))

    print(f"describe of {len(COLUMNS)} columns, {args.rows} rows over {args.nodes} nodes")
    print(f"network start-up (coordinator + {args.nodes} nodes): {startup:.2f} s")
    print(f"{'runtime':<66} {'median s':>10} {'x pooled':>10}")
    for name, seconds in rows:
        print(f"{name:<66} {seconds:>10.4f} {seconds / baseline:>10.1f}")


def simulate(frame: pd.DataFrame, nodes: int) -> float:
    from flwr.simulation import run_simulation

    schema = infer_schema(frame)
    names = sorted(frame["centre"].unique())
    catalogues = [
        FrameCatalogue(n, {"bench": (schema, frame[frame["centre"] == n])}) for n in names
    ]
    params = DescribeParams(dataset="bench", columns=tuple(COLUMNS), min_nodes=nodes)
    done: list[str] = []
    start = time.perf_counter()
    run_simulation(
        server_app=server_app(
            lambda grid: done.append(TASK.run_server(grid, params.model_dump_json()))
        ),
        client_app=build_client_app(lambda ctx: catalogues[int(ctx.node_config["partition-id"])]),
        num_supernodes=nodes,
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {"num_cpus": 2, "include_dashboard": False},
        },
    )
    assert done, "simulation did not finish"
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
