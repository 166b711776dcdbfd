"""Attack class 7 of issue 13: a compromised coordinator fills the Cox and GLM state itself.

The attack run that found it: the coordinator chose the Cox server state
(coefficients, centring, event and tie times) and GLM coefficients. With
coefficients 0 and every grid point declared an event time, the per-node
risk-set sums gave every patient alone in their cell at their node exactly,
while the researcher still received a normal-looking fit.

Here the test plays that coordinator against real node code: one node's
``ClientApp`` built as a real node builds it (``build_client_app`` with its
audit trail, permit checker, policy and privacy ledger), sent messages that
carry the researcher's real signed task and the body's real signed permit --
only the parameters are the coordinator's. What the tests show:

1. the node takes no state it can derive: the old protocol's fields are
   unknown (``task.params``), and any change of a signed field is refused
   (``task.altered``);
2. a node at its defaults answers only with DP noise: exact steps at the
   coordinator's coefficients are refused (``permit.release``,
   ``privacy.dp_required``); DP steps carry the privacy record and are
   charged, and asking for more steps than the signed ``max_iter`` spends
   budget until ``privacy.budget``, never past the cap;
3. coefficients outside the box are refused (``coxph.coefficients``);
4. the leak is real where exact answers are allowed: at a node whose policy
   allows exact answers and cells of one (and a permit granting them), the
   per-cell sums at beta = 0 give each patient alone in a cell exactly. The
   protocol change does not stop that: exact Cox steps still single out
   lonely patients. The defence is that nodes answer with DP by default, and
   exact answers need both the permit's and the node's consent; the same
   messages at a default node get refusals, never a number;
5. where exact answers are allowed, a cell whose sums one patient dominates
   (one event among the cell's rows) is refused by the p % rule
   (``privacy.dominance``), which the cell rule on rows lets through.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from flwr.app import Message

from oncofed.governance.envelope import Authorisation, SignedTask
from oncofed.governance.permits import ReleaseMode
from oncofed.kernel.flower import (
    attach_authorisation,
    content_to_bytes,
    install_process_identity,
    node_context,
    params_content,
    reply_error,
    stamp,
)
from oncofed.kernel.schema import ColumnSpec
from oncofed.node.config import DatasetConfig
from oncofed.privacy.accounting import PRIVACY_RECORD, PrivacyLoss
from oncofed.privacy.dp import DPRequest
from oncofed.privacy.policy import DatasetPrivacy, NodePolicy
from oncofed.tasks.base import TaskParams
from oncofed.tasks.coxph import (
    MAX_LOG_HAZARD_RATIO,
    CoxCellSumsRelease,
    CoxPHParams,
    NoisyCoxCellSumsRelease,
)
from oncofed.tasks.glm import GLMParams, GLMStepRelease
from tests.node_harness import real_node
from tests.oracle import PERMISSIVE

pytestmark = pytest.mark.slow  # about 5 s: 31 node apps, each with its own keys and ledger

DATASET, PERMIT, NODE = "d", "p1", "n1"
GRID = 30.0
AGE_BOUNDS = (18.0, 100.0)
AGE_CENTRE = sum(AGE_BOUNDS) / 2
"""The public centre every node derives for ``age`` (midpoint of its schema bounds)."""
AGE_BOX = MAX_LOG_HAZARD_RATIO / (AGE_BOUNDS[1] - AGE_BOUNDS[0])
"""The largest |coefficient| of age a node evaluates: log HR 20 across its public range."""
TARGET = {"time": 1500, "status": 1, "age": 85}
"""A planted patient, the only one followed beyond 900 days: alone in the cell at 1500."""
DP = DPRequest(epsilon=1.0, delta=1e-6)
DEFAULT = NodePolicy()
"""A node whose operator configured nothing: DP only, default disclosure rules."""


def patients() -> pd.DataFrame:
    rng = np.random.default_rng(13)
    n = 300
    frame = pd.DataFrame(
        {
            "time": rng.integers(1, 900, n),
            "status": rng.integers(0, 2, n),
            "age": rng.integers(40, 80, n),
        }
    )
    return pd.concat([frame, pd.DataFrame([TARGET])], ignore_index=True)


def cox_task(**fields: Any) -> CoxPHParams:
    """What the researcher signs: age on a 30-day grid, no state."""
    return CoxPHParams.model_validate(
        {
            "dataset": DATASET,
            "study": PERMIT,
            "duration": "time",
            "event": "status",
            "covariates": "age",
            "grid": GRID,
            **fields,
        }
    )


def glm_task(**fields: Any) -> GLMParams:
    return GLMParams.model_validate(
        {
            "dataset": DATASET,
            "study": PERMIT,
            "formula": "status ~ age",
            "family": "binomial",
            **fields,
        }
    )


class Centre:
    """One node built as a real node is, and the compromised coordinator's side of it."""

    def __init__(
        self,
        work: Path,
        policy: NodePolicy,
        release: ReleaseMode,
        cohorts: dict[str, str] | None = None,
    ) -> None:
        install_process_identity()
        work.mkdir(parents=True, exist_ok=True)
        self.frame = patients()
        self.frame.to_parquet(work / "d.parquet")
        datasets = {
            DATASET: DatasetConfig(
                path=work / "d.parquet",
                columns={
                    # Public bounds, as an operator declares them: the DP clamp, the
                    # centre and the coefficient box come from these, never from data.
                    "time": ColumnSpec(type="integer", bounds=(0.0, 1800.0)),
                    "status": ColumnSpec(type="integer"),
                    "age": ColumnSpec(type="integer", bounds=AGE_BOUNDS),
                },
            )
        }
        node = real_node(
            work,
            NODE,
            datasets,
            policy,
            permit_id=PERMIT,
            task_types=("coxph", "glm"),
            release=release,
            cohorts=cohorts,
        )
        self.body, self.ada, self.permit = node.body, node.researcher, node.permit
        self.revocations, self.ledger, self.app = node.revocations, node.ledger, node.app
        self.policy = policy
        self._runs = itertools.count(100)
        self._messages = itertools.count()

    def task(self, kind: str, params: TaskParams) -> SignedRun:
        """The researcher signs ``params``; the coordinator gets the run to relay it in."""
        signed = SignedTask.create(self.ada, kind, params.model_dump_json(), PERMIT)
        return SignedRun(self, signed, params, next(self._runs))

    def spent(self) -> PrivacyLoss:
        return self.ledger.spent(PERMIT, DATASET)

    def send(self, run: SignedRun, action: str, params_json: str) -> Message:
        authorisation = Authorisation(
            task=run.signed, permit=self.permit, revocations=self.revocations
        ).model_dump_json()
        # Three participants: the minimum-sites rule is not what these tests are about.
        message = Message(params_content(params_json, participants=3), 7, f"query.{action}")
        stamp(message, run_id=run.run, message_id=f"{run.run}-{next(self._messages)}")
        attach_authorisation(message, authorisation)
        reply: Message = self.app(message, node_context(7, run.run, {}))
        return reply


