"""DP GLMs through a real network: near statsmodels, noisy, and charged exactly what was asked.

The oracle is statsmodels on the pooled rows. A DP fit differs from it by the
noise the nodes added, whose size the fit states in its standard errors
(sampling and noise together): every coefficient must lie within six of
them of statsmodels' -- a bound a correct fit breaks with probability about
2e-9 per coefficient -- and must not equal it (noise was added). The
ledger at every node must hold, over the whole fit, the epsilon the request
allowed and no more.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
import statsmodels.formula.api as smf

from oncofed.client.sandbox import Sandbox
from oncofed.kernel.errors import OncofedError
from oncofed.kernel.schema import DatasetSchema, infer_schema
from oncofed.privacy.policy import DatasetPrivacy, NodePolicy
from oncofed.tasks.glm import GLMResult

pytestmark = pytest.mark.slow

DP = {"epsilon": 1.0, "delta": 1e-6}
BOUNDS = {"age": (18.0, 100.0), "albumin": (10.0, 60.0), "score": (0.0, 100.0)}
COVARIATES = "age + C(sex, levels=[0, 1]) + C(stage, levels=['I', 'II', 'III']) + albumin"
POLICY = NodePolicy(
    dp={"cohort": DatasetPrivacy(epsilon=1.0, delta=1e-6, researcher_epsilon=100.0)}
)


def _cohort(rows: int = 6000, seed: int = 5) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "age": np.clip(rng.normal(64, 10, rows), 20, 95).round(),
            "sex": rng.integers(0, 2, rows),
            "stage": rng.choice(["I", "II", "III"], rows, p=[0.4, 0.35, 0.25]),
            "albumin": np.clip(rng.normal(38, 5, rows), 15, 55).round(1),
            "centre": rng.choice(["north", "south", "east"], rows),
        }
    )
    risk = (
        0.03 * (frame["age"] - 64)
        + 0.4 * frame["sex"]
        + frame["stage"].map({"I": 0.0, "II": 0.6, "III": 1.4})
        - 0.05 * (frame["albumin"] - 38)
    )
    frame["score"] = np.clip(50 + 5 * risk + rng.normal(0, 4, rows), 0, 100)
    frame["response"] = (rng.random(rows) < 1 / (1 + np.exp(0.5 - risk))).astype(int)
    frame.loc[rng.random(rows) < 0.02, "albumin"] = np.nan  # complete cases, as statsmodels
    return frame


@pytest.fixture(scope="module")
def cohort() -> pd.DataFrame:
    return _cohort()


@pytest.fixture(scope="module")
def dp_glm_net(cohort: pd.DataFrame) -> Iterator[Sandbox]:
    inferred = infer_schema(cohort)
    schema = DatasetSchema(
        columns={
            name: spec.model_copy(update={"bounds": BOUNDS[name]}) if name in BOUNDS else spec
            for name, spec in inferred.columns.items()
        }
    )
    with Sandbox.from_frame(
        cohort, split_by="centre", dataset="cohort", schema=schema, policy=POLICY
    ) as net:
        yield net


def _charged(net: Sandbox, node: str, permit: str) -> dict[str, Any]:
    """`oncofed node budget --json`, as the node's operator reads it."""
    run = subprocess.run(
        [sys.executable, "-m", "oncofed", "node", "budget", str(net.node_config(node)), "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    rows: list[dict[str, Any]] = [
        json.loads(line) for line in run.stdout.splitlines() if line.strip()
    ]
    (row,) = [r for r in rows if r["permit"] == permit]
    return row


def _within_stated_noise(
    result: GLMResult, pooled: pd.DataFrame, formula: str, family: Any
) -> None:
    oracle = smf.glm(formula, data=pooled, family=family).fit()
    exact = oracle.params.loc[result.names].to_numpy()
    got = result.params.to_numpy()
    assert np.all(np.abs(got - exact) <= 6 * result.bse.to_numpy()), (got, exact, result.bse)
    assert not np.allclose(got, exact, rtol=1e-9, atol=0), "a DP fit must carry noise"
    # The stated errors include the noise: wider than the exact fit's.
    assert np.all(result.bse.to_numpy() > oracle.bse.loc[result.names].to_numpy())


def _ledger_holds_the_request(net: Sandbox, permit: str, releases: int) -> None:
    for node in net.node_names:
        row = _charged(net, node, permit)
        assert row["releases"] == releases, row
        # The request's epsilon is the whole fit, and the permit's budget is that epsilon:
        # the fit spends all of it and not a bit more.
        assert row["spent_epsilon"] == pytest.approx(DP["epsilon"], rel=1e-6), row


def test_dp_gaussian_glm_is_near_statsmodels_and_charges_one_release(
    dp_glm_net: Sandbox, cohort: pd.DataFrame
) -> None:
    with dp_glm_net.session(progress=False, permit="dp-gaussian") as s:
        result = s.run("glm", formula=f"score ~ {COVARIATES}", family="gaussian", dp=DP)
    assert isinstance(result, GLMResult) and result.privacy is not None
    assert result.privacy.epsilon == pytest.approx(dict.fromkeys(dp_glm_net.node_names, 1.0))
    # Three blocks of sum v v', each with its own noise: X'X (with the count), X'y, y'y.
    noise = result.privacy.noise_std
    assert set(noise) == {"moments.xx", "moments.xy", "moments.yy"} and result.rows_dropped == {}
    assert noise["moments.xy"] < noise["moments.xx"]  # X'y is what the coefficients need most
    complete = cohort.dropna(subset=["albumin"])
    assert abs(result.nobs - len(complete)) <= 6 * noise["moments.xx"]
    _within_stated_noise(
        result, complete, "score ~ age + C(sex) + C(stage) + albumin", sm.families.Gaussian()
    )
    assert "Differentially private" in result.summary()
    _ledger_holds_the_request(dp_glm_net, "dp-gaussian", releases=1)


def test_dp_binomial_glm_pays_each_newton_step_its_share(
    dp_glm_net: Sandbox, cohort: pd.DataFrame
) -> None:
    steps = 10
    with dp_glm_net.session(progress=False, permit="dp-binomial") as s:
        result = s.run(
            "glm", formula=f"response ~ {COVARIATES}", family="binomial", dp=DP, max_iter=steps
        )
        assert isinstance(result, GLMResult) and result.privacy is not None
        assert result.iterations == steps and result.deviance is None
        # Composed over the steps, the whole fit cost the request's epsilon at each node.
        assert result.privacy.epsilon == pytest.approx(
            dict.fromkeys(dp_glm_net.node_names, 1.0), rel=1e-6
        )
        _within_stated_noise(
            result,
            cohort.dropna(subset=["albumin"]),
            "response ~ age + C(sex) + C(stage) + albumin",
            sm.families.Binomial(),
        )
        _ledger_holds_the_request(dp_glm_net, "dp-binomial", releases=steps)
        # The permit's budget is spent: one more step (or fit) is refused, not answered.
        with pytest.raises(OncofedError) as caught:
            s.run("glm", formula=f"response ~ {COVARIATES}", family="binomial", dp=DP, max_iter=2)
        assert caught.value.rule == "privacy.budget"


def test_dp_glm_refuses_terms_it_cannot_bound(dp_glm_net: Sandbox) -> None:
    with dp_glm_net.session(progress=False, permit="dp-refusals") as s:
        # sex has no bounds in the schema: as a number it cannot be clamped.
        with pytest.raises(OncofedError) as unbounded:
            s.run("glm", formula="score ~ age + sex", family="gaussian", dp=DP)
        # score's bounds start at 0, where np.log has no finite value.
        with pytest.raises(OncofedError) as no_range:
            s.run("glm", formula="np.log(score) ~ age", family="gaussian", dp=DP)
        # Under dp, max_iter is what the researcher pays for: more than 20 steps are
        # refused on the researcher's machine, before anything is signed.
        with pytest.raises(OncofedError) as steps:
            s.run(
                "glm",
                formula=f"response ~ {COVARIATES}",
                family="binomial",
                dp=DP,
                max_iter=50,
            )
    assert (unbounded.value.rule, unbounded.value.context.get("column")) == (
        "privacy.bounds_required",
        "sex",
    )
    assert no_range.value.rule == "privacy.dp_term"
    assert steps.value.rule == "task.params" and "max_iter" in str(steps.value)
    for node in dp_glm_net.node_names:  # refused requests cost nothing
        rows = [
            json.loads(line)
            for line in subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "oncofed",
                    "node",
                    "budget",
                    str(dp_glm_net.node_config(node)),
                    "--json",
                ],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.splitlines()
            if line.strip()
        ]
        assert "dp-refusals" not in {r["permit"] for r in rows}


