"""glm through real processes and gRPC, against statsmodels on the pooled data."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from io import StringIO

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
import statsmodels.formula.api as smf

from oncofed.client.sandbox import Sandbox
from oncofed.governance.audit import AuditTrail
from oncofed.kernel.errors import ExitCode, NodeRefusal, QueryError, TaskFailed
from oncofed.tasks.glm import GLMResult

FAMILIES = {
    "gaussian": sm.families.Gaussian(),
    "binomial": sm.families.Binomial(),
    "poisson": sm.families.Poisson(),
}
REL = 1e-6


def patsy_name(name: str) -> str:
    """statsmodels' coefficient name as oncofed writes it (no Q(), integer levels)."""
    return re.sub(r"Q\('([^']*)'\)", r"\1", name).replace(".0]", "]")


def assert_matches_statsmodels(
    result: GLMResult, pooled: pd.DataFrame, formula: str, family: str
) -> float:
    """Every reported number equals statsmodels' GLM on the pooled rows; returns the worst error."""
    oracle = smf.glm(formula, data=pooled, family=FAMILIES[family]).fit()

    def aligned(values: pd.Series | pd.DataFrame) -> np.ndarray:
        renamed = values.rename(index=patsy_name)
        assert sorted(renamed.index) == sorted(result.names)
        return renamed.loc[result.names].to_numpy(dtype=float)

    pairs = {
        "params": (result.params.to_numpy(), aligned(oracle.params)),
        "bse": (result.bse.to_numpy(), aligned(oracle.bse)),
        "z": (result.tvalues.to_numpy(), aligned(oracle.tvalues)),
        "pvalues": (result.pvalues.to_numpy(), aligned(oracle.pvalues)),
        "conf_int": (result.conf_int().to_numpy(), aligned(oracle.conf_int())),
    }
    for name in ("deviance", "null_deviance", "pearson_chi2", "scale", "llf", "aic"):
        pairs[name] = (np.array([getattr(result, name)]), np.array([getattr(oracle, name)]))
    worst = 0.0
    for name, (ours, theirs) in pairs.items():
        np.testing.assert_allclose(ours, theirs, rtol=REL, err_msg=name)
        worst = max(worst, float(np.max(np.abs(ours - theirs) / np.abs(theirs))))
    assert (result.nobs, result.df_model, result.df_resid) == (
        oracle.nobs,
        oracle.df_model,
        oracle.df_resid,
    )
    assert result.converged
    if family != "gaussian":  # statsmodels counts 3 for one exact gaussian solve
        assert result.iterations == oracle.fit_history["iteration"]
    return worst


def expected_dropped(frame: pd.DataFrame, columns: list[str], split: str) -> dict[str, int]:
    return {
        str(centre): int(part[columns].isna().any(axis=1).sum())
        for centre, part in frame.groupby(split)
    }


# ---- lung: 4 centres, the session-wide network -------------------------------


def test_binomial_lung_equals_statsmodels(lung_net: Sandbox, lung: pd.DataFrame) -> None:
    with lung_net.session(progress=False) as session:
        result = session.glm(
            "status ~ age + C(sex, levels=[1, 2]) + ph.karno", "binomial", min_nodes=4
        )
    assert_matches_statsmodels(result, lung, "status ~ age + C(sex) + Q('ph.karno')", "binomial")
    assert result.names == ["Intercept", "age", "C(sex)[T.2]", "ph.karno"]
    assert sorted(result.nodes) == sorted(lung_net.node_names)
    assert result.rows_dropped == expected_dropped(lung, ["ph.karno"], "centre")
    # Binomial starts from the response alone: one round per iteration plus the start.
    assert result.round_trips == result.iterations + 1


def test_poisson_lung_equals_statsmodels(lung_net: Sandbox, lung: pd.DataFrame) -> None:
    with lung_net.session(progress=False) as session:
        result = session.glm("ph.ecog ~ age + C(sex, levels=[1, 2]) + wt.loss", "poisson")
    assert_matches_statsmodels(
        result, lung, "Q('ph.ecog') ~ age + C(sex) + Q('wt.loss')", "poisson"
    )
    assert result.rows_dropped == expected_dropped(lung, ["ph.ecog", "wt.loss"], "centre")
    assert result.round_trips == result.iterations + 2  # + the pooled mean for the start


