"""Issue 14, attacks 1 and 2: one signed task buys one release per step at each node.

The attack run found two ways for a compromised coordinator to get more out of
one signed task than its researcher signed for:

1. **Fresh noise on demand.** It sent the same signed DP ``describe`` four
   times in one run under new message ids and got four fresh noisy answers
   (and four ledger charges): the noise averages down, the budget drains. The
   ledger stored releases per message id only.
2. **A faked dropout undoes secure aggregation.** It ran the same signed,
   masked histogram twice in one run: once with every node, once withholding
   one node's mask message (a dropout, to the protocol). The difference of the
   two totals is that node's exact counts.

What holds now, each shown against the previous behaviour first (the defence
switched off by a monkeypatch of the one function that implements it, the
rest of the node as it is):

- a node files a release under the signed task's nonce and the step asked for
  (action, validated parameters, a model step's weights), never the message
  id: the same step again, under any message id or JSON spelling, gets the
  stored release -- the same bytes, no new charge (``NodeRequest.release_key``);
- all the steps of one signed task together cost at most the ``dp`` it signed
  (``privacy.task_budget``): a coordinator asking for Newton steps past the
  signed ``max_iter`` is refused once they are paid for (``task_budget_of``);
- each step of a signed task takes part in at most one secure-aggregation
  session at a node, remembered in its state file across restarts
  (``secagg.session_reused``, ``GovernanceState.claim_secagg_step``).

The nodes are real node apps (``build_client_app`` with permit checker, ledger,
audit trail and policy) played by the test as the coordinator; the re-sent
describe also goes through the real coordinator and node processes.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.clientapp import ClientApp

from oncofed.client.access import revoke
from oncofed.client.sandbox import Sandbox
from oncofed.coordinator.access_store import AccessStore
from oncofed.coordinator.db import open_database
from oncofed.coordinator.store import Store
from oncofed.governance.audit import AuditTrail
from oncofed.governance.envelope import Authorisation, SignedTask
from oncofed.governance.keys import Identity
from oncofed.governance.permits import SignedPermit, SignedRevocations
from oncofed.kernel.errors import NodeUnavailable, OncofedError
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
from oncofed.node import mods
from oncofed.node.app import build_client_app
from oncofed.node.config import DatasetConfig, GovernanceConfig
from oncofed.node.data import Catalogue
from oncofed.node.governance_state import GovernanceState
from oncofed.node.permits import PermitChecker
from oncofed.node.request import NodeRequest, step_digest
from oncofed.node.secure import SecureKeys
from oncofed.privacy.accounting import PRIVACY_RECORD, PrivacyLoss
from oncofed.privacy.dp import DPRequest
from oncofed.privacy.ledger import LEDGER_FILE, PrivacyLedger
from oncofed.privacy.policy import DatasetPrivacy, NodePolicy
from oncofed.tasks.base import TaskParams
from oncofed.tasks.describe import DescribeParams
from oncofed.tasks.glm import GLMParams
from oncofed.tasks.histogram import HistogramParams, HistogramRelease
from oncofed.tasks.quantiles import QuantilesParams
from oncofed.tasks.secure import secure_sum
from tests.coordinator_queue import send_through_the_queue
from tests.node_harness import real_node
from tests.oracle import PERMISSIVE
from tests.pki import day_permit

DATASET, PERMIT = "d", "p1"
DP = DPRequest(epsilon=1.0, delta=1e-6)
AGE_BOUNDS = (18.0, 100.0)
COLUMNS = {
    "age": ColumnSpec(type="integer", bounds=AGE_BOUNDS),
    "status": ColumnSpec(type="integer", bounds=(0.0, 1.0)),
}


def patients(seed: int, n: int = 120) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"age": rng.integers(30, 90, n), "status": rng.integers(0, 2, n)})


def write(work: Path, frame: pd.DataFrame) -> dict[str, DatasetConfig]:
    work.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(work / "d.parquet")
    return {DATASET: DatasetConfig(path=work / "d.parquet", columns=COLUMNS)}


def old_release_key(request: NodeRequest) -> str:
    """The previous keying: the message id and a digest of the text that arrived."""
    asked = hashlib.sha256(f"{request.action}\n{request.params_json}".encode()).hexdigest()
    return f"{request.message_id}:{asked[:32]}"


# ---- one node, played as the coordinator ----------------------------------------


class Centre:
    """A real node and a compromised coordinator's side of it: any message id, any run."""

    def __init__(self, work: Path, policy: NodePolicy, task_types: tuple[str, ...]) -> None:
        node = real_node(
            work,
            "n1",
            write(work, patients(14)),
            policy,
            permit_id=PERMIT,
            task_types=task_types,
        )
        self.app, self.ledger, self.ada = node.app, node.ledger, node.researcher
        self.permit, self.revocations = node.permit, node.revocations
        self._runs = itertools.count(500)

    def sign(self, kind: str, params: TaskParams) -> tuple[SignedTask, int]:
        """The researcher signs ``params``; the run the coordinator relays them in."""
        return SignedTask.create(self.ada, kind, params.model_dump_json(), PERMIT), next(self._runs)

    def send(self, signed: SignedTask, run: int, action: str, params_json: str) -> Message:
        authorisation = Authorisation(task=signed, permit=self.permit, revocations=self.revocations)
        message = Message(params_content(params_json, participants=3), 7, f"query.{action}")
        stamp(message, run_id=run, message_id=uuid.uuid4().hex)  # a new id every time
        attach_authorisation(message, authorisation.model_dump_json())
        reply: Message = self.app(message, node_context(7, run, {}))
        return reply

    def charges(self) -> int:
        return len(self.ledger.charges(PERMIT))


