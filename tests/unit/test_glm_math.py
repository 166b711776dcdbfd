"""GLM's node releases and server iteration, in-process, against statsmodels on pooled rows.

A small in-memory grid hands each message to the node handler of one
partition, so the server's IRLS loop runs exactly as it does on the network,
minus the processes (those are in tests/integration/test_glm.py).
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterable

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
import statsmodels.formula.api as smf
from flwr.app import Message
from pydantic import ValidationError

from oncofed.client.demo import lung_centres
from oncofed.kernel.errors import NodeRefusal, OncofedError, QueryError, TaskFailed
from oncofed.kernel.flower import (
    error_reply,
    install_process_identity,
    params_content,
    params_json,
    stamp,
)
from oncofed.kernel.schema import infer_schema
from oncofed.node.request import decode_request
from oncofed.privacy.gate import check_release
from oncofed.privacy.policy import NodePolicy
from oncofed.privacy.release import Kind
from oncofed.tasks.base import LocalDataset
from oncofed.tasks.filters import parse_filter
from oncofed.tasks.formula import parse_formula
from oncofed.tasks.glm import (
    TASK,
    GLMDesignRelease,
    GLMParams,
    GLMResult,
    GLMStartRelease,
    GLMStepRelease,
    glm_node,
    glm_serve,
)
from tests.oracle import PERMISSIVE

FAMILIES = {
    "gaussian": sm.families.Gaussian(),
    "binomial": sm.families.Binomial(),
    "poisson": sm.families.Poisson(),
}


class MemoryGrid:
    """The two Grid calls the task uses, answered by node handlers in this process.

    Each handler's release passes the release gate, as in the node's runtime.
    """

    def __init__(self, parts: dict[str, pd.DataFrame], policy: NodePolicy | None = None) -> None:
        install_process_identity()
        schema = infer_schema(pd.concat(list(parts.values())))
        self.locals = {
            i + 1: LocalDataset(
                name, "d", schema, part.reset_index(drop=True), policy or PERMISSIVE
            )
            for i, (name, part) in enumerate(parts.items())
        }
        self.ids = itertools.count()
        self.round_trips = 0

    def get_node_ids(self) -> Iterable[int]:
        return list(self.locals)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> list[Message]:
        self.round_trips += 1
        replies = []
        for message in messages:
            stamp(message, run_id=1, message_id=f"m{next(self.ids)}")
            local = self.locals[message.metadata.dst_node_id]
            try:
                params = GLMParams.model_validate_json(params_json(message))
                release = check_release(
                    glm_node(params, local), TASK.releases, task="glm", node=local.node_name
                )
                reply = Message(release.to_content(local.node_name), reply_to=message)
            except OncofedError as exc:
                reply = error_reply(message, exc)
            reply.metadata.__dict__["_src_node_id"] = message.metadata.dst_node_id
            replies.append(reply)
        return replies


def fit(
    frame: pd.DataFrame,
    formula: str,
    family: str,
    where: str | None = None,
    split: str = "centre",
    **options: object,
) -> tuple[GLMResult, MemoryGrid]:
    grid = MemoryGrid({str(k): v for k, v in frame.groupby(split)})
    params = GLMParams(
        dataset="d",
        formula=parse_formula(formula),
        family=family,  # type: ignore[arg-type]
        where=parse_filter(where) if where else None,
        **options,  # type: ignore[arg-type]
    )
    return glm_serve(grid, params), grid  # type: ignore[arg-type]


def patsy_name(name: str) -> str:
    """statsmodels' coefficient name as oncofed writes it (no Q(), integer levels)."""
    return re.sub(r"Q\('([^']*)'\)", r"\1", name).replace(".0]", "]")


def worst_relative_error(result: GLMResult, oracle: object) -> float:
    def aligned(values: pd.Series | pd.DataFrame) -> np.ndarray:
        return values.rename(index=patsy_name).loc[result.names].to_numpy(dtype=float)

    pairs = [
        (result.params.to_numpy(), aligned(oracle.params)),  # type: ignore[attr-defined]
        (result.bse.to_numpy(), aligned(oracle.bse)),  # type: ignore[attr-defined]
        (result.pvalues.to_numpy(), aligned(oracle.pvalues)),  # type: ignore[attr-defined]
        (result.conf_int().to_numpy(), aligned(oracle.conf_int())),  # type: ignore[attr-defined]
    ]
    for name in ("deviance", "null_deviance", "pearson_chi2", "scale", "llf", "aic"):
        pairs.append((np.array([getattr(result, name)]), np.array([getattr(oracle, name)])))
    pairs.append((np.array([result.bic]), np.array([oracle.bic_llf])))  # type: ignore[attr-defined]
    return max(float(np.max(np.abs(a - b) / np.abs(b))) for a, b in pairs)