def test_gaussian_lung_with_where_equals_statsmodels_on_the_filtered_rows(
    lung_net: Sandbox, lung: pd.DataFrame
) -> None:
    where = "age >= 60 and ph.ecog is not null"
    with lung_net.session(progress=False) as session:
        result = session.glm(
            "np.log(time) ~ age + C(sex, levels=[1,2]) + wt.loss", "gaussian", where=where
        )
    kept = lung[(lung["age"] >= 60) & lung["ph.ecog"].notna()]
    assert_matches_statsmodels(
        result, kept, "np.log(time) ~ age + C(sex) + Q('wt.loss')", "gaussian"
    )
    assert result.iterations == 1 and result.scale == pytest.approx(
        result.deviance / result.df_resid
    )
    assert result.rows_dropped == expected_dropped(kept, ["wt.loss"], "centre")


def test_unknown_column_is_refused_by_every_node(lung_net: Sandbox) -> None:
    with lung_net.session(progress=False) as session, pytest.raises(QueryError) as caught:
        session.glm("status ~ age + tumour_size", "binomial")
    assert caught.value.rule == "schema.unknown_column"
    assert "tumour_size" in str(caught.value)
    refusals = caught.value.context["errors"]
    assert sorted(r["node"] for r in refusals) == sorted(lung_net.node_names)


def test_forbidden_function_fails_before_anything_is_sent(lung_net: Sandbox) -> None:
    with lung_net.session(progress=False) as session:
        with pytest.raises(QueryError) as caught:
            session.glm("status ~ os.system(age)", "binomial")
        assert caught.value.rule == "query.formula_function"
        assert caught.value.node == ""  # never left the researcher's machine
        # A hand-made request with a transform outside the allow-list is refused too.
        forged = {
            "dataset": "lung",
            "family": "binomial",
            "formula": {
                "response": {"column": "status"},
                "terms": [{"factors": [{"column": "age", "transform": "system"}]}],
            },
        }
        with pytest.raises(QueryError) as refused:
            session.submit("glm", **forged)
        assert refused.value.rule == "task.params"


def test_non_binary_binomial_response_is_refused_by_each_node(lung_net: Sandbox) -> None:
    with lung_net.session(progress=False) as session, pytest.raises(QueryError) as caught:
        session.glm("sex ~ age + ph.karno", "binomial")  # sex is coded 1/2
    assert caught.value.rule == "glm.response_domain"
    assert caught.value.node == ", ".join(sorted(lung_net.node_names))
    assert caught.value.context["column"] == "sex"


def test_level_absent_at_every_node_is_named(lung_net: Sandbox) -> None:
    with lung_net.session(progress=False) as session, pytest.raises(QueryError) as caught:
        session.glm("status ~ age + C(sex, levels=[1, 2, 3])", "binomial")
    assert caught.value.rule == "glm.empty_column"
    assert "C(sex)[T.3]" in str(caught.value)


def test_nodes_refuse_a_model_nearly_saturated_on_their_rows(
    lung_net: Sandbox, lung: pd.DataFrame
) -> None:
    where = "age >= 70"
    used = ["status", "age", "sex", "ph.karno", "wt.loss"]
    rows = lung[lung["age"] >= 70].dropna(subset=used).groupby("centre").size()
    refusing = sorted(str(c) for c, n in rows.items() if n > 0 and 0.33 * n < 5)
    assert refusing  # the filter leaves some centres with a dozen rows
    with lung_net.session(progress=False) as session, pytest.raises(NodeRefusal) as caught:
        session.glm("status ~ age + sex + ph.karno + wt.loss", "binomial", where=where)
    assert caught.value.rule == "privacy.model_saturation"
    assert caught.value.node == ", ".join(refusing)


def test_every_iteration_is_an_audited_release(lung_net: Sandbox) -> None:
    with lung_net.session(progress=False) as session:
        result = session.glm("status ~ age + ph.karno", "binomial", where="sex == 2")
    for name in lung_net.node_names:
        trail = AuditTrail.open_sqlite(lung_net.workdir / name / "state" / "audit.sqlite")
        assert trail.verify() == []
        mine = [
            e
            for e in trail.entries()
            if e.action == "glm"
            and (json.loads(e.details["params"])["where"] or {}).get("column") == "sex"
        ]
        assert len(mine) == result.round_trips
        assert all(e.outcome == "released" and e.actor == lung_net.researcher for e in mine)
        # Each round carries its own state, so each message and its audit entry differ.
        assert len({e.params_sha256 for e in mine}) == result.round_trips


