"""Zero trust toward the coordinator: each attack is a message the coordinator itself sends.

The attacker here *is* the coordinator: the test writes task messages straight
into the coordinator's database (its queue), and the real node processes
receive them over their mutual-TLS streams and answer. Every refusal must
come from the node itself, naming the rule and the node. A first message
built the honest way is released, so the harness can tell a refusal from a
broken test.
"""

from __future__ import annotations

import datetime
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import pandas as pd
import pytest

from oncofed.client.access import DataAccessClient, draft_permit
from oncofed.client.sandbox import HDAB, Sandbox
from oncofed.client.session import Session
from oncofed.coordinator.access_store import AccessStore
from oncofed.coordinator.db import open_database
from oncofed.coordinator.store import Store
from oncofed.governance.audit import AuditTrail
from oncofed.governance.envelope import Authorisation, SignedTask, TaskEnvelope
from oncofed.governance.keys import Identity
from oncofed.governance.permits import (
    DataAccessApplication,
    SignedPermit,
    SignedRevocations,
    utcnow,
)
from oncofed.governance.tls import TlsFiles, client_channel
from oncofed.kernel.errors import AccessDenied, OncofedError, PermitRefused, TaskCancelled
from oncofed.kernel.flower import (
    install_process_identity,
    reply_error,
)
from oncofed.kernel.wire import oncofed_pb2 as pb
from oncofed.kernel.wire.oncofed_pb2_grpc import ResearcherStub
from tests.coordinator_queue import send_through_the_queue
from tests.integration.test_first_hour import guide_application
from tests.pki import revoke_by_cli

NODE = "centre-B"


@pytest.fixture(scope="module")
def net(lung: pd.DataFrame) -> Iterator[Sandbox]:
    install_process_identity()
    with Sandbox.from_frame(lung, split_by="centre", dataset="lung", release="exact") as sandbox:
        sandbox.enrol("mallory", "researcher")
        sandbox.grant("study-1")
        yield sandbox


class Attacker:
    """What a compromised coordinator can do: write any message into its own queue."""

    def __init__(self, net: Sandbox) -> None:
        engine = open_database(net.database_url)
        self.net = net
        self.store = Store(engine)
        self.access = AccessStore(engine)

    def permit(self, permit_id: str) -> SignedPermit:
        published = self.access.permit(permit_id)
        assert published is not None
        return SignedPermit.model_validate_json(published)

    def revocations(self) -> tuple[SignedRevocations, ...]:
        return tuple(
            SignedRevocations.model_validate_json(t) for t in self.access.revocation_lists()
        )

    def send(
        self,
        action: str,
        params: dict[str, Any],
        authorisation: Authorisation | None,
        run_id: int | None = None,
    ) -> tuple[OncofedError | None, int]:
        """One message to NODE; its typed refusal (None if released) and the run id used."""
        signed = authorisation.model_dump_json() if authorisation is not None else None
        reply, run = send_through_the_queue(self.store, NODE, action, params, signed, run_id)
        return (reply_error(reply) if reply.has_error() else None), run


@pytest.fixture(scope="module")
def attacker(net: Sandbox) -> Attacker:
    return Attacker(net)


def _describe(permit_id: str, columns: tuple[str, ...] = ("age",)) -> dict[str, Any]:
    return {"dataset": "lung", "columns": list(columns), "study": permit_id}


def _authorise(
    attacker: Attacker,
    permit: SignedPermit,
    params: dict[str, Any],
    signer: Identity,
    task_type: str = "describe",
) -> Authorisation:
    task = SignedTask.create(signer, task_type, json.dumps(params), permit.permit.permit_id)
    return Authorisation(task=task, permit=permit, revocations=attacker.revocations())


def _refusal(error: OncofedError | None, rule: str) -> None:
    assert isinstance(error, PermitRefused), error
    assert (error.rule, error.node) == (rule, NODE), error.one_line()


def test_an_honest_message_is_released(net: Sandbox, attacker: Attacker) -> None:
    params = _describe("study-1")
    ada = net.identity(net.researcher)
    error, _ = attacker.send(
        "describe", params, _authorise(attacker, attacker.permit("study-1"), params, ada)
    )
    assert error is None