@pytest.fixture(scope="module")
def lung() -> pd.DataFrame:
    return lung_centres(4)


CASES = [
    (
        "status ~ age + C(sex, levels=[1, 2]) + ph.karno",
        "status ~ age + C(sex) + Q('ph.karno')",
        "binomial",
        None,
    ),
    (
        "ph.ecog ~ age + C(sex, levels=[1, 2]) + wt.loss",
        "Q('ph.ecog') ~ age + C(sex) + Q('wt.loss')",
        "poisson",
        None,
    ),
    (
        "np.log(time) ~ age*C(sex, levels=[1, 2]) + wt.loss",
        "np.log(time) ~ age*C(sex) + Q('wt.loss')",
        "gaussian",
        "age >= 50",
    ),
    (
        "status ~ C(ph.ecog, levels=[0, 1, 2]) + np.log(meal.cal) - 1",
        "status ~ C(Q('ph.ecog')) + np.log(Q('meal.cal')) - 1",
        "binomial",
        "ph.ecog <= 2",
    ),
]


@pytest.mark.parametrize(("ours", "theirs", "family", "where"), CASES)
def test_federated_irls_equals_statsmodels_on_pooled_rows(
    lung: pd.DataFrame, ours: str, theirs: str, family: str, where: str | None
) -> None:
    result, grid = fit(lung, ours, family, where)
    pooled = lung.query("age >= 50") if where == "age >= 50" else lung
    pooled = pooled[pooled["ph.ecog"] <= 2] if where == "ph.ecog <= 2" else pooled
    oracle = smf.glm(theirs, data=pooled, family=FAMILIES[family]).fit()
    assert worst_relative_error(result, oracle) < 1e-9
    assert (result.nobs, result.df_model, result.df_resid) == (
        oracle.nobs,
        oracle.df_model,
        oracle.df_resid,
    )
    # Same path as statsmodels' IRLS; the identity link is one exact solve (statsmodels
    # counts 3 there because it compares scaled deviances).
    assert result.iterations == (1 if family == "gaussian" else oracle.fit_history["iteration"])
    extra = 1 if family != "binomial" else 0  # the pooled mean that starting_mu needs
    assert grid.round_trips == result.round_trips == result.iterations + 1 + extra
    assert sum(result.rows_used.values()) == oracle.nobs
    assert sum(result.rows_dropped.values()) == len(pooled) - oracle.nobs


def test_node_releases_only_sums_and_cross_products(lung: pd.DataFrame) -> None:
    part = lung[lung["centre"] == "centre-A"].reset_index(drop=True)
    local = LocalDataset("centre-A", "d", infer_schema(lung), part)
    formula = parse_formula("status ~ age + C(sex, levels=[1, 2]) + ph.karno")
    first = glm_node(GLMParams(dataset="d", formula=formula, family="binomial"), local)
    # binomial starts at (y + 0.5) / 2, needing no pooled mean: the first round is a step.
    assert type(first) is GLMStartRelease
    complete = part.dropna(subset=["status", "age", "sex", "ph.karno"])
    x = np.column_stack(
        [np.ones(len(complete)), complete["age"], complete["sex"] == 2, complete["ph.karno"]]
    ).astype(float)
    y = complete["status"].to_numpy(float)
    assert first.n == len(complete)
    np.testing.assert_allclose(first.xtx, x.T @ x, rtol=1e-14)
    # statsmodels' binomial start mu = (y + 0.5) / 2 gives the constant weight 3/16.
    np.testing.assert_allclose(first.xtwx, 0.1875 * x.T @ x, rtol=1e-14)
    np.testing.assert_allclose(first.sum_y, y.sum())
    numbers = {key: (kind, values) for key, kind, values in first.numbers()}
    assert max(values.size for _, values in numbers.values()) == 16  # nothing row-sized leaves
    assert first.null_deviance.size == 0  # the pooled mean is not known yet
    # Counts are counts; everything else is a statistic of the model being fitted.
    assert {key for key, (kind, _) in numbers.items() if kind is Kind.COUNT} == {
        "n",
        "rows_dropped",
    }
    assert {kind for kind, _ in numbers.values()} == {Kind.COUNT, Kind.MODEL_STATISTIC}
    assert first.rows_dropped == len(part) - len(complete)
    assert first.names == ("Intercept", "age", "C(sex)[T.2]", "ph.karno")
    wire = GLMStartRelease.from_content(first.to_content("centre-A"))
    np.testing.assert_array_equal(wire.xtwx, first.xtwx)
    assert wire.names == first.names and wire.n == first.n
    later = GLMParams(
        dataset="d",
        formula=formula,
        family="binomial",
        coefficients=(0.1, -0.01, -0.5, -0.01),
        response_mean=0.7,
    )
    step = glm_node(later, local)
    assert type(step) is GLMStepRelease  # no X'X once there are coefficients
    mu = 1 / (1 + np.exp(-(x @ np.array([0.1, -0.01, -0.5, -0.01]))))
    w = mu * (1 - mu)
    np.testing.assert_allclose(step.xtwx, (x * w[:, None]).T @ x, rtol=1e-12)
    deviance = -2 * np.sum(y * np.log(mu) + (1 - y) * np.log(1 - mu))
    np.testing.assert_allclose(step.deviance, deviance, rtol=1e-12)
    np.testing.assert_allclose(step.loglike, [-deviance / 2], rtol=1e-12)  # 0/1 response
    null = -2 * np.sum(y * np.log(0.7) + (1 - y) * np.log(0.3))
    np.testing.assert_allclose(step.null_deviance, [null], rtol=1e-12)