@dataclass
class SignedRun:
    """One signed task as the coordinator holds it: it may send any parameters with it."""

    centre: Centre
    signed: SignedTask
    params: TaskParams
    run: int

    def raw(self, action: str, fields: dict[str, Any]) -> Message:
        """Send the signed parameters with ``fields`` set or added, unvalidated."""
        text = json.loads(self.params.model_dump_json())
        return self.centre.send(self, action, json.dumps({**text, **fields}))

    def step(self, beta: tuple[float, ...]) -> Message:
        return self.raw("coxph", {"beta": list(beta)})


def refusal(reply: Message) -> str:
    """The rule a reply refused by, after checking it carries no release at all."""
    assert reply.has_error(), "the node released where it should have refused"
    assert not reply.has_content()
    rule: str = reply_error(reply).rule
    return rule


def lonely_ages(frame: pd.DataFrame) -> dict[float, float]:
    """The truth the attack is after: each patient alone in a grid cell, by cell."""
    cell = np.ceil(frame["time"] / GRID) * GRID
    sizes = cell.map(cell.value_counts())
    alone = frame[sizes == 1]
    return {float(c): float(a) for c, a in zip(cell[sizes == 1], alone["age"], strict=True)}


# ---- 1. the node takes no state it can derive ---------------------------------