def test_a_message_without_a_permit_is_refused(attacker: Attacker) -> None:
    error, _ = attacker.send("describe", _describe("study-1"), None)
    _refusal(error, "permit.missing")


def test_a_forged_permit_is_refused(net: Sandbox, attacker: Attacker) -> None:
    real = attacker.permit("study-1")
    widened = real.permit.model_copy(
        update={"valid_until": utcnow() + datetime.timedelta(days=900)}
    )
    forged = SignedPermit(permit=widened, signature=real.signature)
    params = _describe("study-1")
    error, _ = attacker.send(
        "describe", params, _authorise(attacker, forged, params, net.identity(net.researcher))
    )
    _refusal(error, "permit.signature")


def test_a_permit_signed_by_a_body_the_node_does_not_trust_is_refused(
    net: Sandbox, attacker: Attacker
) -> None:
    impostor = Identity.generate(HDAB, "hdab")  # same name, the coordinator's own key
    permit = attacker.permit("study-1").permit.model_copy(update={"issuer": impostor.card})
    params = _describe("study-1")
    signed = permit.sign(impostor.signing)
    error, _ = attacker.send(
        "describe", params, _authorise(attacker, signed, params, net.identity(net.researcher))
    )
    _refusal(error, "permit.issuer")


def test_an_expired_permit_is_refused(net: Sandbox, attacker: Attacker) -> None:
    now = utcnow()
    net.grant(
        "expired",
        valid_from=now - datetime.timedelta(days=10),
        valid_until=now - datetime.timedelta(days=1),
    )
    params = _describe("expired")
    error, _ = attacker.send(
        "describe",
        params,
        _authorise(attacker, attacker.permit("expired"), params, net.identity(net.researcher)),
    )
    _refusal(error, "permit.validity")


def test_a_permit_for_another_dataset_is_refused(net: Sandbox, attacker: Attacker) -> None:
    net.grant("other-data", datasets=["gbsg2"])
    params = _describe("other-data")
    error, _ = attacker.send(
        "describe",
        params,
        _authorise(attacker, attacker.permit("other-data"), params, net.identity(net.researcher)),
    )
    _refusal(error, "permit.dataset")


def test_variables_the_permit_does_not_grant_are_refused(net: Sandbox, attacker: Attacker) -> None:
    net.grant("age-only", variables=["age"])
    params = _describe("age-only", ("age", "wt.loss"))
    error, _ = attacker.send(
        "describe",
        params,
        _authorise(attacker, attacker.permit("age-only"), params, net.identity(net.researcher)),
    )
    _refusal(error, "permit.variables")


def test_a_researcher_the_permit_does_not_name_is_refused(net: Sandbox, attacker: Attacker) -> None:
    params = _describe("study-1")
    error, _ = attacker.send(
        "describe",
        params,
        _authorise(attacker, attacker.permit("study-1"), params, net.identity("mallory")),
    )
    _refusal(error, "permit.person")


def test_a_task_signed_with_another_key_than_the_permits_is_refused(
    net: Sandbox, attacker: Attacker
) -> None:
    # The coordinator signs in ada's name with a key of its own.
    fake_ada = Identity.generate(net.researcher, "researcher")
    params = _describe("study-1")
    error, _ = attacker.send(
        "describe", params, _authorise(attacker, attacker.permit("study-1"), params, fake_ada)
    )
    _refusal(error, "task.signature")


def test_a_task_type_the_permit_does_not_allow_is_refused(net: Sandbox, attacker: Attacker) -> None:
    net.grant("describe-only", task_types=["describe"])
    params = {
        "dataset": "lung",
        "row": "sex",
        "col": "status",
        "study": "describe-only",
        "row_categories": ["1", "2"],
        "col_categories": ["1", "2"],
    }
    permit = attacker.permit("describe-only")
    error, _ = attacker.send(
        "crosstab",
        params,
        _authorise(attacker, permit, params, net.identity(net.researcher), task_type="crosstab"),
    )
    _refusal(error, "permit.task_type")


