"""Published attacks on federated statistics, run through real networks.

Each test runs the attack against a defended network and asserts the defence
holds, and runs it against ``open_net`` (every defence off) to show that the
attack recovers the planted target there -- so each test fails if its
defence is switched off.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from typing import Any

import numpy as np
import pandas as pd
import pytest

from oncofed.client.sandbox import Sandbox
from oncofed.kernel.errors import OncofedError
from oncofed.privacy.accounting import PrivacyLoss
from oncofed.privacy.dp import DPRequest
from oncofed.privacy.policy import NodePolicy
from tests.privacy.conftest import DP_POLICY, OPEN, TARGET

pytestmark = pytest.mark.slow

DP = {"epsilon": 0.5, "delta": 1e-6}
BOUNDS = {"wt.loss": (-50.0, 80.0), "status": (0.0, 1.0)}


def _refused(call: object, rule: str) -> OncofedError:
    assert callable(call)
    with pytest.raises(OncofedError) as caught:
        call()
    assert caught.value.rule == rule, caught.value.one_line()
    return caught.value


def _budget(net: Sandbox, node: str, by: str = "permit") -> list[dict[str, Any]]:
    """`oncofed node budget --json`, as the node's operator runs it."""
    config = str(net.node_config(node))
    run = subprocess.run(
        [sys.executable, "-m", "oncofed", "node", "budget", config, "--by", by, "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    return [json.loads(line) for line in run.stdout.splitlines() if line.strip()]


# ---- 1. differencing --------------------------------------------------------


def _difference(net: Sandbox, permit: str, where: str | None, other: str) -> float:
    """A describe sum on one filter minus the same on another."""
    with net.session(dataset="lung", progress=False, permit=permit) as s:
        first = s.describe(["wt.loss"], where=where).to_frame().loc["wt.loss", "sum"]
        second = s.describe(["wt.loss"], where=other).to_frame().loc["wt.loss", "sum"]
    return float(first - second)


def test_differencing_by_where_is_refused_by_the_complement_rule(
    strict_net: Sandbox, open_net: Sandbox
) -> None:
    def attack(net: Sandbox, permit: str) -> float:
        return _difference(net, permit, None, "pid != 999")

    assert attack(open_net, "differencing") == pytest.approx(TARGET["wt.loss"])
    # Where the permit lets exact requests filter freely, the complement rule holds ...
    strict_net.grant("free-filters", any_filter=True)
    error = _refused(lambda: attack(strict_net, "free-filters"), "privacy.min_complement_size")
    assert error.node == "centre-A"  # only the target's node leaves out a single row
    # ... and by default the permit allows no filter it does not name.
    early = _refused(lambda: attack(strict_net, "differencing"), "permit.cohort")
    assert early.node == "" and "elderly: 'age >= 70'" in early.fix


def test_columns_with_a_missing_value_cannot_single_out_a_patient(
    strict_net: Sandbox, open_net: Sandbox, lung_with_target: pd.DataFrame
) -> None:
    """Differencing without a filter: adding ph.ecog to an analysis drops the rows missing
    it, and in the lung data one patient lacks it (with a weight loss recorded). The two
    exact answers' sums differ by that patient alone. Exact answers now use the records
    complete on every granted variable, whatever columns a request names."""
    lonely = lung_with_target[lung_with_target["ph.ecog"].isna()]
    assert len(lonely) == 1

    def attack(net: Sandbox) -> tuple[float, float]:
        with net.session(dataset="lung", progress=False, permit="missing-values") as s:
            fewer = s.correlation(["wt.loss", "age"])
            more = s.correlation(["wt.loss", "age", "ph.ecog"])
        sums = fewer.n * np.array(fewer.means[:2]) - more.n * np.array(more.means[:2])
        return round(float(sums[0]), 6), round(float(sums[1]), 6)

    assert attack(open_net) == (lonely["wt.loss"].iloc[0], lonely["age"].iloc[0])
    assert attack(strict_net) == (0.0, 0.0)  # the same records, so nothing to subtract


def test_a_tracker_passes_disclosure_control_but_not_the_permits_cohorts(
    strict_net: Sandbox,
) -> None:
    """Denning's tracker: two overlapping filters that each keep and leave out many rows
    at every node, and differ by the target alone."""

    def attack(permit: str) -> float:
        return _difference(strict_net, permit, "age < 60 or pid == 999", "age < 60")

    strict_net.grant("tracker", any_filter=True)
    assert attack("tracker") == pytest.approx(TARGET["wt.loss"])  # disclosure control passed
    _refused(lambda: attack("cohorts-only"), "permit.cohort")


def test_differencing_under_dp_is_charged_and_drowned_in_noise(dp_net: Sandbox) -> None:
    permit = "differencing"
    with dp_net.session(dataset="lung", progress=False, permit=permit) as s:
        whole = s.describe(["wt.loss"], dp=DP, bounds=BOUNDS)
        rest = s.describe(["wt.loss"], dp=DP, bounds=BOUNDS, where="pid != 999")
    difference = whole.to_frame().loc["wt.loss", "sum"] - rest.to_frame().loc["wt.loss", "sum"]
    assert whole.privacy is not None and rest.privacy is not None
    noise = np.hypot(whole.privacy.noise_std["sum.wt.loss"], rest.privacy.noise_std["sum.wt.loss"])
    # The difference's noise is many times the largest value one patient can contribute.
    assert noise > 10 * max(abs(b) for b in BOUNDS["wt.loss"])
    assert difference != TARGET["wt.loss"]
    charged = {row["permit"]: row for row in _budget(dp_net, "centre-A")}[permit]
    assert charged["releases"] == 2
    expected = (DPRequest(**DP).loss() + DPRequest(**DP).loss()).epsilon(1e-6)
    assert charged["spent_epsilon"] == pytest.approx(expected, rel=1e-6)


# ---- 2. linear reconstruction ----------------------------------------------


def _reconstruction_attack(
    net: Sandbox, centre_pids: list[int], permit: str
) -> tuple[np.ndarray, np.ndarray, OncofedError | None]:
    """Sums of `status` over random halves of one centre's patients, solved by least squares."""
    rng = np.random.default_rng(7)
    rows, sums = [], []
    refusal = None
    dp = DP if net.release == "dp" else None
    with net.session(dataset="lung", progress=False, permit=permit) as s:
        for _ in range(len(centre_pids) + 10):
            chosen = rng.random(len(centre_pids)) < 0.5
            picked = [str(p) for p, c in zip(centre_pids, chosen, strict=True) if c]
            where = "pid in (" + ", ".join(picked) + ")"
            try:
                result = s.describe(["status"], where=where, dp=dp, bounds=BOUNDS)
            except OncofedError as exc:
                refusal = exc
                break
            rows.append(chosen.astype(float))
            sums.append(result.to_frame().loc["status", "sum"])
    design = np.asarray(rows)
    estimate = np.linalg.lstsq(design, np.asarray(sums), rcond=None)[0]
    return estimate, design, refusal


def test_linear_reconstruction_runs_out_of_budget_before_it_succeeds(
    dp_net: Sandbox, open_net: Sandbox, lung_with_target: pd.DataFrame
) -> None:
    centre = lung_with_target[lung_with_target["centre"] == "centre-A"]
    pids = centre["pid"].astype(int).tolist()
    truth = centre["status"].to_numpy(dtype=float)

    exact, _, none = _reconstruction_attack(open_net, pids, "reconstruction")
    assert none is None
    np.testing.assert_allclose(exact, truth, atol=1e-6)  # every patient's status recovered

    noisy, design, refusal = _reconstruction_attack(dp_net, pids, "reconstruction")
    assert refusal is not None and refusal.rule == "privacy.budget"
    assert len(design) < len(pids) // 4  # the budget ends long before n queries
    error = float(np.sqrt(np.mean((noisy - truth) ** 2)))
    assert error > 0.5  # no better than guessing each 0/1 status


def test_exact_model_steps_on_a_dp_dataset_are_refused(dp_net: Sandbox) -> None:
    """Exact IRLS or Newton steps at coefficients a coordinator picks never leave a DP node."""
    with dp_net.session(dataset="lung", progress=False) as s:
        _refused(lambda: s.glm("status ~ age", "binomial"), "permit.release")
        _refused(lambda: s.coxph("time", "status", "age", grid=30), "permit.release")


# ---- 3. averaging repeated noisy answers ------------------------------------


def test_repeated_noisy_answers_are_each_charged_until_the_budget_ends(dp_net: Sandbox) -> None:
    permit = "averaging"
    answers = []
    with dp_net.session(dataset="lung", progress=False, permit=permit) as s:
        for _ in range(30):
            try:
                result = s.histogram("age", [30, 50, 60, 70, 90], dp=DP)
            except OncofedError as exc:
                assert exc.rule == "privacy.budget", exc.one_line()
                break
            answers.append(tuple(result.counts))
    cap = DP_POLICY.privacy_for("lung")
    one = DPRequest(**DP).loss()
    spent = PrivacyLoss.zero()
    allowed = 0
    while (spent + one).epsilon(cap.delta) <= cap.epsilon:
        spent, allowed = spent + one, allowed + 1
    assert len(answers) == allowed
    assert len(set(answers)) == len(answers)  # fresh noise every time
    charged = {row["permit"]: row for row in _budget(dp_net, "centre-B")}[permit]
    assert charged["releases"] == allowed and charged["spent_epsilon"] <= cap.epsilon


def _spend(net: Sandbox, permit: str, limit: int = 30) -> tuple[int, str]:
    """Noisy histograms under ``permit`` until a node refuses: how many, and the rule."""
    with net.session(dataset="lung", progress=False, permit=permit) as s:
        for released in range(limit):
            try:
                s.histogram("age", [30, 50, 60, 70, 90], dp=DP)
            except OncofedError as exc:
                return released, exc.rule
    return limit, ""


def test_a_second_permit_brings_the_same_researcher_no_fresh_budget(
    dp_net: Sandbox, lung_with_target: pd.DataFrame
) -> None:
    """A researcher who spent one permit's budget asks for another permit on the same data.

    Against a node whose researcher cap is open (dp_net), the second permit is a fresh
    budget: twice the loss reaches the same patients. With a cap per researcher over every
    permit, the second permit stops where the person's total does.
    """
    per_permit = DP_POLICY.privacy_for("lung")
    first, rule = _spend(dp_net, "lifetime-1")
    second, again = _spend(dp_net, "lifetime-2")
    assert (rule, again) == ("privacy.budget", "privacy.budget")
    assert second == first  # the attack works here: a fresh budget for the same person
    # Losses compose below their sum (Rényi DP): two permits of epsilon 2 spent in 0.5s
    # cost 2.89 together, so a person's cap of 2.5 cuts the second one short.
    capped = NodePolicy(dp={"lung": per_permit.model_copy(update={"researcher_epsilon": 2.5})})
    with Sandbox.from_frame(
        lung_with_target, split_by="centre", dataset="lung", policy=capped
    ) as net:
        assert _spend(net, "lifetime-1") == (first, "privacy.budget")
        held, refusal = _spend(net, "lifetime-2")
        rows = {row["researcher"]: row for row in _budget(net, "centre-B", by="researcher")}
    assert refusal == "privacy.researcher_budget" and held < first
    one = DPRequest(**DP).loss()
    lifetime = PrivacyLoss.zero()
    for _ in range(first + held):
        lifetime = lifetime + one
    assert lifetime.epsilon(per_permit.delta) <= 2.5 < (lifetime + one).epsilon(per_permit.delta)
    assert rows[net.researcher]["releases"] == first + held
    assert rows[net.researcher]["spent_epsilon"] <= rows[net.researcher]["epsilon"] == 2.5


def test_no_seed_or_rng_is_reachable_from_a_request(dp_net: Sandbox) -> None:
    with dp_net.session(dataset="lung", progress=False) as s:
        params = {"dataset": "lung", "column": "age", "bins": [30, 60, 90], "dp": DP, "seed": 1}
        _refused(lambda: s.run("histogram", **params), "task.params")


# ---- 4. small cells and tails -------------------------------------------------


def test_narrow_histogram_bin_around_the_target_is_refused(
    strict_net: Sandbox, open_net: Sandbox
) -> None:
    def attack(net: Sandbox) -> list[int]:
        with net.session(dataset="lung", progress=False) as s:
            return s.histogram("age", [10, 84, 86]).counts

    assert attack(open_net)[1] == 1  # the target alone in its bin
    _refused(lambda: attack(strict_net), "privacy.min_cell_count")


def test_singleton_group_is_refused(strict_net: Sandbox, open_net: Sandbox) -> None:
    def attack(net: Sandbox) -> float:
        with net.session(dataset="lung", progress=False) as s:
            frame = s.describe(["wt.loss"], by="age", categories=["85", "60"]).to_frame()
        return float(frame.loc[("85", "wt.loss"), "mean"])

    assert attack(open_net) == TARGET["wt.loss"]
    _refused(lambda: attack(strict_net), "privacy.min_cell_count")


def test_a_numeric_column_used_as_a_factor_is_refused(
    strict_net: Sandbox, open_net: Sandbox, lung_with_target: pd.DataFrame
) -> None:
    ages = sorted({str(a) for a in lung_with_target["age"]})

    def attack(net: Sandbox) -> float:
        with net.session(dataset="lung", progress=False) as s:
            frame = s.describe(["wt.loss"], by="age", categories=ages).to_frame()
        return float(frame.loc[("85", "wt.loss"), "mean"])

    assert attack(open_net) == TARGET["wt.loss"]
    _refused(lambda: attack(strict_net), "privacy.max_factor_levels")
    levels = ", ".join(ages)
    with strict_net.session(dataset="lung", progress=False) as s:
        model = f"status ~ C(age, levels=[{levels}])"
        _refused(lambda: s.glm(model, "binomial"), "privacy.max_factor_levels")


def test_unique_event_times_are_refused(strict_net: Sandbox, open_net: Sandbox) -> None:
    def exact(net: Sandbox) -> list[float]:
        with net.session(dataset="lung", progress=False) as s:
            return s.kaplan_meier("time", "status", exact_times=True).curve().time

    def daily(net: Sandbox) -> list[float]:
        with net.session(dataset="lung", progress=False) as s:
            return s.kaplan_meier("time", "status", grid=1).curve().time

    assert TARGET["time"] in exact(open_net) and TARGET["time"] in daily(open_net)
    _refused(lambda: exact(strict_net), "privacy.exact_event_times")
    _refused(lambda: daily(strict_net), "privacy.min_grid_width")


def test_a_saturated_model_is_refused(strict_net: Sandbox, open_net: Sandbox) -> None:
    formula = "time ~ age + sex + ph.karno + wt.loss"  # 5 coefficients on 12-15 rows a node

    def attack(net: Sandbox) -> int:
        with net.session(dataset="lung", progress=False) as s:
            return len(s.glm(formula, "gaussian", where="age >= 70").names)

    assert attack(open_net) == 5
    _refused(lambda: attack(strict_net), "privacy.model_saturation")


def test_one_patient_dominating_a_fit_is_refused_by_the_p_percent_rule(
    strict_net: Sandbox, open_net: Sandbox
) -> None:
    """A leverage attack: np.exp(age) makes the oldest patient (85; the next is 82) carry
    almost all of the fit's spread. The slope's standard error then gives exp(85), and the
    fitted line passes through that patient, so their weight loss is its value there."""

    def attack(net: Sandbox) -> tuple[float, float]:
        with net.session(dataset="lung", progress=False, permit="leverage") as s:
            fit = s.glm("wt.loss ~ np.exp(age)")
        intercept, slope = fit.params.iloc[0], fit.params.iloc[1]
        top = math.sqrt(fit.scale) / fit.bse.iloc[1]  # = exp(age) of the dominant row
        return math.log(top), intercept + slope * top

    age, weight_loss = attack(open_net)
    assert round(age) == TARGET["age"]
    assert weight_loss == pytest.approx(TARGET["wt.loss"], abs=1.5)
    error = _refused(lambda: attack(strict_net), "privacy.dominance")
    # Each centre's oldest patient dominates exp(age)'s sum of squares there.
    assert "centre-A" in error.node.split(", ")
    assert "85" not in str(error) and "33" not in str(error)


# ---- 5. minimum number of sites -------------------------------------------------


@pytest.mark.parametrize("policy", ["strict", "open"])
def test_a_single_site_federation_cannot_release(
    policy: str, lung_with_target: pd.DataFrame
) -> None:
    """A coordinator that runs a task on one node gets that node's own values -- unless refused."""
    centre = lung_with_target[lung_with_target["centre"] == "centre-A"]
    net = Sandbox.from_frame(
        centre,
        split_by="centre",
        dataset="lung",
        policy=OPEN if policy == "open" else None,
        release="exact",
    )
    with net, net.session(dataset="lung", progress=False) as s:
        if policy == "open":
            released = s.describe(["wt.loss"]).to_frame().loc["wt.loss", "mean"]
            assert released == pytest.approx(centre["wt.loss"].mean())
        else:
            _refused(lambda: s.describe(["wt.loss"]), "privacy.min_nodes")


# ---- every attack class against a node left at its defaults ------------------

# The first exact query of each attack class an independent attack run tried
# (issue 13): each recovered a patient's value against exact answers.
ATTACK_QUERIES: dict[str, Any] = {
    "tracker differencing": lambda s: s.describe(["wt.loss"], where="pid != 999 or age < 40"),
    "counts outside the cell rule": lambda s: s.quantiles("age", lower=0, upper=100, q=[0.99]),
    "refusal oracle": lambda s: s.histogram("age", [84, 86]),
    # The target is the only man the filter keeps: his level's coefficient is his value.
    "a one-patient factor level": lambda s: s.glm(
        "wt.loss ~ C(sex, levels=['1', '2'])", where="sex == 2 or pid == 999"
    ),
    "a one-member survival group": lambda s: s.kaplan_meier(
        "time", "status", by="pid", categories=["999"], grid=30
    ),
    "training on a rare level": lambda s: s.train(["age"], "status", rounds=1),
    "coordinator-chosen Cox state": lambda s: s.coxph("time", "status", "age", grid=30),
}


@pytest.mark.parametrize("attack", sorted(ATTACK_QUERIES))
def test_every_attack_class_gets_no_exact_answer_from_a_default_node(
    attack: str, default_net: Sandbox, open_net: Sandbox
) -> None:
    """At its defaults a node answers only with DP noise, whatever the permit says.

    The query is answered by the open network (the attack's starting point);
    under the default permit the coordinator refuses it before any node is
    asked, so the refusal depends on no data; under a permit that grants exact
    answers on any filter, every node still refuses it, as its operator has not
    allowed them.
    """
    query = ATTACK_QUERIES[attack]
    with open_net.session(
        dataset="lung", progress=False, permit="open-" + attack.replace(" ", "-")
    ) as s:
        assert query(s) is not None
    with default_net.session(dataset="lung", progress=False) as s:
        early = _refused(lambda: query(s), "permit.release")
    assert early.node == ""  # the coordinator's one permit check: no node was asked
    exact = "exact-" + attack.replace(" ", "-")
    default_net.grant(exact, release="exact", any_filter=True)
    with default_net.session(dataset="lung", progress=False, permit=exact) as s:
        refused = _refused(lambda: query(s), "privacy.dp_required")
    assert set(refused.node.split(", ")) == set(default_net.node_names)


# ---- refusals that would answer a question for free ---------------------------------

# Each asks about the target alone (the filter keeps him or no one) with a value the task
# cannot use: an event column of 1s and 2s, a factor level nobody has. Refusing because a
# selected row holds such a value tells whether the target exists, and refusals cost nothing.
ORACLES: dict[str, Any] = {
    "kaplan_meier": lambda s, where, dp: s.kaplan_meier(
        "time", "sex", time_points=[200.0, 400.0, 800.0], where=where, dp=dp
    ),
    "glm": lambda s, where, dp: s.glm(
        "wt.loss ~ age + C(sex, levels=['7', '8'])",
        where=where,
        dp=dp,
        bounds={"wt.loss": (-50.0, 80.0), "age": (18.0, 100.0)},
    ),
    "coxph": lambda s, where, dp: s.coxph(
        "time",
        "sex",
        ["age"],
        time_points=[200.0, 400.0, 800.0],
        where=where,
        dp=dp,
        bounds={"age": (18.0, 100.0)},
    ),
}


FROM_NOISY_TOTALS = {"answered", "glm.too_few_rows", "coxph.too_few_rows", "coxph.no_events"}


def _outcome(call: Any) -> str:
    try:
        call()
    except OncofedError as exc:
        return exc.rule
    return "answered"


@pytest.mark.parametrize("task", sorted(ORACLES))
def test_no_dp_refusal_depends_on_whether_a_patient_is_selected(
    task: str, dp_net: Sandbox, open_net: Sandbox
) -> None:
    query = ORACLES[task]
    with open_net.session(dataset="lung", progress=False, permit=f"oracle-open-{task}") as s:
        exact = {w: _outcome(lambda w=w: query(s, w, None)) for w in ("pid == 999", "pid < 0")}
    assert exact["pid == 999"] != exact["pid < 0"]  # the oracle, where answers are exact
    with dp_net.session(dataset="lung", progress=False, permit=f"oracle-dp-{task}") as s:
        noisy = {w: _outcome(lambda w=w: query(s, w, DP)) for w in ("pid == 999", "pid < 0")}
    # Answered, or refused by the coordinator reading the noisy totals (post-processing,
    # which costs no privacy and may go either way with the noise); never by a node.
    assert set(noisy.values()) <= FROM_NOISY_TOTALS, noisy


def test_exact_levels_and_groups_of_a_few_patients_are_refused(
    strict_net: Sandbox, open_net: Sandbox
) -> None:
    """In the permit's cohort (age >= 70) one patient at centre-C has ph.ecog 3 and four
    there are women: a factor level of one gives that patient's mean outcome, a group
    of four its own survival curve."""

    def attack(net: Sandbox) -> tuple[Any, Any]:
        with net.session(dataset="lung", progress=False, permit="levels") as s:
            fit = s.glm("wt.loss ~ C(ph.ecog, levels=['0', '1', '2', '3'])", where="age >= 70")
            curves = s.kaplan_meier(
                "time", "status", by="sex", categories=["1", "2"], grid=30, where="age >= 70"
            )
        return fit, curves

    fit, curves = attack(open_net)
    assert "C(ph.ecog)[T.3]" in fit.names and len(curves.curves) == 2
    with strict_net.session(dataset="lung", progress=False) as s:
        with pytest.raises(OncofedError) as level:
            s.glm("wt.loss ~ C(ph.ecog, levels=['0', '1', '2', '3'])", where="age >= 70")
        group = _refused(
            lambda: s.kaplan_meier(
                "time", "status", by="sex", categories=["1", "2"], grid=30, where="age >= 70"
            ),
            "privacy.min_cell_count",
        )
    # Other nodes may refuse the small cohort by other rules too; centre-C by the cell rule.
    assert "[centre-C" in str(level.value) or "centre-C," in str(level.value)
    assert "privacy.min_cell_count" in level.value.rule.split(",")
    # On the complete records centre-D also holds four men in the cohort.
    assert group.node == "centre-C, centre-D"
