"""Utility of the DP releases: each DP analysis against the exact one, through a real network.

Run: python bench/bench_dp_utility.py [--rows 20000] [--nodes 5] [--epsilon 1] [--seed 13]

Seeded synthetic patients (age, sex, stage, albumin; a gaussian score, a
binary response, a count of visits; a survival time and event) are split
over N node processes whose schema declares public bounds. Every analysis
runs twice through the same network -- exactly, and with
``dp={"epsilon": EPSILON}`` for the whole analysis at each node -- and the
table prints how far the DP answer is from the exact one: for a GLM the
largest and median relative error of its coefficients and the largest error
in the exact fit's standard errors; for Kaplan-Meier the largest absolute
difference of the survival curve; and which coefficient was furthest off.
Nothing is asserted: one run is one draw of the noise (OpenDP draws it from
the operating system; the seed sets the data), so docs/privacy.md reports
the median over seeds 13-22.

Issue 13's target: GLM coefficients within 10 % (relative) of the exact
pooled fit at epsilon = 1 on 20,000 rows over 5 nodes.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from oncofed.client.sandbox import Sandbox
from oncofed.kernel.schema import DatasetSchema, infer_schema
from oncofed.privacy.policy import DatasetPrivacy, NodePolicy
from oncofed.tasks.coxph import CoxPHResult
from oncofed.tasks.glm import GLMResult
from oncofed.tasks.kaplan_meier import KaplanMeierResult

DATASET = "synthetic"
BOUNDS = {
    "age": (18.0, 100.0),
    "albumin": (10.0, 60.0),
    "score": (0.0, 100.0),
    "visits": (0.0, 15.0),
    "time": (0.0, 3650.0),
}
"""Public ranges a registry would declare, not read from the data."""
COVARIATES = "age + C(sex, levels=[0, 1]) + C(stage, levels=['I', 'II', 'III', 'IV']) + albumin"
TIME_POINTS = [90.0, 180.0, 365.0, 730.0, 1095.0, 1825.0]
COX_POINTS = [30.0 * k for k in range(1, 25)]
"""Two years, monthly: the Cox fit's grid (Breslow under dp, Efron exact: finer cells, fewer
ties; later, few patients are left at risk and their noisy risk sets add little)."""


def synthetic(rows: int, nodes: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "age": np.clip(rng.normal(64, 10, rows), 20, 95).round(),
            "sex": rng.integers(0, 2, rows),
            "stage": rng.choice(["I", "II", "III", "IV"], rows, p=[0.3, 0.3, 0.25, 0.15]),
            "albumin": np.clip(rng.normal(38, 5, rows), 15, 55).round(1),
            "centre": rng.choice([f"centre-{i}" for i in range(nodes)], rows),
        }
    )
    stage = frame["stage"].map({"I": 0.0, "II": 0.5, "III": 1.0, "IV": 1.8})
    risk = 0.03 * (frame["age"] - 64) + 0.4 * frame["sex"] + stage - 0.05 * (frame["albumin"] - 38)
    frame["score"] = np.clip(50 + 5 * risk + rng.normal(0, 4, rows), 0, 100)
    frame["response"] = (rng.random(rows) < 1 / (1 + np.exp(1 - risk))).astype(int)
    frame["visits"] = np.minimum(rng.poisson(np.exp(0.2 + 0.5 * risk)), 15)
    # Weibull survival with proportional hazards in the same risk; uniform censoring.
    event_time = 900 * rng.weibull(1.3, rows) * np.exp(-risk / 1.3)
    censor = rng.uniform(180, 3650, rows)
    frame["time"] = np.ceil(np.minimum(event_time, censor))
    frame["event"] = (event_time <= censor).astype(int)
    return frame


def bounded_schema(frame: pd.DataFrame) -> DatasetSchema:
    inferred = infer_schema(frame)
    columns = {
        name: spec.model_copy(update={"bounds": BOUNDS[name]}) if name in BOUNDS else spec
        for name, spec in inferred.columns.items()
    }
    return DatasetSchema(columns=columns)


@dataclass(frozen=True)
class Row:
    analysis: str
    error: str
    """What ``worst`` measures."""
    worst: float
    median: float
    in_exact_se: float
    """The largest error in units of the exact fit's standard error (NaN where none)."""
    epsilon: float
    """The largest epsilon the DP analysis charged at any node."""
    seconds: float
    worst_at: str = ""
    """The coefficient with the largest error (empty for a curve)."""


Analysis = Callable[[Sandbox, float], Row]


