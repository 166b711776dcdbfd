"""coxph: federated Newton-Raphson through the governed runtime against pooled lifelines.

Run: python bench/bench_coxph.py [--rows 100000] [--nodes 5] [--repeat 3] [--grid 30]

A Cox model with six covariates (one categorical) on seeded synthetic
patients with Weibull survival times in days and uniform censoring, split
over N node processes, fitted on a time grid (durations rounded up to
multiples of ``--grid`` days, the nodes' default policy). The pooled baseline
is ``lifelines.CoxPHFitter`` on the same rows with the same rounding -- the
model the federated fit equals -- timed in the same run, once with lifelines'
default stopping rule and once run to convergence (the federated fit's
accuracy). Reported: median times, ratios, round trips, and the largest
relative difference of coefficients and standard errors.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import pandas as pd
from lifelines import CoxPHFitter

from oncofed.client.sandbox import Sandbox
from oncofed.tasks.coxph import CoxPHResult

COVARIATES = ["age", "female", "stage", "tumour_mm", "log_psa", "treated"]
RHS = "age + female + C(stage) + tumour_mm + log_psa + treated"
TIGHT = {"precision": 1e-14, "r_precision": 1e-15, "max_steps": 200}


def synthetic(rows: int, nodes: int, seed: int = 11) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "age": rng.normal(63, 10, rows).round(),
            "female": rng.integers(0, 2, rows),
            "stage": rng.choice(["I", "II", "III", "IV"], rows, p=[0.3, 0.3, 0.25, 0.15]),
            "tumour_mm": rng.gamma(2.0, 9.0, rows),
            "log_psa": rng.normal(1.5, 0.8, rows),
            "treated": rng.integers(0, 2, rows),
            "centre": rng.choice([f"centre-{i}" for i in range(nodes)], rows),
        }
    )
    stage = frame["stage"].map({"I": 0.0, "II": 0.4, "III": 0.9, "IV": 1.6})
    risk = (
        0.03 * (frame["age"] - 63)
        - 0.25 * frame["female"]
        + stage
        + 0.01 * frame["tumour_mm"]
        + 0.2 * frame["log_psa"]
        - 0.5 * frame["treated"]
    )
    event_days = rng.weibull(1.3, rows) * 1500.0 * np.exp(-risk / 1.3)
    censor_days = rng.uniform(30.0, 3650.0, rows)
    frame["days"] = np.ceil(np.minimum(event_days, censor_days))
    frame["dead"] = (event_days <= censor_days).astype(int)
    frame.loc[rng.random(rows) < 0.02, "tumour_mm"] = np.nan  # complete cases, as lifelines
    return frame


def pooled_design(frame: pd.DataFrame, grid: float) -> pd.DataFrame:
    """What the federated fit equals: complete rows, stage dummies, days on the grid."""
    rows = frame.dropna(subset=["tumour_mm"])
    dummies = pd.get_dummies(rows["stage"], prefix="stage", drop_first=True, dtype=float)
    design = pd.concat([rows[["days", "dead", *COVARIATES]].drop(columns="stage"), dummies], axis=1)
    return design.assign(days=np.ceil(design["days"] / grid) * grid)


def timed(fn: Callable[[], object], repeat: int) -> tuple[float, object]:
    times, value = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--nodes", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--grid", type=float, default=30.0)
    args = parser.parse_args()
    frame = synthetic(args.rows, args.nodes)
    design = pooled_design(frame, args.grid)

    def lifelines_default() -> CoxPHFitter:
        return CoxPHFitter().fit(design, "days", "dead")

    def lifelines_tight() -> CoxPHFitter:
        return CoxPHFitter().fit(design, "days", "dead", fit_options=TIGHT)

    lifelines_default()  # first call pays for imports and autograd's tracing
    default_time, _ = timed(lifelines_default, args.repeat)
    tight_time, oracle = timed(lifelines_tight, args.repeat)
    assert isinstance(oracle, CoxPHFitter)

    start = time.perf_counter()
    with Sandbox.from_frame(frame, split_by="centre", dataset="bench") as net:
        startup = time.perf_counter() - start
        with net.session(progress=False) as session:
            session.describe(["age"], min_nodes=args.nodes)  # warm the nodes' data cache

            def federated() -> CoxPHResult:
                return session.coxph("days", "dead", RHS, grid=args.grid, min_nodes=args.nodes)

            def federated_without_c() -> CoxPHResult:
                return session.coxph(
                    "days", "dead", RHS, grid=args.grid, min_nodes=args.nodes, concordance=False
                )

            federated_time, result = timed(federated, args.repeat)
            no_c_time, _ = timed(federated_without_c, args.repeat)
    assert isinstance(result, CoxPHResult)

    names = {f"C(stage)[T.{s}]": f"stage_{s}" for s in ("II", "III", "IV")}
    ours = result.to_frame().rename(index=names)
    theirs = oracle.summary.loc[ours.index]
    worst = max(
        float(((ours[col] - theirs[col]).abs() / theirs[col].abs()).max())
        for col in ("coef", "se(coef)")
    )
    print(
        f"Cox PH (Efron), {len(result.names)} coefficients ({RHS}), {args.rows} rows over "
        f"{args.nodes} nodes ({result.n} complete, {result.events} events), "
        f"time grid {args.grid:g} days"
    )
    print(f"network start-up (coordinator + {args.nodes} nodes): {startup:.2f} s")
    print(
        f"Newton steps: federated {result.iterations}; round trips: {result.round_trips} "
        f"(setup, start, one per step, concordance)"
    )
    print(f"largest relative difference from lifelines run to convergence: {worst:.1e}")
    print(
        f"concordance {result.concordance:.4f} +- {result.concordance_bound:.1e} "
        f"(lifelines {oracle.concordance_index_:.4f})"
    )
    print(f"{'fit':<62} {'median s':>10} {'x lifelines':>12}")
    rows = [
        ("pooled lifelines CoxPHFitter().fit(), default stopping (baseline)", default_time),
        ("pooled lifelines, run to convergence (precision 1e-14)", tight_time),
        (f"oncofed federated Newton-Raphson, {args.nodes} node processes", federated_time),
        ("  the same without the concordance round", no_c_time),
        ("  per round trip", federated_time / result.round_trips),
    ]
    for name, seconds in rows:
        print(f"{name:<62} {seconds:>10.3f} {seconds / default_time:>12.1f}")


if __name__ == "__main__":
    main()
