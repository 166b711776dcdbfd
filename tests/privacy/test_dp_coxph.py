"""A differentially private Cox fit through real node processes, against a pooled Breslow fit.

Seeded synthetic patients (12,000 over 4 nodes; age, a biomarker and a
treatment flag, each with bounds declared in the node schema, and a known
hazard ratio for each) with durations on an agreed 30-day grid. The DP fit
uses Breslow's ties, so its yardstick is Breslow's fit of the pooled rows on
the same grid (statsmodels' ``PHReg``; lifelines' ``CoxPHFitter`` has Efron's
ties only). Each DP coefficient must lie within 6 of its stated standard
errors of that fit: the stated error holds the sampling error and the noise
propagated through the score, so it also covers the one-step estimator's
approximation, which at these hazard ratios is well under one standard
error. The noise is real (two fits differ) and the ledger at each node is
charged at most the request's epsilon for each whole fit.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import pytest
from statsmodels.duration.hazard_regression import PHReg

from oncofed.client.sandbox import Sandbox
from oncofed.kernel.errors import QueryError
from oncofed.kernel.schema import DatasetSchema, infer_schema
from oncofed.privacy.policy import DatasetPrivacy, NodePolicy
from oncofed.tasks.coxph import CoxPHResult

pytestmark = pytest.mark.slow

ROWS, NODES, SEED = 12_000, 4, 7
COVARIATES = ["age", "marker", "treated"]
LOG_HAZARD_RATIOS = {"age": 0.02, "marker": 0.08, "treated": -0.4}
BOUNDS = {"age": (30.0, 90.0), "marker": (0.0, 12.0), "treated": (0.0, 1.0)}
"""Declared in the node schema; ``bmi`` is left without bounds for the refusal test."""
POINTS = [30.0 * k for k in range(1, 25)]
"""Two years on a monthly grid: about a quarter of the patients are still at risk at the end."""
DP = {"epsilon": 2.0, "delta": 1e-6}
STEPS = 3
"""The multi-step fit: the setup (half the budget) and two steps at the coordinator's beta."""
TOLERANCE = 6.0
POLICY = NodePolicy(
    dp={"trial": DatasetPrivacy(epsilon=10.0, delta=1e-6, max_epsilon_per_release=2.0)}
)


def _patients() -> pd.DataFrame:
    rng = np.random.default_rng(SEED)
    frame = pd.DataFrame(
        {
            "age": np.clip(rng.normal(62, 10, ROWS), 30, 90).round(),
            "marker": np.clip(rng.gamma(4.0, 1.0, ROWS), 0, 12).round(1),
            "treated": rng.integers(0, 2, ROWS).astype(float),
            "bmi": rng.normal(27, 4, ROWS).round(1),
            "centre": rng.choice([f"centre-{i}" for i in range(NODES)], ROWS),
        }
    )
    centred = frame[COVARIATES] - [62.0, 4.0, 0.0]
    lp = centred.to_numpy() @ np.array([LOG_HAZARD_RATIOS[c] for c in COVARIATES])
    # Weibull event times with proportional hazards in lp; uniform censoring.
    event_time = 700 * rng.weibull(1.2, ROWS) * np.exp(-lp / 1.2)
    censor = rng.uniform(60, 1500, ROWS)
    return frame.assign(
        time=np.ceil(np.minimum(event_time, censor)), event=(event_time <= censor).astype(int)
    )


def _schema(frame: pd.DataFrame) -> DatasetSchema:
    inferred = infer_schema(frame)
    return DatasetSchema(
        columns={
            name: spec.model_copy(update={"bounds": BOUNDS[name]}) if name in BOUNDS else spec
            for name, spec in inferred.columns.items()
        }
    )


@pytest.fixture(scope="module")
def patients() -> pd.DataFrame:
    return _patients()


@pytest.fixture(scope="module")
def trial(patients: pd.DataFrame) -> Iterator[Sandbox]:
    with Sandbox.from_frame(
        patients, split_by="centre", dataset="trial", schema=_schema(patients), policy=POLICY
    ) as net:
        yield net