def _glm_row(family: str, response: str) -> Analysis:
    def run(net: Sandbox, epsilon: float) -> Row:
        formula = f"{response} ~ {COVARIATES}"
        with net.session(permit=f"exact-{family}", progress=False) as s:
            exact = s.run("glm", formula=formula, family=family)
        started = time.perf_counter()
        with net.session(permit=f"dp-{family}", progress=False) as s:
            # binomial and poisson take the default number of noisy Newton steps.
            noisy = s.run("glm", formula=formula, family=family, dp={"epsilon": epsilon})
        seconds = time.perf_counter() - started
        assert isinstance(exact, GLMResult) and isinstance(noisy, GLMResult)
        return _coefficients_row(f"glm {family}", exact, noisy, seconds)

    return run


def kaplan_meier_row(net: Sandbox, epsilon: float) -> Row:
    with net.session(permit="exact-km", progress=False) as s:
        exact = s.kaplan_meier("time", "event", time_points=TIME_POINTS)
    started = time.perf_counter()
    with net.session(permit="dp-km", progress=False) as s:
        noisy = s.kaplan_meier("time", "event", time_points=TIME_POINTS, dp={"epsilon": epsilon})
    seconds = time.perf_counter() - started
    assert isinstance(exact, KaplanMeierResult) and isinstance(noisy, KaplanMeierResult)
    assert noisy.privacy is not None
    difference = np.abs(np.array(noisy.curve().survival) - np.array(exact.curve().survival))
    return Row(
        analysis="kaplan_meier",
        error="survival curve, absolute",
        worst=float(difference.max()),
        median=float(np.median(difference)),
        in_exact_se=float("nan"),
        epsilon=max(noisy.privacy.epsilon.values()),
        seconds=seconds,
    )


def coxph_row(net: Sandbox, epsilon: float) -> Row:
    options = {"duration": "time", "event": "event", "covariates": COVARIATES}
    with net.session(permit="exact-cox", progress=False) as s:
        # The yardstick leaves out Harrell's C: its risk-score bins hold fewer than the
        # cell rule's rows, and the DP fit does not estimate it.
        exact = s.run("coxph", time_points=COX_POINTS, concordance=False, **options)
    started = time.perf_counter()
    with net.session(permit="dp-cox", progress=False) as s:
        noisy = s.run("coxph", time_points=COX_POINTS, dp={"epsilon": epsilon}, **options)
    seconds = time.perf_counter() - started
    assert isinstance(exact, CoxPHResult) and isinstance(noisy, CoxPHResult)
    return _coefficients_row("coxph", exact, noisy, seconds)


def _coefficients_row(
    analysis: str,
    exact: GLMResult | CoxPHResult,
    noisy: GLMResult | CoxPHResult,
    seconds: float,
) -> Row:
    """How far a DP model's coefficients are from the exact fit's."""
    assert noisy.privacy is not None
    truth, got = exact.params.to_numpy(), noisy.params.loc[exact.names].to_numpy()
    relative = np.abs(got - truth) / np.abs(truth)
    return Row(
        analysis=analysis,
        error="coefficients, relative",
        worst=float(relative.max()),
        median=float(np.median(relative)),
        in_exact_se=float(np.max(np.abs(got - truth) / exact.bse.to_numpy())),
        epsilon=max(noisy.privacy.epsilon.values()),
        seconds=seconds,
        worst_at=exact.names[int(np.argmax(relative))],
    )


ANALYSES: list[Analysis] = [
    _glm_row("gaussian", "score"),
    _glm_row("binomial", "response"),
    _glm_row("poisson", "visits"),
    kaplan_meier_row,
    # ---- Cox
    coxph_row,
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--nodes", type=int, default=5)
    parser.add_argument("--epsilon", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=13)
    args = parser.parse_args()
    frame = synthetic(args.rows, args.nodes, args.seed)
    # Each analysis runs under a permit of its own; the researcher cap leaves room for all.
    policy = NodePolicy(
        dp={
            DATASET: DatasetPrivacy(
                epsilon=args.epsilon, delta=1e-6, researcher_epsilon=100.0 * args.epsilon
            )
        }
    )
    started = time.perf_counter()
    with Sandbox.from_frame(
        frame,
        split_by="centre",
        dataset=DATASET,
        schema=bounded_schema(frame),
        policy=policy,
        release="exact",  # the exact fits are the yardstick: nodes and permits allow both
    ) as net:
        print(f"network start-up: {time.perf_counter() - started:.1f} s")
        rows = [analysis(net, args.epsilon) for analysis in ANALYSES]
    print(
        f"{args.rows} rows over {args.nodes} nodes, seed {args.seed}, "
        f"epsilon {args.epsilon:g} per analysis at each node (delta 1e-6)\n"
    )
    print(
        "| analysis | error of the DP answer | largest | median | largest / exact SE "
        "| epsilon charged | DP s | largest at |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---|")
    for row in rows:
        print(
            f"| {row.analysis} | {row.error} | {row.worst:.3f} | {row.median:.3f} | "
            f"{row.in_exact_se:.1f} | {row.epsilon:.3f} | {row.seconds:.1f} | {row.worst_at} |"
        )


if __name__ == "__main__":
    main()