# ---- the sensitivities a DP GLM claims, checked by brute force -------------------

SENSITIVITY_FORMULA = (
    "{y} ~ age + C(sex, levels=[0, 1]) + C(stage, levels=['I', 'II', 'III', 'IV']) + albumin"
    " + age:albumin"
)
SENSITIVITY_BOUNDS = {**BOUNDS, "visits": (0.0, 15.0)}


def _adversarial_rows() -> pd.DataFrame:
    """Rows at (and beyond) every corner of the public bounds, in every level combination."""
    rows = []
    for age in (18.0, 100.0, 59.0, -1e6, 1e6):
        for albumin in (10.0, 60.0, 1e6):
            for sex in (0, 1):
                for stage in ("I", "II", "III", "IV"):
                    for score, response, visits in ((0.0, 0, 0.0), (100.0, 1, 15.0), (1e9, 1, 1e9)):
                        rows.append(
                            {
                                "age": age,
                                "albumin": albumin,
                                "sex": sex,
                                "stage": stage,
                                "score": score,
                                "response": response,
                                "visits": visits,
                            }
                        )
    return pd.DataFrame(rows)


def _sensitivity_local(frame: pd.DataFrame) -> Any:
    from oncofed.tasks.base import LocalDataset

    inferred = infer_schema(pd.concat([frame, _adversarial_rows()], ignore_index=True))
    schema = DatasetSchema(
        columns={
            name: spec.model_copy(update={"bounds": SENSITIVITY_BOUNDS[name]})
            if name in SENSITIVITY_BOUNDS
            else spec
            for name, spec in inferred.columns.items()
        }
    )
    return lambda rows: LocalDataset("north", "cohort", schema, rows.reset_index(drop=True))