def test_a_task_altered_after_signing_is_refused(net: Sandbox, attacker: Attacker) -> None:
    signed_params = _describe("study-1")
    authorisation = _authorise(
        attacker, attacker.permit("study-1"), signed_params, net.identity(net.researcher)
    )
    sneaked = _describe("study-1", ("age", "wt.loss"))
    error, _ = attacker.send("describe", sneaked, authorisation)
    _refusal(error, "task.altered")
    assert "columns" in error.detail if error else False
    # Nor may it run the signed parameters as another task type.
    histogram = {"dataset": "lung", "column": "age", "bins": [40, 60, 80], "study": "study-1"}
    error, _ = attacker.send("histogram", histogram, authorisation)
    _refusal(error, "task.altered")


def test_a_replayed_task_is_refused(net: Sandbox, attacker: Attacker) -> None:
    params = _describe("study-1")
    authorisation = _authorise(
        attacker, attacker.permit("study-1"), params, net.identity(net.researcher)
    )
    first, run = attacker.send("describe", params, authorisation)
    assert first is None
    again, _ = attacker.send("describe", params, authorisation, run_id=run)
    assert again is None  # the same run may ask again (a coordinator restart replays it)
    replay, _ = attacker.send("describe", params, authorisation)
    _refusal(replay, "task.replay")


def test_a_run_carries_one_signed_task_only(net: Sandbox, attacker: Attacker) -> None:
    """Else an approval, or the binding of a nonce, given to one task would cover another."""
    ada = net.identity(net.researcher)
    params = _describe("study-1")
    first, run = attacker.send(
        "describe", params, _authorise(attacker, attacker.permit("study-1"), params, ada)
    )
    assert first is None
    other = _describe("study-1", ("age", "wt.loss"))
    error, _ = attacker.send(
        "describe", other, _authorise(attacker, attacker.permit("study-1"), other, ada), run_id=run
    )
    _refusal(error, "task.replay")


def test_masking_the_researcher_signed_for_cannot_be_stripped(
    net: Sandbox, attacker: Attacker
) -> None:
    params = {
        "dataset": "lung",
        "column": "age",
        "bins": [30, 60, 90],
        "study": "study-1",
        "secure_aggregation": True,
    }
    authorisation = _authorise(
        attacker,
        attacker.permit("study-1"),
        params,
        net.identity(net.researcher),
        task_type="histogram",
    )
    error, _ = attacker.send("histogram", params, authorisation)
    assert error is not None and (error.rule, error.node) == ("secagg.required", NODE)


def test_a_task_dated_in_the_future_is_refused(net: Sandbox, attacker: Attacker) -> None:
    ada = net.identity(net.researcher)
    params = _describe("study-1")
    task = TaskEnvelope(
        task_type="describe",
        params_json=json.dumps(params),
        permit_id="study-1",
        researcher=ada.name,
        nonce=uuid.uuid4().hex,
        issued_at=time.time() + 3600,
    )
    authorisation = Authorisation(
        task=SignedTask(task=task, signature=ada.sign(task.payload())),
        permit=attacker.permit("study-1"),
        revocations=attacker.revocations(),
    )
    error, _ = attacker.send("describe", params, authorisation)
    _refusal(error, "task.clock")


def test_a_revoked_permit_is_refused_even_when_the_coordinator_relays_an_older_list(
    net: Sandbox, attacker: Attacker
) -> None:
    net.grant("to-revoke")
    before = attacker.revocations()
    params = _describe("to-revoke")
    ada = net.identity(net.researcher)
    error, _ = attacker.send(
        "describe", params, _authorise(attacker, attacker.permit("to-revoke"), params, ada)
    )
    assert error is None
    net.publish_revocations(["to-revoke"])
    error, _ = attacker.send(
        "describe", params, _authorise(attacker, attacker.permit("to-revoke"), params, ada)
    )
    _refusal(error, "permit.revoked")
    # Withholding: the coordinator relays the list from before the revocation.
    stale = Authorisation(
        task=SignedTask.create(ada, "describe", json.dumps(params), "to-revoke"),
        permit=attacker.permit("to-revoke"),
        revocations=before,
    )
    error, _ = attacker.send("describe", params, stale)
    _refusal(error, "permit.revoked")