@pytest.mark.parametrize(
    "planted",
    [
        {"event_times": [GRID * k for k in range(1, 61)]},
        {"tied_times": [GRID * k for k in range(1, 61)]},
        {"center": [85.0]},
    ],
    ids=["event_times", "tied_times", "center"],
)
def test_the_old_protocols_state_is_an_unknown_field(
    tmp_path: Path, planted: dict[str, Any]
) -> None:
    # A permissive node that would answer exactly: only the field's absence protects it.
    centre = Centre(tmp_path, PERMISSIVE, "exact")
    run = centre.task("coxph", cox_task())
    assert not run.step((0.0,)).has_error()  # the same step without the field is answered
    assert refusal(run.raw("coxph", {"beta": [0.0], **planted})) == "task.params"
    assert refusal(run.raw("coxph_setup", planted)) == "task.params"


@pytest.mark.parametrize(
    ("kind", "change"),
    [
        ("coxph", {"grid": 60.0}),
        ("coxph", {"max_iter": 20}),  # more, cheaper steps: more rounds to combine
        # Narrow bounds would move the centre onto the target and shrink the box.
        ("coxph", {"bounds": {"age": [84.0, 86.0]}}),
        ("coxph", {"dp": None}),
        ("coxph", {"covariates": "age + status"}),
        ("coxph", {"concordance_bins": 10_000}),
        ("glm", {"formula": "status ~ age + time"}),
        ("glm", {"max_iter": 20}),
        ("glm", {"dp": None}),
    ],
)
def test_anything_but_the_declared_server_state_must_be_as_signed(
    tmp_path: Path, kind: str, change: dict[str, Any]
) -> None:
    centre = Centre(tmp_path, DEFAULT, "dp")
    signed = cox_task(dp=DP, max_iter=4) if kind == "coxph" else glm_task(dp=DP, max_iter=4)
    run = centre.task(kind, signed)
    action, state = ("coxph", {"beta": [0.0]}) if kind == "coxph" else ("glm", {})
    assert not run.raw(action, state).has_error()  # the declared state alone is accepted
    charged = centre.spent()
    assert refusal(run.raw(action, {**state, **change})) == "task.altered"
    assert centre.spent() == charged  # a refusal costs nothing


# ---- 2. a node at its defaults answers only with DP noise ---------------------


@pytest.mark.parametrize(
    ("release", "rule"), [("dp", "permit.release"), ("exact", "privacy.dp_required")]
)
def test_exact_steps_at_the_coordinators_coefficients_get_refusals(
    tmp_path: Path, release: ReleaseMode, rule: str
) -> None:
    """No dp in the signed request: every step the coordinator tries is refused.

    Under a DP-only permit the permit check refuses; under a permit granting exact
    answers the node's own policy does, as its operator has not allowed them.
    """
    centre = Centre(tmp_path, DEFAULT, release)
    cox = centre.task("coxph", cox_task())
    glm = centre.task("glm", glm_task())
    replies = [
        cox.raw("coxph_setup", {}),
        cox.step((0.0,)),
        cox.step((AGE_BOX,)),
        cox.raw("coxph_concordance", {"beta": [0.0], "risk_edges": list(range(1, 200))}),
        glm.raw("glm", {}),
        glm.raw("glm", {"coefficients": [0.0, 0.0]}),
        glm.raw("glm", {"coefficients": [-5.0, 0.1]}),
    ]
    assert [refusal(reply) for reply in replies] == [rule] * len(replies)
    assert centre.ledger.charges() == []