@pytest.mark.parametrize(
    ("family", "response", "coefficients"),
    [
        ("gaussian", "score", None),
        ("binomial", "response", None),
        ("binomial", "response", (-3.0, 0.05, 2.0, -1.0, 0.5, 3.0, -0.1, 0.001)),
        ("poisson", "visits", None),
        ("poisson", "visits", (5.0, 0.1, 1.0, 1.0, 1.0, 1.0, 0.1, 0.001)),
        ("poisson", "visits", (-5.0, -0.1, -1.0, 0.0, 0.0, 0.0, -0.1, 0.0)),
    ],
)
def test_one_row_moves_each_dp_glm_sum_by_at_most_its_stated_sensitivity(
    cohort: pd.DataFrame, family: str, response: str, coefficients: tuple[float, ...] | None
) -> None:
    """Add any adversarial row to a node's rows: every released sum moves by at most the
    L2 bound the release is noised for -- and, for the gaussian blocks, some row reaches
    it, so the bound is the exact one the coding claims, not a loose one."""
    from oncofed.privacy.dp import DPRequest
    from oncofed.tasks.glm import GLMParams, _dp_sums

    base = cohort.assign(visits=np.minimum(np.arange(len(cohort)) % 7, 15)).head(300)
    local = _sensitivity_local(base)
    params = GLMParams(
        dataset="cohort",
        formula=SENSITIVITY_FORMULA.format(y=response),
        family=family,
        dp=DPRequest(**DP),
        coefficients=coefficients,
    )
    before = _dp_sums(params, local(base))
    assert before.rows == len(base.dropna(subset=["albumin"]))
    reached = dict.fromkeys(before.sums, 0.0)
    for _, row in _adversarial_rows().iterrows():
        after = _dp_sums(params, local(pd.concat([base, row.to_frame().T], ignore_index=True)))
        assert after.rows == before.rows + 1
        assert after.bounds == before.bounds  # from public bounds and levels only
        for name, values in after.sums.items():
            moved = float(np.linalg.norm(values - before.sums[name]))
            assert moved <= before.bounds[name] * (1 + 1e-9), (name, row.to_dict(), moved)
            reached[name] = max(reached[name], moved)
    if family == "gaussian":
        for name, most in reached.items():
            assert most == pytest.approx(before.bounds[name], rel=1e-9), name
        # The level-aware coding beats treating every one of the m = 9 entries as +-1:
        # sqrt(m (m + 1) / 2) = 6.7 for the whole triangle, sqrt(m - 1) for X'y.
        assert before.bounds["xy"] < math.sqrt(8) and before.bounds["xx"] < math.sqrt(36)


def test_a_row_beyond_the_coding_bound_is_scaled_down_before_summing(
    cohort: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bound is enforced on every row, not only argued: claim half of it and no row
    moves a sum by more than that half."""
    from oncofed.privacy.dp import DPRequest
    from oncofed.tasks import glm

    base = cohort.head(200)
    local = _sensitivity_local(base)
    params = glm.GLMParams(
        dataset="cohort",
        formula=SENSITIVITY_FORMULA.format(y="score"),
        family="gaussian",
        dp=DPRequest(**DP),
    )
    proved = glm._largest_share
    monkeypatch.setattr(glm, "_largest_share", lambda rows, mask: proved(rows, mask) / 2.0)
    before = glm._dp_sums(params, local(base))
    worst = _adversarial_rows().iloc[[0, 57, 130, 301]]
    for _, row in worst.iterrows():
        after = glm._dp_sums(params, local(pd.concat([base, row.to_frame().T], ignore_index=True)))
        for name, values in after.sums.items():
            moved = float(np.linalg.norm(values - before.sums[name]))
            assert moved <= before.bounds[name] * (1 + 1e-9)


def test_dp_newton_step_shares_add_to_the_fit_and_grow() -> None:
    from oncofed.tasks.glm import DP_MAX_STEPS, dp_step_share

    for steps in range(1, DP_MAX_STEPS + 1):
        shares = [dp_step_share(k, steps) for k in range(1, steps + 1)]
        assert sum(shares) == pytest.approx(1.0, rel=1e-12)
        assert shares == sorted(shares)