def test_cli_prints_the_summary_and_csv(lung_net: Sandbox, lung: pd.DataFrame) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "oncofed", "query", "glm", "-c", lung_net.address, *args],
            capture_output=True,
            text=True,
            timeout=120,
            env={"COLUMNS": "160", "PATH": "/usr/bin:/bin", **lung_net.researcher_env()},
        )

    formula = "status ~ age + C(sex, levels=[1, 2]) + ph.karno"
    table = cli(formula, "--dataset", "lung", "--family", "binomial")
    assert table.returncode == ExitCode.OK, table.stderr
    for needle in ("Generalized Linear Model", "Binomial", "C(sex)[T.2]", "ph.karno", "AIC:"):
        assert needle in table.stdout
    csv = cli(formula, "--dataset", "lung", "--family", "binomial", "--csv")
    assert csv.returncode == ExitCode.OK, csv.stderr
    frame = pd.read_csv(StringIO(csv.stdout), index_col=0)
    oracle = smf.glm(
        "status ~ age + C(sex) + Q('ph.karno')", data=lung, family=FAMILIES["binomial"]
    ).fit()
    np.testing.assert_allclose(frame.loc["age", "coef"], oracle.params["age"], rtol=1e-12)
    refused = cli("sex ~ age", "--dataset", "lung", "--family", "binomial")
    assert refused.returncode == ExitCode.REFUSED
    assert "rule: glm.response_domain" in refused.stderr and "Traceback" not in refused.stderr


# ---- gbsg2: 3 centres, text categories declared by the sandbox ----------------


@pytest.fixture(scope="module")
def gbsg2_net(gbsg2: pd.DataFrame) -> Iterator[Sandbox]:
    with Sandbox.from_frame(gbsg2, split_by="centre", dataset="gbsg2", release="exact") as net:
        yield net


def test_gbsg2_binomial_with_text_categories_equals_statsmodels(
    gbsg2_net: Sandbox, gbsg2: pd.DataFrame
) -> None:
    formula = "cens ~ age + C(horTh) + C(menostat) + C(tgrade) + tsize + pnodes + progrec"
    with gbsg2_net.session(progress=False) as session:
        result = session.glm(formula, "binomial", min_nodes=3)
    assert_matches_statsmodels(result, gbsg2, formula, "binomial")
    assert "C(tgrade)[T.III]" in result.names and "C(horTh)[T.yes]" in result.names
    assert len(result.nodes) == 3


def test_text_column_used_as_a_number_is_refused(gbsg2_net: Sandbox) -> None:
    with gbsg2_net.session(progress=False) as session, pytest.raises(QueryError) as caught:
        session.glm("cens ~ age + horTh", "binomial")
    assert caught.value.rule == "schema.column_role"
    assert "horTh" in str(caught.value) and "Fix:" in str(caught.value)
    assert caught.value.node == ", ".join(sorted(gbsg2_net.node_names))


# ---- separation: a constructed data set ----------------------------------------


def test_perfect_separation_is_a_typed_failure_naming_the_term() -> None:
    rng = np.random.default_rng(11)
    tumour = rng.normal(30, 8, size=240)
    frame = pd.DataFrame(
        {
            "tumour_mm": tumour,
            "age": rng.normal(60, 9, size=240).round(),
            "relapse": (tumour > 30).astype(int),  # the outcome is a threshold on tumour size
            "centre": rng.choice(["north", "south", "east"], size=240),
        }
    )
    with (
        Sandbox.from_frame(frame, split_by="centre", dataset="sep", release="exact") as net,
        net.session(progress=False) as session,
        pytest.raises(TaskFailed) as caught,
    ):
        session.glm("relapse ~ tumour_mm + age", "binomial")
    assert caught.value.rule == "glm.separation"
    assert "tumour_mm" in caught.value.context["terms"]
    assert caught.value.node == "east, north, south"
    assert "Fix:" in str(caught.value)