def test_a_dp_step_at_chosen_coefficients_is_noisy_and_charged(tmp_path: Path) -> None:
    centre = Centre(tmp_path, DEFAULT, "dp")
    run = centre.task("coxph", cox_task(dp=DP, max_iter=4))
    reply = run.step((0.0,))
    assert not reply.has_error(), reply_error(reply).one_line()
    assert PRIVACY_RECORD in reply.content.config_records
    sums = NoisyCoxCellSumsRelease.from_content(reply.content)
    assert sums.privacy is not None
    # Each cell's sum of x carries noise far larger than any one patient's |x| <= 1
    # (covariates are clamped to their public range and scaled into [-1, 1]).
    assert float(sums.privacy["scale.risk"]) > 10.0
    [charge] = centre.ledger.charges(PERMIT)
    # A step costs its share of the signed fit's rho, as the task declares it up front.
    expected = step_loss(run.params)
    assert charge.epsilon == pytest.approx(expected.epsilon(DEFAULT.privacy_for(DATASET).delta))
    # The same step again is the release already paid for (issue 14): no second charge.
    assert content_to_bytes(run.step((0.0,)).content) == content_to_bytes(reply.content)
    assert len(centre.ledger.charges(PERMIT)) == 1
    assert run.step((AGE_BOX / 2,)).has_error() is False  # another step: a second charge
    assert len(centre.ledger.charges(PERMIT)) == 2


def step_loss(params: TaskParams, **state: Any) -> PrivacyLoss:
    """What one Newton step at coordinator-chosen state costs, as the signed task declares.

    The split of a fit's rho between its messages is the task's; what these tests hold
    the node to is charging each reply what was declared, and the cap over them all.
    """
    if isinstance(params, CoxPHParams):
        state = {"beta": (0.0,), **state}
    loss = params.model_copy(update=state).release_loss()
    assert loss is not None and DP.loss().rdp[0] > loss.rdp[0] > 0  # a share, not the fit
    return loss


def _allowed(one: PrivacyLoss, privacy: DatasetPrivacy) -> int:
    """How many releases of ``one`` fit under the cap, composed as the ledger composes them."""
    spent, count = PrivacyLoss.zero(), 0
    while (spent + one).epsilon(privacy.delta) <= privacy.epsilon * (1 + 1e-9):
        spent, count = spent + one, count + 1
    return count


@pytest.mark.parametrize("kind", ["coxph", "glm"])
def test_more_rounds_than_signed_are_refused_once_the_fit_is_paid_for(
    tmp_path: Path, kind: str
) -> None:
    """The coordinator keeps asking for Newton steps past the signed ``max_iter``.

    Every reply is charged; the node refuses once the steps have cost the ``dp``
    the researcher signed for the fit (``privacy.task_budget``, issue 14), long
    before the permit's budget, whose cap leaves room for more.
    """
    privacy = DatasetPrivacy(epsilon=2.0, delta=1e-6)
    centre = Centre(tmp_path, NodePolicy(dp={DATASET: privacy}), "dp")
    max_iter = 4
    if kind == "coxph":
        run = centre.task(kind, cox_task(dp=DP, max_iter=max_iter))

        def state(i: int) -> dict[str, Any]:
            return {"beta": (AGE_BOX * (-1) ** i / (i + 2),)}

        def ask(i: int) -> Message:
            return run.step(state(i)["beta"])
    else:
        run = centre.task(kind, glm_task(dp=DP, max_iter=max_iter))

        def state(i: int) -> dict[str, Any]:
            return {"coefficients": (0.0, 0.01 * i)}

        def ask(i: int) -> Message:
            return run.raw("glm", {"coefficients": [0.0, 0.01 * i]})

    allowed = _allowed(step_loss(run.params, **state(0)), privacy)
    assert allowed > max_iter + 1  # the permit's cap leaves room past one fit
    signed = run.params.dp
    assert signed is not None
    released, rule, spent = 0, "", PrivacyLoss.zero()
    for i in range(4 * allowed):
        reply = ask(i)
        if reply.has_error():
            rule = reply_error(reply).rule
            break
        assert PRIVACY_RECORD in reply.content.config_records
        spent = spent + step_loss(run.params, **state(i))
        released += 1
    assert rule == "privacy.task_budget"
    # As many steps as the signed dp pays for (a Cox step after the setup costs a share
    # of what is left after it), and not one more.
    assert 1 <= released < allowed
    assert spent.epsilon(signed.delta) <= signed.epsilon * (1 + 1e-9)
    unpaid = spent + step_loss(run.params, **state(released))
    assert unpaid.epsilon(signed.delta) > signed.epsilon * (1 + 1e-9)
    assert len(centre.ledger.charges(PERMIT)) == released
    assert refusal(ask(4 * allowed)) == "privacy.task_budget"  # and it stays refused