def test_an_amended_permits_older_version_is_refused(net: Sandbox, attacker: Attacker) -> None:
    ada = net.identity(net.researcher)
    net.grant("amended")
    wider = attacker.permit("amended")
    net.grant("amended", version=2, variables=["age"])  # the body narrows it
    both = _describe("amended", ("age", "wt.loss"))
    error, _ = attacker.send("describe", both, _authorise(attacker, wider, both, ada))
    _refusal(error, "permit.superseded")
    age = _describe("amended")
    current = attacker.permit("amended")
    assert current.permit.version == 2
    error, _ = attacker.send("describe", age, _authorise(attacker, current, age, ada))
    assert error is None


def test_revocation_stops_a_running_task(net: Sandbox) -> None:
    net.grant("running")
    with net.session(permit="running", progress=False) as session:
        task_id = session.submit(
            "describe", dataset="lung", columns=["age"], min_nodes=50, timeout=600
        )
        net.publish_revocations(["running"])
        with pytest.raises(TaskCancelled):
            session.wait(task_id)
        with pytest.raises(PermitRefused) as caught:
            session.describe(["age"])
    assert caught.value.rule == "permit.revoked"


def test_a_withheld_revocation_list_stops_all_work_once_it_is_due(
    net: Sandbox, attacker: Attacker
) -> None:
    """A list that is not renewed expires; the coordinator cannot keep a node working by
    withholding the next one. (It renews the list before it ends.)"""
    net.publish_revocations(valid_for=datetime.timedelta(seconds=3))
    time.sleep(3.5)
    params = _describe("study-1")
    error, _ = attacker.send(
        "describe",
        params,
        _authorise(attacker, attacker.permit("study-1"), params, net.identity(net.researcher)),
    )
    _refusal(error, "permit.revocations_stale")
    net.publish_revocations()
    with net.session(permit="study-1", progress=False) as session:
        assert session.describe(["age"]).rows[0].count > 0


def _submit(net: Sandbox, caller: str, signed: SignedTask) -> str:
    folder = TlsFiles.in_directory(net.credentials(caller))
    with client_channel(net.address, folder, []) as channel:
        request = pb.SubmitRequest(signed_task_json=signed.model_dump_json())
        return str(ResearcherStub(channel).Submit(request, timeout=30).task_id)


def _rejected(call: Any) -> tuple[grpc.StatusCode, OncofedError]:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    error = caught.value
    assert isinstance(error, grpc.Call)
    return error.code(), OncofedError.from_json(error.details() or "")


def test_the_coordinator_runs_a_signed_task_once(net: Sandbox) -> None:
    ada = net.identity(net.researcher)
    signed = SignedTask.create(ada, "describe", json.dumps(_describe("study-1")), "study-1")
    assert _submit(net, net.researcher, signed)
    code, error = _rejected(lambda: _submit(net, net.researcher, signed))
    assert code == grpc.StatusCode.ALREADY_EXISTS and error.rule == "task.replay"


def test_a_researcher_cannot_submit_a_task_signed_by_another(net: Sandbox) -> None:
    ada = net.identity(net.researcher)
    signed = SignedTask.create(ada, "describe", json.dumps(_describe("study-1")), "study-1")
    code, error = _rejected(lambda: _submit(net, "mallory", signed))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert (type(error), error.rule) == (AccessDenied, "task.signer")


def test_a_node_whose_certificate_is_revoked_is_cut_off_mid_stream(net: Sandbox) -> None:
    """Last: it takes centre-D out of this network."""
    revoke_by_cli(net.pki / "ca", "centre-D")
    deadline = time.monotonic() + 30
    with net.session(permit="study-1", progress=False) as session:
        while True:
            nodes = session.nodes().set_index("name")
            if not nodes.loc["centre-D", "online"]:
                break
            assert time.monotonic() < deadline, "the revoked node stayed connected"
            time.sleep(0.5)
        time.sleep(3)  # its reconnects are refused at the door
        assert not session.nodes().set_index("name").loc["centre-D", "online"]
        assert "auth.revoked" in net.log_tail("centre-D", 50) or "UNAUTHENTICATED" in (
            net.log_tail("centre-D", 50)
        )