def test_gaussian_and_poisson_pool_the_mean_before_any_weighted_sum(lung: pd.DataFrame) -> None:
    part = lung[lung["centre"] == "centre-A"].reset_index(drop=True)
    local = LocalDataset("centre-A", "d", infer_schema(lung), part)
    formula = parse_formula("np.log(time) ~ age + wt.loss")
    first = glm_node(GLMParams(dataset="d", formula=formula), local)
    assert type(first) is GLMDesignRelease
    assert {key for key, _, _ in first.numbers()} == {"rows_dropped", "n", "sum_y", "xtx"}
    start = glm_node(GLMParams(dataset="d", formula=formula, response_mean=5.5), local)
    assert type(start) is GLMStartRelease
    assert start.loglike.size == 0  # gaussian: the log-likelihood needs the pooled scale
    complete = part.dropna(subset=["time", "age", "wt.loss"])
    y = np.log(complete["time"].to_numpy(float))
    np.testing.assert_allclose(start.null_deviance, [np.sum((y - 5.5) ** 2)], rtol=1e-12)


def test_response_outside_the_family_domain_is_refused_by_the_node(lung: pd.DataFrame) -> None:
    with pytest.raises(QueryError) as binomial:
        fit(lung, "sex ~ age", "binomial")
    assert binomial.value.rule == "glm.response_domain"
    assert binomial.value.node == "centre-A, centre-B, centre-C, centre-D"
    with pytest.raises(QueryError) as poisson:
        fit(lung, "wt.loss ~ age", "poisson")  # weight loss can be negative
    assert poisson.value.rule == "glm.response_domain"


def test_perfect_separation_is_a_typed_failure_naming_the_term() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=300)
    frame = pd.DataFrame(
        {
            "x": x,
            "z": rng.normal(size=300),
            "y": (x > 0).astype(int),
            "centre": rng.choice(list("pqr"), 300),
        }
    )
    with pytest.raises(TaskFailed) as caught:
        fit(frame, "y ~ x + z", "binomial")
    assert caught.value.rule == "glm.separation"
    assert "x" in caught.value.context["terms"]
    assert caught.value.node == "p, q, r"


def test_quasi_separation_in_one_level_names_that_level() -> None:
    rng = np.random.default_rng(4)
    frame = pd.DataFrame(
        {
            "g": rng.choice(list("abc"), 400),
            "z": rng.normal(size=400),
            "centre": rng.choice(list("pq"), 400),
        }
    )
    frame["y"] = (rng.random(400) < 0.4).astype(int)
    frame.loc[frame["g"] == "c", "y"] = 1
    with pytest.raises(TaskFailed) as binomial:
        fit(frame, "y ~ C(g) + z", "binomial")
    assert binomial.value.rule == "glm.separation"
    assert binomial.value.context["terms"] == ["C(g)[T.c]"]
    counts = frame.assign(k=rng.poisson(2, 400))
    counts.loc[counts["g"] == "b", "k"] = 0
    with pytest.raises(TaskFailed) as poisson:
        fit(counts, "k ~ C(g) + z", "poisson")
    assert poisson.value.rule == "glm.separation"
    assert poisson.value.context["terms"] == ["C(g)[T.b]"]


def test_a_strong_but_finite_effect_is_not_mistaken_for_separation() -> None:
    rng = np.random.default_rng(5)
    frame = pd.DataFrame({"x": rng.normal(size=4000), "centre": rng.choice(list("pq"), 4000)})
    frame["y"] = (rng.random(4000) < 1 / (1 + np.exp(-8 * frame["x"]))).astype(int)
    result, _ = fit(frame, "y ~ x", "binomial")
    oracle = smf.glm("y ~ x", frame, family=sm.families.Binomial()).fit()
    assert worst_relative_error(result, oracle) < 1e-9