def released(reply: Message) -> bytes:
    assert not reply.has_error(), reply_error(reply).one_line()
    assert PRIVACY_RECORD in reply.content.config_records
    payload: bytes = content_to_bytes(reply.content)
    return payload


def rule_of(reply: Message) -> str:
    assert reply.has_error(), "the node released where it should have refused"
    assert not reply.has_content()
    rule: str = reply_error(reply).rule
    return rule


DESCRIBE = DescribeParams(dataset=DATASET, study=PERMIT, columns=("age",), dp=DP)


@pytest.fixture(scope="module")
def node_work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    install_process_identity()
    return tmp_path_factory.mktemp("one-release")


def test_the_attack_worked_on_message_ids(node_work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: fresh noise and a fresh charge for each new message id."""
    centre = Centre(node_work / "before", NodePolicy(), ("describe",))
    monkeypatch.setattr(NodeRequest, "release_key", property(old_release_key))
    monkeypatch.setattr(mods, "task_budget_of", lambda _request: None)
    signed, run = centre.sign("describe", DESCRIBE)
    replies = [centre.send(signed, run, "describe", DESCRIBE.model_dump_json()) for _ in range(4)]
    assert len({released(r) for r in replies}) == 4  # four independent noisy answers to average
    assert centre.charges() == 4  # and four charges to the researcher's budget


def test_a_step_sent_again_gets_the_same_release(node_work: Path) -> None:
    """Now: under any message id, and however the JSON is spelled, the stored release."""
    centre = Centre(node_work / "now", NodePolicy(), ("describe",))
    signed, run = centre.sign("describe", DESCRIBE)
    text = DESCRIBE.model_dump_json()
    spellings = [
        text,
        text,
        json.dumps(json.loads(text), indent=2),  # other spacing
        json.dumps(dict(reversed(json.loads(text).items()))),  # other key order
        json.dumps({**json.loads(text), "timeout": 120.0}),  # a default spelled out
    ]
    first = released(centre.send(signed, run, "describe", spellings[0]))
    for spelling in spellings[1:]:
        assert released(centre.send(signed, run, "describe", spelling)) == first
    assert centre.charges() == 1


def test_without_the_stored_release_the_task_budget_refuses(
    node_work: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defence in depth: with message-id keying back, the signed dp still buys one release."""
    centre = Centre(node_work / "keyed-by-id", NodePolicy(), ("describe",))
    monkeypatch.setattr(NodeRequest, "release_key", property(old_release_key))
    signed, run = centre.sign("describe", DESCRIBE)
    released(centre.send(signed, run, "describe", DESCRIBE.model_dump_json()))
    again = centre.send(signed, run, "describe", DESCRIBE.model_dump_json())
    assert rule_of(again) == "privacy.task_budget"
    assert reply_error(again).node == "n1" and reply_error(again).fix
    assert centre.charges() == 1


GLM = GLMParams.model_validate(
    {
        "dataset": DATASET,
        "study": PERMIT,
        "formula": "status ~ age",
        "family": "binomial",
        "dp": DP.model_dump(),
        "max_iter": 4,
    }
)
ROOMY = NodePolicy(dp={DATASET: DatasetPrivacy(epsilon=8.0, delta=1e-6, researcher_epsilon=8.0)})
"""A permit budget with room for two whole fits: only the signed task's dp stops the steps."""


def _step(i: int) -> str:
    """The coordinator's i-th Newton step: coefficients of its choosing, a new step each."""
    return json.dumps({**json.loads(GLM.model_dump_json()), "coefficients": [0.0, 0.01 * i]})


def _signed_steps() -> int:
    """How many of those steps the signed dp pays for, composed as the ledger composes."""
    spent, paid = PrivacyLoss.zero(), 0
    for i in itertools.count():
        loss = GLMParams.model_validate_json(_step(i)).release_loss()
        assert loss is not None
        if (spent + loss).epsilon(DP.delta) > DP.epsilon * (1 + 1e-9):
            return paid
        spent, paid = spent + loss, paid + 1
    raise AssertionError("unreachable")


def _newton_steps(centre: Centre, asks: int) -> tuple[int, str]:
    """Ask for ``asks`` steps under one signed fit: how many were released, and the refusal."""
    signed, run = centre.sign("glm", GLM)
    for i in range(asks):
        reply = centre.send(signed, run, "glm", _step(i))
        if reply.has_error():
            return i, rule_of(reply)
        released(reply)
    return asks, ""


ASKS = 8


def test_newton_steps_past_the_signed_max_iter_were_charged_on(
    node_work: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: each extra step was one more noisy look, paid from the permit's budget."""
    assert _signed_steps() <= GLM.iterations < ASKS
    monkeypatch.setattr(mods, "task_budget_of", lambda _request: None)
    centre = Centre(node_work / "glm-before", ROOMY, ("glm",))
    assert _newton_steps(centre, ASKS) == (ASKS, "")
    assert centre.charges() == ASKS


def test_newton_steps_stop_at_what_the_researcher_signed(node_work: Path) -> None:
    centre = Centre(node_work / "glm-now", ROOMY, ("glm",))
    paid = _signed_steps()
    assert _newton_steps(centre, ASKS) == (paid, "privacy.task_budget")
    assert centre.charges() == paid
    # A step asked again is the step already paid for: the stored release, no charge.
    signed, run = centre.sign("glm", GLM)
    first = released(centre.send(signed, run, "glm", _step(50)))
    assert all(released(centre.send(signed, run, "glm", _step(50))) == first for _ in range(3))
    assert centre.charges() == paid + 1


# ---- three nodes and a masked sum -----------------------------------------------

NAMES = ("centre-A", "centre-B", "centre-C")
EDGES = (30.0, 45.0, 60.0, 75.0, 90.0)
HISTOGRAM = HistogramParams(
    dataset=DATASET, study=PERMIT, column="age", bins=EDGES, secure_aggregation=True
)


@dataclass
class Network:
    """Three real nodes with secure aggregation, one body, one researcher, one permit."""

    work: Path
    body: Identity
    ada: Identity
    permit: SignedPermit
    keys: dict[str, Ed25519PrivateKey]
    frames: dict[str, pd.DataFrame]
    apps: dict[int, ClientApp]

    def start(self) -> None:
        """(Re)build every node's app over its state directory: a node restart."""
        peers = {name: key.public_key() for name, key in self.keys.items()}
        for node_id, name in enumerate(NAMES, start=1):
            work = self.work / name
            datasets = write(work, self.frames[name])
            state = GovernanceState.at(work / "state")
            checker = PermitChecker(
                name,
                GovernanceConfig(trusted_bodies={"hdab": self.body.card.signing_key}),
                datasets,
                state,
            )
            ledger = PrivacyLedger.at(work / "state", name)
            catalogue = Catalogue(name, datasets, PERMISSIVE, ledger=ledger)
            audit = AuditTrail.open_sqlite(work / "state" / "audit.sqlite", self.body.signing)
            secure = SecureKeys(self.keys[name], {p: k for p, k in peers.items() if p != name})
            self.apps[node_id] = build_client_app(
                lambda _c, catalogue=catalogue: catalogue, audit, secure, checker
            )

    def masked_sum(
        self,
        signed: SignedTask,
        run: int,
        withhold_mask_from: str | None = None,
        params: TaskParams = HISTOGRAM,
        mask_params: TaskParams | None = None,
    ) -> RecordDict:
        """One secure sum of a signed task's step, as the coordinator's code runs it --
        except that it may withhold one node's mask message (that node drops out), or
        send other parameters at the mask stage than at the others."""
        action = params.__class__.__name__.removesuffix("Params").lower()
        authorisation = Authorisation(
            task=signed, permit=self.permit, revocations=(revoke(self.body, self.work),)
        ).model_dump_json()

        def send(
            ids: list[int], extra: Mapping[int, Mapping[str, ConfigRecord]]
        ) -> tuple[dict[int, RecordDict], list[OncofedError]]:
            replies: dict[int, RecordDict] = {}
            errors: list[OncofedError] = []
            for node_id in ids:
                records = extra.get(node_id, {})
                stage = str(next(iter(records.values()))["stage"])
                if stage == "mask" and NAMES[node_id - 1] == withhold_mask_from:
                    errors.append(NodeUnavailable("no reply", rule="task.timeout"))
                    continue
                sent = mask_params if stage == "mask" and mask_params is not None else params
                content = params_content(sent.model_dump_json(), participants=len(ids))
                for name, record in records.items():
                    content[name] = record
                message = Message(content, node_id, f"query.{action}")
                stamp(message, run_id=run, message_id=uuid.uuid4().hex)
                attach_authorisation(message, authorisation)
                reply = self.apps[node_id](message, node_context(node_id, run, {}))
                if reply.has_error():
                    errors.append(reply_error(reply))
                else:
                    replies[node_id] = reply.content
            return replies, errors

        total: RecordDict = secure_sum(send, sorted(self.apps)).total
        return total


def counts(total: RecordDict) -> list[int]:
    return [int(c) for c in HistogramRelease.from_content(total).counts]


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    install_process_identity()
    work = tmp_path_factory.mktemp("secagg")
    body, ada = Identity.generate("hdab", "hdab"), Identity.generate("ada", "researcher")
    permit = day_permit(
        body,
        ada,
        permit_id=PERMIT,
        dataset=DATASET,
        task_types=("histogram", "quantiles"),
        release="exact",
    )
    net = Network(
        work=work,
        body=body,
        ada=ada,
        permit=permit,
        keys={name: Ed25519PrivateKey.generate() for name in NAMES},
        frames={name: patients(seed) for seed, name in enumerate(NAMES)},
        apps={},
    )
    net.start()
    yield net


def refusals(error: OncofedError) -> set[tuple[str, str]]:
    """Every node's refusal behind a combined error, as (rule, node)."""
    return {(str(e["rule"]), str(e["node"])) for e in error.context["errors"]}


def _truth(frame: pd.DataFrame) -> list[int]:
    return [int(c) for c in np.histogram(frame["age"], bins=EDGES)[0]]


def test_a_faked_dropout_subtracted_a_node_before(
    network: Network, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: nothing tied a session to one use per signed step."""
    monkeypatch.setattr(GovernanceState, "claim_secagg_step", lambda *_args: True)
    signed = SignedTask.create(network.ada, "histogram", HISTOGRAM.model_dump_json(), PERMIT)
    everyone = counts(network.masked_sum(signed, 900))
    assert everyone == _truth(pd.concat(network.frames.values()))
    without_c = counts(network.masked_sum(signed, 900, withhold_mask_from="centre-C"))
    leaked = [a - b for a, b in zip(everyone, without_c, strict=True)]
    assert leaked == _truth(network.frames["centre-C"])  # centre-C's own counts, exactly


def test_a_second_session_for_the_same_step_is_refused(network: Network) -> None:
    signed = SignedTask.create(network.ada, "histogram", HISTOGRAM.model_dump_json(), PERMIT)
    everyone = counts(network.masked_sum(signed, 901))
    assert everyone == _truth(pd.concat(network.frames.values()))
    with pytest.raises(OncofedError) as caught:
        network.masked_sum(signed, 901, withhold_mask_from="centre-C")
    assert refusals(caught.value) == {("secagg.session_reused", n) for n in NAMES}
    assert caught.value.fix

    # The nodes restart: what they remember is in their state files, not their memory.
    network.start()
    with pytest.raises(OncofedError) as caught:
        network.masked_sum(signed, 901, withhold_mask_from="centre-C")
    assert refusals(caught.value) == {("secagg.session_reused", n) for n in NAMES}

    # Another signed task (the researcher's own new submission) gets a session of its own.
    again = SignedTask.create(network.ada, "histogram", HISTOGRAM.model_dump_json(), PERMIT)
    assert counts(network.masked_sum(again, 902)) == everyone


def test_the_mask_stage_must_ask_for_the_step_its_session_began_with(network: Network) -> None:
    """A session started for one step cannot compute another: each step has its own session.

    (A DP quantile search is one grid histogram and reads no probe; a probe the
    coordinator adds still makes another step, whose parameters the session
    was not started for.)
    """
    quantiles = QuantilesParams(
        dataset=DATASET,
        study=PERMIT,
        column="age",
        q=0.5,
        lower=0.0,
        upper=128.0,
        tolerance=1.0,
        dp=DP,
        secure_aggregation=True,
    )
    first, second = quantiles, quantiles.model_copy(update={"probe": (32,)})
    signed = SignedTask.create(network.ada, "quantiles", quantiles.model_dump_json(), PERMIT)
    with pytest.raises(OncofedError) as caught:
        network.masked_sum(signed, 903, params=first, mask_params=second)
    assert refusals(caught.value) == {("secagg.step_changed", n) for n in NAMES}
    # Each probe through its own session is what the task does, and is answered.
    network.masked_sum(signed, 903, params=second)


def test_records_no_handler_reads_are_refused(node_work: Path) -> None:
    """Else a coordinator could make the same step look new by adding a record to it."""
    centre = Centre(node_work / "content", NodePolicy(), ("describe",))
    signed, run = centre.sign("describe", DESCRIBE)
    authorisation = Authorisation(task=signed, permit=centre.permit, revocations=centre.revocations)
    message = Message(params_content(DESCRIBE.model_dump_json(), 3), 7, "query.describe")
    message.content["junk"] = ConfigRecord({"nonce": uuid.uuid4().hex})
    stamp(message, run_id=run, message_id=uuid.uuid4().hex)
    attach_authorisation(message, authorisation.model_dump_json())
    assert rule_of(centre.app(message, node_context(7, run, {}))) == "task.content"
    assert centre.charges() == 0


def test_a_model_steps_weights_count_by_value_not_by_encoding() -> None:
    """The same weights sent in another memory layout are the same step."""
    weights = np.arange(6.0).reshape(2, 3)
    digests = {
        step_digest("train", DESCRIBE, RecordDict({"arrays": ArrayRecord({"w": Array(layout)})}))
        for layout in (weights, np.asfortranarray(weights), weights.copy())
    }
    assert len(digests) == 1
    moved = RecordDict({"arrays": ArrayRecord({"w": Array(weights + 1e-12)})})
    assert step_digest("train", DESCRIBE, moved) not in digests


# ---- through the real coordinator -----------------------------------------------

NODE = "centre-B"


def _send_through_the_queue(
    store: Store, action: str, params: dict[str, Any], authorisation: str, run_id: int
) -> Message:
    """What a compromised coordinator does: write a message into its own queue."""
    return send_through_the_queue(store, NODE, action, params, authorisation, run_id)[0]


@pytest.mark.slow
def test_the_real_coordinator_gets_one_release_per_step(default_net: Sandbox) -> None:
    """The attack as found: the coordinator re-sends a signed DP describe in one run."""
    install_process_identity()
    permit = default_net.grant("resend-1")
    engine = open_database(default_net.database_url)
    store = Store(engine)
    revocations = tuple(
        SignedRevocations.model_validate_json(t) for t in AccessStore(engine).revocation_lists()
    )
    params = {
        "dataset": "lung",
        "columns": ["age"],
        "study": "resend-1",
        "dp": {"epsilon": 0.5},
        "bounds": {"age": list(AGE_BOUNDS)},
    }
    ada = default_net.identity(default_net.researcher)
    signed = SignedTask.create(ada, "describe", json.dumps(params), "resend-1")
    authorisation = Authorisation(
        task=signed, permit=permit, revocations=revocations
    ).model_dump_json()
    run = store.create_task("describe", "{}", "attacker")
    assert run is not None
    replies = [
        _send_through_the_queue(store, "describe", params, authorisation, run.run_id)
        for _ in range(4)
    ]
    assert len({released(r) for r in replies}) == 1  # one release, sent four times
    ledger = PrivacyLedger(f"sqlite:///{default_net.workdir / NODE / 'state' / LEDGER_FILE}", NODE)
    try:
        assert len(ledger.charges("resend-1")) == 1
    finally:
        ledger.close()