def test_one_body_cannot_publish_in_anothers_name_or_over_its_permit(net: Sandbox) -> None:
    other = net.enrol("hdab-se", "hdab")
    body_se = net.identity("hdab-se")
    ours = Attacker(net).permit("study-1")
    with DataAccessClient(net.address, other) as client:
        with pytest.raises(AccessDenied) as caught:
            client.publish_permit(ours)  # hdab's own permit, published by hdab-se
        assert caught.value.rule == "permit.publisher"
        taken = ours.permit.model_copy(update={"issuer": body_se.card, "version": 9})
        with pytest.raises(AccessDenied) as caught:
            client.publish_permit(taken.sign(body_se.signing))
        assert caught.value.rule == "permit.owner"
    assert Attacker(net).permit("study-1") == ours


def test_a_body_sees_and_cancels_only_tasks_under_its_own_permits(net: Sandbox) -> None:
    """Another data-access body of the network cannot follow, open the result of, or
    cancel a task under this body's permit: it gets the answer a task that does not exist
    gets, and the coordinator audits each try. The permit's own issuer makes the same calls
    and is answered (and opens the result, which is sealed to it)."""
    outsider = net.enrol("hdab-no", "hdab")
    with net.session(permit="scoped-by-issuer", progress=False) as researcher:
        task_id = researcher.submit("describe", columns=["age"])
        researcher.wait(task_id)
    ref = pb.TaskRef(task_id=task_id)
    with client_channel(net.address, TlsFiles.in_directory(outsider), []) as channel:
        stub = ResearcherStub(channel)
        for attempt in (
            lambda: next(iter(stub.Watch(ref, timeout=30))),
            lambda: stub.Result(ref, timeout=30),
            lambda: stub.Cancel(ref, timeout=30),
        ):
            with pytest.raises(grpc.RpcError) as caught:
                attempt()
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND
            refusal = OncofedError.from_json(caught.value.details())
            assert refusal.rule == "task.exists" and f"no task {task_id!r}" in refusal.detail
    with Session(net.address, credentials=net.credentials(HDAB), progress=False) as issuer:
        assert issuer.status(task_id).state == "succeeded"
        assert json.loads(issuer.wait(task_id))["rows"]
        assert issuer.cancel(task_id) == "succeeded"  # finished already: nothing to cancel
    trail = AuditTrail(open_database(net.database_url), create=False)
    refused = [e for e in trail.entries() if e.actor == "hdab-no" and e.rule == "task.exists"]
    assert sorted(e.action for e in refused) == ["cancel", "result", "watch"]


def test_decisions_follow_the_applications_state(net: Sandbox) -> None:
    """A submitted application takes any decision; one sent back for changes only a
    refusal until its applicant amends it; approved and refused ones are final, and no
    permit can answer a refused one. Each refusal names the state and what to do."""
    document = DataAccessApplication.model_validate(guide_application(net))
    with (
        DataAccessClient(net.address, net.credentials(net.researcher)) as researcher,
        DataAccessClient(net.address, net.credentials(HDAB)) as body,
    ):

        def file() -> str:
            return str(researcher.submit_application(document).application_id)

        def refused_decision(application_id: str, decision: str) -> str:
            with pytest.raises(OncofedError) as caught:
                body.decide(application_id, decision, "a note")
            assert caught.value.rule == "application.state"
            return caught.value.fix

        sent_back = file()
        assert body.decide(sent_back, "request-changes", "say why").state == "changes-requested"
        assert "amendment" in refused_decision(sent_back, "approve")
        assert body.decide(sent_back, "refuse", "withdrawn").state == "refused"

        approved = file()
        assert body.decide(approved, "approve").state == "approved"
        assert "revoke its permit" in refused_decision(approved, "refuse")

        closed = file()
        assert body.decide(closed, "refuse", "out of scope").state == "refused"
        assert "new application" in refused_decision(closed, "approve")
        permit = draft_permit(
            document, body.identity, permit_id="answers-a-refusal", application_id=closed
        ).sign(body.identity.signing)
        with pytest.raises(OncofedError) as caught:
            body.publish_permit(permit)
        assert caught.value.rule == "application.state"
        assert body.application(closed).state == "refused"