@pytest.fixture(scope="module")
def breslow(patients: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Breslow's fit of the pooled rows, durations on the grid, follow-up ending at its end."""
    position = np.searchsorted(POINTS, patients["time"].to_numpy(float), side="left")
    beyond = position >= len(POINTS)
    time = np.asarray(POINTS)[np.minimum(position, len(POINTS) - 1)]
    status = patients["event"].to_numpy() * ~beyond
    fit = PHReg(time, patients[COVARIATES], status=status, ties="breslow").fit()
    return np.asarray(fit.params), np.asarray(fit.bse)


def _budget(net: Sandbox, node: str) -> list[dict[str, Any]]:
    config = str(net.node_config(node))
    run = subprocess.run(
        [sys.executable, "-m", "oncofed", "node", "budget", config, "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    return [json.loads(line) for line in run.stdout.splitlines() if line.strip()]


def _fit(net: Sandbox, permit: str, **options: Any) -> CoxPHResult:
    with net.session(dataset="trial", progress=False, permit=permit) as s:
        result = s.run(
            "coxph",
            duration="time",
            event="event",
            covariates=COVARIATES,
            time_points=POINTS,
            dp=DP,
            **options,
        )
    assert isinstance(result, CoxPHResult)
    return result


def _check_fit(fit: CoxPHResult, breslow: tuple[np.ndarray, np.ndarray], steps: int) -> None:
    assert fit.privacy is not None and fit.ties == "breslow" and fit.concordance is None
    assert fit.names == COVARIATES and fit.round_trips == steps == fit.iterations
    assert all(v > 0 for v in fit.privacy.noise_std.values())
    assert np.all(np.isfinite(fit.params)) and np.all(np.isfinite(fit.bse))
    error = np.abs(fit.params.to_numpy() - breslow[0])
    assert np.all(error <= TOLERANCE * fit.bse.to_numpy()), (error, fit.bse.to_numpy())
    if steps == 1:
        # The default one-step fit's stated error is honest, not inflated past use: at
        # most a few times the pooled fit's own sampling error at this size and epsilon.
        # Later steps' noise grows with exp(sum |beta_j| h_j) (docs/analyses/survival.md),
        # so a multi-step fit's errors are wide by design and only checked above.
        assert np.all(fit.bse.to_numpy() <= 10.0 * breslow[1]), (fit.bse.to_numpy(), breslow[1])
    assert max(fit.privacy.epsilon.values()) <= DP["epsilon"] * (1 + 1e-9)


def test_dp_cox_one_step_is_within_its_stated_noise_of_breslow(
    trial: Sandbox, breslow: tuple[np.ndarray, np.ndarray]
) -> None:
    permit = "dp-cox-one-step"
    fits = [_fit(trial, permit) for _ in range(2)]
    for fit in fits:
        _check_fit(fit, breslow, 1)
    assert not np.allclose(fits[0].params, fits[1].params)  # fresh noise each time
    for node in trial.node_names:
        charged = {row["permit"]: row for row in _budget(trial, node)}[permit]
        assert charged["releases"] == 2  # one release per fit: the setup
        # Two fits of epsilon 2 each compose (Rényi) to less than 4.
        assert charged["spent_epsilon"] <= 2 * DP["epsilon"]


def test_dp_cox_newton_steps_share_the_budget(
    trial: Sandbox, breslow: tuple[np.ndarray, np.ndarray]
) -> None:
    permit = "dp-cox-steps"
    fit = _fit(trial, permit, max_iter=STEPS)
    _check_fit(fit, breslow, STEPS)
    for node in trial.node_names:
        charged = {row["permit"]: row for row in _budget(trial, node)}[permit]
        assert charged["releases"] == STEPS  # the setup, then one per later step
        assert charged["spent_epsilon"] <= DP["epsilon"] * (1 + 1e-6)


def test_dp_cox_needs_cells_fixed_by_the_request(trial: Sandbox) -> None:
    with trial.session(dataset="trial", progress=False) as s:
        with pytest.raises(QueryError) as no_bound:
            s.run("coxph", duration="time", event="event", covariates=COVARIATES, grid=30, dp=DP)
        with pytest.raises(QueryError) as no_bounds:
            s.run(
                "coxph",
                duration="time",
                event="event",
                covariates=[*COVARIATES, "bmi"],
                time_points=POINTS,
                dp=DP,
            )
    assert no_bound.value.rule == "coxph.dp_time_grid"
    assert no_bounds.value.rule == "privacy.bounds_required"
