"""glm: federated IRLS through the governed runtime against pooled statsmodels.

Run: python bench/bench_glm.py [--rows 100000] [--nodes 5] [--repeat 3]

A logistic regression with six terms (nine coefficients) on seeded synthetic
patients split over N node processes. Both fits run in this process's run on
this machine; times are printed as ratios to the pooled statsmodels fit, with
the number of round trips (one broadcast to every node and their replies) the
federated fit needed, and its largest relative difference from statsmodels.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import pandas as pd
import statsmodels.api as sm
import statsmodels.formula.api as smf

from oncofed.client.sandbox import Sandbox
from oncofed.tasks.glm import GLMResult

# The same text for both: no dotted names, so patsy needs no Q().
FORMULA = "relapse ~ age + C(sex) + C(stage) + tumour_mm + np.log(psa) + bmi"


def synthetic(rows: int, nodes: int, seed: int = 7) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "age": rng.normal(63, 10, rows).round(),
            "sex": rng.choice(["female", "male"], rows),
            "stage": rng.choice(["I", "II", "III", "IV"], rows, p=[0.3, 0.3, 0.25, 0.15]),
            "tumour_mm": rng.gamma(2.0, 9.0, rows),
            "psa": rng.lognormal(1.5, 0.8, rows),
            "bmi": rng.normal(27, 4, rows),
            "centre": rng.choice([f"centre-{i}" for i in range(nodes)], rows),
        }
    )
    stage = frame["stage"].map({"I": 0.0, "II": 0.4, "III": 0.9, "IV": 1.6})
    eta = (
        -3.0
        + 0.02 * (frame["age"] - 63)
        + 0.2 * (frame["sex"] == "male")
        + stage
        + 0.03 * frame["tumour_mm"]
        + 0.3 * np.log(frame["psa"])
        - 0.01 * (frame["bmi"] - 27)
    )
    frame["relapse"] = (rng.random(rows) < 1 / (1 + np.exp(-eta))).astype(int)
    frame.loc[rng.random(rows) < 0.03, "bmi"] = np.nan  # complete cases, as statsmodels
    return frame


def timed(fn: Callable[[], object], repeat: int) -> tuple[float, object]:
    times, value = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), value


def worst_difference(result: GLMResult, oracle: object) -> float:
    worst = 0.0
    pairs = ((result.params, oracle.params), (result.bse, oracle.bse))  # type: ignore[attr-defined]
    for ours, theirs in pairs:
        rel = (ours - theirs.loc[ours.index]).abs() / theirs.loc[ours.index].abs()
        worst = max(worst, float(rel.max()))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--nodes", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    frame = synthetic(args.rows, args.nodes)

    def pooled() -> object:
        return smf.glm(FORMULA, data=frame, family=sm.families.Binomial()).fit()

    pooled_time, oracle = timed(pooled, args.repeat)

    start = time.perf_counter()
    with Sandbox.from_frame(frame, split_by="centre", dataset="bench") as net:
        startup = time.perf_counter() - start
        with net.session(progress=False) as session:
            session.describe(["age"], min_nodes=args.nodes)  # warm the nodes' data cache

            def federated() -> GLMResult:
                return session.glm(FORMULA, "binomial", min_nodes=args.nodes)

            federated_time, result = timed(federated, args.repeat)
    assert isinstance(result, GLMResult)

    print(
        f"binomial GLM, {len(result.names)} coefficients ({FORMULA}), "
        f"{args.rows} rows over {args.nodes} nodes ({result.nobs} complete)"
    )
    print(f"network start-up (coordinator + {args.nodes} nodes): {startup:.2f} s")
    print(
        f"iterations: federated {result.iterations}, statsmodels "
        f"{oracle.fit_history['iteration']}; round trips: {result.round_trips}"  # type: ignore[attr-defined]
    )
    print(
        f"largest relative difference from statsmodels (coef, std err): "
        f"{worst_difference(result, oracle):.1e}"
    )
    print(f"{'fit':<60} {'median s':>10} {'x pooled':>10}")
    rows = [
        ("pooled statsmodels smf.glm(...).fit() (baseline)", pooled_time),
        (f"oncofed federated IRLS, {args.nodes} node processes over gRPC", federated_time),
        ("  per round trip", federated_time / result.round_trips),
    ]
    for name, seconds in rows:
        print(f"{name:<60} {seconds:>10.4f} {seconds / pooled_time:>10.1f}")


if __name__ == "__main__":
    main()