def test_collinear_and_empty_design_columns_are_named(lung: pd.DataFrame) -> None:
    with pytest.raises(QueryError) as empty:
        fit(lung, "status ~ age + C(sex, levels=[1, 2, 3])", "binomial")
    assert empty.value.rule == "glm.empty_column"
    assert "C(sex)[T.3]" in str(empty.value)
    doubled = lung.assign(age2=2 * lung["age"] + 1)
    with pytest.raises(QueryError) as collinear:
        fit(doubled, "status ~ age + age2 + ph.karno", "binomial")
    assert collinear.value.rule == "glm.collinear"
    assert "age, age2" in str(collinear.value) and "ph.karno" not in str(collinear.value)


def test_iteration_cap_is_a_typed_failure(lung: pd.DataFrame) -> None:
    with pytest.raises(TaskFailed) as caught:
        fit(lung, "status ~ age + ph.karno", "binomial", max_iter=2)
    assert caught.value.rule == "glm.not_converged"
    assert "2 iterations" in str(caught.value)


def test_node_refuses_a_nearly_saturated_model(lung: pd.DataFrame) -> None:
    part = lung[lung["centre"] == "centre-C"].head(8)
    local = LocalDataset("centre-C", "d", infer_schema(lung), part, PERMISSIVE)
    params = GLMParams(dataset="d", formula=parse_formula("status ~ age + sex + ph.karno"))
    with pytest.raises(NodeRefusal) as caught:
        glm_node(params, local)  # 4 coefficients > 0.33 * 8 rows
    assert caught.value.rule == "privacy.model_saturation" and caught.value.node == "centre-C"
    relaxed = LocalDataset(
        "centre-C",
        "d",
        infer_schema(lung),
        part,
        PERMISSIVE.model_copy(update={"max_model_saturation": 0.5}),
    )
    assert glm_node(params, relaxed).n == 8


def test_node_refuses_coefficients_that_single_out_a_few_patients(lung: pd.DataFrame) -> None:
    """A coordinator could send coefficients whose weights vanish on all rows but a few."""
    part = lung[lung["centre"] == "centre-A"].reset_index(drop=True)
    local = LocalDataset("centre-A", "d", infer_schema(lung), part, NodePolicy())
    formula = parse_formula("status ~ age")
    oldest = float(part["age"].max())
    # eta = 40 * (age - oldest + 0.5): zero weight everywhere but at the oldest patients.
    probing = GLMParams(
        dataset="d",
        formula=formula,
        family="binomial",
        coefficients=(-40.0 * (oldest - 0.5), 40.0),
        response_mean=0.5,
    )
    with pytest.raises(NodeRefusal) as caught:
        glm_node(probing, local)
    assert caught.value.rule == "privacy.weight_concentration"
    assert str(int(oldest)) not in str(caught.value)
    fitted = GLMParams(
        dataset="d",
        formula=formula,
        family="binomial",
        coefficients=(-1.0, 0.03),
        response_mean=0.7,
    )
    release = glm_node(fitted, local)
    assert isinstance(release, GLMStepRelease) and release.xtwx.shape == (2, 2)


def test_forged_parameters_are_refused_at_the_node_before_any_row_is_read() -> None:
    install_process_identity()
    formula = parse_formula("status ~ np.log(age)").model_dump(mode="json")
    formula["terms"][0]["factors"][0]["transform"] = "system"
    message = Message(
        params_content(
            json.dumps({"dataset": "lung", "formula": formula, "family": "binomial"}),
            participants=3,
        ),
        1,
        "query.glm",
    )
    with pytest.raises(QueryError) as caught:
        decode_request(message, "centre-A")
    assert caught.value.rule == "task.params" and caught.value.node == "centre-A"
    with pytest.raises(ValidationError) as no_response:
        GLMParams(dataset="d", formula=parse_formula("~ age", needs_response=False))
    assert "response" in str(no_response.value)


def test_result_tables_read_like_statsmodels(lung: pd.DataFrame) -> None:
    result, _ = fit(lung, "status ~ age + C(sex, levels=[1, 2])", "binomial")
    table = result.to_frame()
    assert list(table.columns) == ["coef", "std err", "z", "P>|z|", "[0.025", "0.975]"]
    assert list(table.index) == ["Intercept", "age", "C(sex)[T.2]"]
    text = result.summary()
    trips = f"{result.round_trips} round trips"
    for needle in ("Binomial", "Logit", "No. Observations:", "C(sex)[T.2]", "AIC:", trips):
        assert needle in text
    assert GLMResult.model_validate_json(result.model_dump_json()) == result
    np.testing.assert_allclose(
        result.conf_int(0.1)[1] - result.params, 1.6448536269514722 * result.bse
    )