def test_concordance_pair_counts_never_leave_a_dp_node(tmp_path: Path) -> None:
    """Concordance has no DP mechanism; its bins are the coordinator's choice."""
    centre = Centre(tmp_path, DEFAULT, "dp")
    run = centre.task("coxph", cox_task(dp=DP, max_iter=4))
    edges = list(np.linspace(-1, 1, 199))
    reply = run.raw("coxph_concordance", {"beta": [AGE_BOX], "risk_edges": edges})
    assert refusal(reply) == "coxph.dp_concordance"
    assert centre.ledger.charges() == []


# ---- 3. coefficients outside the box -------------------------------------------


@pytest.mark.parametrize(
    "beta",
    [(AGE_BOX * 1.01,), (-AGE_BOX * 1.01,), (math.nan,), (math.inf,), (0.0, 0.0), ()],
    ids=["above", "below", "nan", "inf", "too-many", "none"],
)
@pytest.mark.parametrize("mode", ["exact", "dp"])
def test_coefficients_outside_the_box_are_refused(
    tmp_path: Path, beta: tuple[float, ...], mode: str
) -> None:
    """Large coefficients make exp(x'beta) pick out the extreme row of each cell."""
    if mode == "exact":
        centre, signed = Centre(tmp_path, PERMISSIVE, "exact"), cox_task()
    else:
        centre, signed = Centre(tmp_path, DEFAULT, "dp"), cox_task(dp=DP, max_iter=4)
    run = centre.task("coxph", signed)
    # At the box's edge the node still answers: the refusal below is the box's.
    assert not run.step((AGE_BOX * 0.99,)).has_error()
    charged = len(centre.ledger.charges())
    assert refusal(run.step(beta)) == "coxph.coefficients"
    assert len(centre.ledger.charges()) == charged


# ---- 4. the attack, where exact answers are allowed, and at a default node ------


def test_zero_coefficients_single_out_lonely_patients_only_where_exact_answers_are_allowed(
    tmp_path: Path,
) -> None:
    """The original attack's effect, against what a node releases in exact mode.

    At beta = 0 every w = exp(x'beta) is 1, so a cell's ``a0`` is how many rows end
    there and ``a1`` the sum of their centred covariates: where ``a0`` is 1, ``a1``
    plus the public centre is that patient's covariate. The node no longer takes
    event times or a centre from the coordinator, but in exact mode its per-cell
    sums still single out patients alone in a cell -- nothing in the exact Cox step
    stops it. What stops it is that a node answers exactly only where the permit
    grants and the node's policy allows it: the same messages at a default node
    are refused.
    """
    permissive = Centre(tmp_path / "permissive", PERMISSIVE, "exact")
    reply = permissive.task("coxph", cox_task()).step((0.0,))
    assert not reply.has_error(), reply_error(reply).one_line()
    cells = CoxCellSumsRelease.from_content(reply.content)
    lonely = np.flatnonzero(cells.a0 == 1.0)
    recovered = {float(cells.cell_time[i]): float(cells.a1[i, 0]) + AGE_CENTRE for i in lonely}
    truth = lonely_ages(permissive.frame)
    assert recovered == truth  # every lonely patient's age, exactly
    assert recovered[float(TARGET["time"])] == TARGET["age"]
    # Their events too: a lonely cell's event count is that patient's status.
    target = int(np.flatnonzero(cells.cell_time == TARGET["time"])[0])
    assert cells.events[target] == TARGET["status"]

    for release, rule in (("dp", "permit.release"), ("exact", "privacy.dp_required")):
        default = Centre(tmp_path / f"default-{release}", DEFAULT, release)
        run = default.task("coxph", cox_task())
        assert refusal(run.step((0.0,))) == rule
        assert refusal(run.raw("coxph_setup", {})) == rule
        assert default.ledger.charges() == []


# ---- 5. one patient's share of a cell's sums, where exact answers are allowed -------


def _one_event_cell(frame: pd.DataFrame) -> tuple[list[float], int]:
    """Time points whose cell (a, t] holds one event among five rows, and its row.

    The grid is the requester's choice, so they can draw a cell around one event:
    every cell then passes the cell rule on rows.
    """
    ordered = frame.sort_values("time", kind="stable")
    for position in range(10, len(ordered)):
        window = ordered.iloc[position - 4 : position + 1]
        last = window.iloc[-1]
        before = ordered.iloc[position - 5]["time"]
        alone = window["status"].sum() == 1 and (ordered["time"] == last["time"]).sum() == 1
        if last["status"] == 1 and alone and before < window["time"].min():
            return [float(before), float(last["time"]), 900.0], int(window.index[-1])
    raise AssertionError("the planted data has no such cell")


def test_a_cell_whose_events_are_one_patient_is_refused_by_the_p_percent_rule(
    tmp_path: Path,
) -> None:
    """At coefficients 0 a cell's ``e1`` is the sum of its events' covariates: with one event
    in a cell of five rows, that patient's age. The cell rule counts rows and lets it pass;
    the p % rule sees one row make up all of ``e1`` and refuses."""
    # The grid rule bounds a cell's width, not its events: these random data have events
    # every few days, so the cell is narrower than 30 days; in real cohorts a month holding
    # one death is common.
    rules = NodePolicy(min_grid_width=0.0, dp={DATASET: DatasetPrivacy(allow_exact=True)})
    off = rules.model_copy(update={"dominance_p": 0.0})
    centre = Centre(tmp_path / "no-dominance-rule", off, "exact")
    points, row = _one_event_cell(centre.frame)
    reply = centre.task("coxph", cox_task(grid=None, time_points=points)).step((0.0,))
    assert not reply.has_error(), reply_error(reply).one_line()
    cells = CoxCellSumsRelease.from_content(reply.content)
    cell = int(np.flatnonzero(cells.cell_time == points[1])[0])
    assert cells.events[cell] == 1 and cells.a0[cell] == 5
    assert cells.e1[cell, 0] + AGE_CENTRE == centre.frame.loc[row, "age"]  # exactly

    default = Centre(tmp_path / "p-percent-rule", rules, "exact")
    run = default.task("coxph", cox_task(grid=None, time_points=points))
    assert refusal(run.step((0.0,))) == "privacy.dominance"


OVER_70 = "age >= 70"
"""Younger patients without an event would have the largest Pearson terms at these
coefficients; the attacker filters them out."""


def test_coefficients_that_make_one_row_the_whole_pearson_sum_are_refused(
    tmp_path: Path,
) -> None:
    """In the permit's cohort (over 70), coefficients beta = (s c, -s) give the oldest
    patient (85, an event) a fitted probability near 0 and so a Pearson term
    exp(s (85 - c)) that is nearly all of the sum,
    while their tiny weight keeps X'WX and X'Wz spread over the rows: log(Pearson) / s + c
    is their age. The p % rule now checks each row's deviance and Pearson terms too."""
    s, c = 0.8, 73.5
    rules = NodePolicy(dp={DATASET: DatasetPrivacy(allow_exact=True)})
    unguarded = rules.model_copy(update={"dominance_p": 0.0})
    off = Centre(tmp_path / "no-dominance-rule", unguarded, "exact", {"elderly": OVER_70})
    reply = off.task("glm", glm_task(where=OVER_70)).raw("glm", {"coefficients": [s * c, -s]})
    assert not reply.has_error(), reply_error(reply).one_line()
    pearson = GLMStepRelease.from_content(reply.content).pearson
    assert round(math.log(pearson) / s + c) == TARGET["age"]

    guarded = Centre(tmp_path / "p-percent-rule", rules, "exact", {"elderly": OVER_70})
    run = guarded.task("glm", glm_task(where=OVER_70))
    assert refusal(run.raw("glm", {"coefficients": [s * c, -s]})) == "privacy.dominance"
