"""The one permit check, rule by rule, as the coordinator and every node run it."""

from __future__ import annotations

import datetime
import json
from typing import Any

import pytest

from oncofed.governance.envelope import SignedTask
from oncofed.governance.keys import Identity
from oncofed.governance.permit_check import Grant, TaskKind, check_task
from oncofed.governance.permits import (
    DatasetGrant,
    Permit,
    Purpose,
    RevocationList,
    RevokedPermit,
    utcnow,
)
from oncofed.kernel.errors import PermitRefused
from oncofed.tasks.describe import DescribeParams

BODY = Identity.generate("hdab", "hdab")
ADA = Identity.generate("ada", "researcher")
MALLORY = Identity.generate("mallory", "researcher")
NOW = utcnow()
DESCRIBE = TaskKind("describe", returns_models=False, has_dp=True)


def _permit(**changes: Any) -> Permit:
    fields: dict[str, Any] = {
        "permit_id": "p1",
        "issuer": BODY.card,
        "holder": "Example Hospital",
        "purposes": (Purpose.STATISTICS,),
        "persons": (ADA.card,),
        "datasets": (
            DatasetGrant(dataset="lung", variables=("age", "sex"), epsilon=2.0, release="exact"),
        ),
        "task_types": ("describe", "spatial_scan"),
        "valid_from": NOW - datetime.timedelta(days=1),
        "valid_until": NOW + datetime.timedelta(days=30),
    }
    return Permit.model_validate({**fields, **changes})


def _list(*revoked: RevokedPermit, due_in: float = 24.0) -> RevocationList:
    return RevocationList(
        issuer=BODY.card,
        sequence=1,
        issued_at=NOW,
        next_update=NOW + datetime.timedelta(hours=due_in),
        revoked=revoked,
    )


def _params(**changes: Any) -> DescribeParams:
    return DescribeParams.model_validate(
        {"dataset": "lung", "columns": ["age"], "study": "p1"} | changes
    )


def _check(
    permit: Permit | None = None,
    signer: Identity = ADA,
    request: DescribeParams | None = None,
    signed_request: DescribeParams | None = None,
    revocations: RevocationList | None = None,
    kind: TaskKind = DESCRIBE,
    task_permit: str = "p1",
    now: datetime.datetime = NOW,
) -> Grant:
    request = request or _params()
    signed = SignedTask.create(signer, kind.name, request.model_dump_json(), task_permit)
    return check_task(
        permit=permit or _permit(),
        signed=signed,
        kind=kind,
        request=request,
        signed_request=signed_request or request,
        revocations=revocations if revocations is not None else _list(),
        now=now,
        node="centre-A",
    )


def test_a_covered_task_gets_its_grant() -> None:
    grant = _check()
    assert grant.task.researcher == "ada"
    assert grant.epsilon == 2.0
    assert json.loads(grant.task.params_json)["columns"] == ["age"]


@pytest.mark.parametrize(
    ("case", "rule"),
    [
        ("expired", "permit.validity"),
        ("no revocation list", "permit.revocations_stale"),
        ("revocation list overdue", "permit.revocations_stale"),
        ("revoked", "permit.revoked"),
        ("superseded", "permit.superseded"),
        ("person not named", "permit.person"),
        ("signed for another permit", "task.permit"),
        ("task type not allowed", "permit.task_type"),
        ("models may not leave", "permit.output"),
        ("parameters altered", "task.altered"),
        ("study is not the permit", "task.permit"),
        ("dataset not granted", "permit.dataset"),
        ("variable not granted", "permit.variables"),
        ("exact answer under a DP-only permit", "permit.release"),
        ("exact answer on a filter the permit does not name", "permit.cohort"),
    ],
)
def test_each_rule_refuses_with_its_name_and_the_node(case: str, rule: str) -> None:
    attempts: dict[str, Any] = {
        "expired": lambda: _check(now=NOW + datetime.timedelta(days=31)),
        "no revocation list": lambda: check_task(
            permit=_permit(),
            signed=SignedTask.create(ADA, "describe", "{}", "p1"),
            kind=DESCRIBE,
            request=_params(),
            signed_request=_params(),
            revocations=None,
            now=NOW,
            node="centre-A",
        ),
        "revocation list overdue": lambda: _check(revocations=_list(due_in=-1)),
        "revoked": lambda: _check(revocations=_list(RevokedPermit(permit_id="p1", revoked_at=NOW))),
        "superseded": lambda: _check(
            revocations=_list(RevokedPermit(permit_id="p1", revoked_at=NOW, before_version=2))
        ),
        "person not named": lambda: _check(signer=MALLORY),
        "signed for another permit": lambda: _check(task_permit="p2"),
        "task type not allowed": lambda: _check(
            kind=TaskKind("glm", returns_models=False, has_dp=False)
        ),
        "models may not leave": lambda: _check(
            permit=_permit(task_types=("describe",)),
            kind=TaskKind("describe", returns_models=True, has_dp=True),
        ),
        "parameters altered": lambda: _check(
            request=_params(columns=["age", "sex"]), signed_request=_params()
        ),
        "study is not the permit": lambda: _check(request=_params(study="other")),
        "dataset not granted": lambda: _check(request=_params(dataset="gbsg2")),
        "variable not granted": lambda: _check(request=_params(columns=["ph.karno"])),
        "exact answer under a DP-only permit": lambda: _check(permit=_dp_only()),
        "exact answer on a filter the permit does not name": lambda: _check(
            request=_params(where="age < 60 or sex == 1")
        ),
    }
    with pytest.raises(PermitRefused) as caught:
        attempts[case]()
    assert (caught.value.rule, caught.value.node) == (rule, "centre-A")
    assert caught.value.fix


def test_a_permit_naming_a_type_this_party_lacks_still_covers_the_types_it_has() -> None:
    # "spatial_scan" is not installed anywhere; the permit parses and covers describe.
    assert _check(permit=_permit()).permit.task_types == ("describe", "spatial_scan")


def _dp_only() -> Permit:
    return _permit(datasets=(DatasetGrant(dataset="lung", variables=("age", "sex")),))


def test_a_dp_only_permit_covers_requests_that_ask_for_dp() -> None:
    grant = _check(permit=_dp_only(), request=_params(dp={"epsilon": 0.5}))
    assert grant.dataset.release == "dp"


def test_the_fix_for_an_exact_request_depends_on_whether_the_task_has_dp() -> None:
    with pytest.raises(PermitRefused) as describe:
        _check(permit=_dp_only())
    assert 'dp={"epsilon": 0.5}' in describe.value.fix and "--dp epsilon=0.5" in describe.value.fix
    logrank_like = TaskKind("describe", returns_models=False, has_dp=False)
    with pytest.raises(PermitRefused) as other:
        _check(permit=_dp_only(), kind=logrank_like)
    assert "release = exact" in other.value.fix


def test_permits_signed_before_release_modes_existed_still_verify() -> None:
    """A DP grant leaves the field out of the signed payload: old signatures hold."""
    permit = _dp_only()
    payload = permit.model_dump(mode="json")
    assert all("release" not in grant for grant in payload["datasets"])
    signed = permit.sign(BODY.signing)
    assert signed.verified({"hdab": BODY.card.verifying_key()}) == permit
    exact = _permit()
    assert exact.model_dump(mode="json")["datasets"][0]["release"] == "exact"


def _with_cohorts(cohorts: dict[str, str] | None) -> Permit:
    grant = DatasetGrant(dataset="lung", variables=("age", "sex"), release="exact", cohorts=cohorts)
    return _permit(datasets=(grant,))


def test_exact_requests_filter_only_on_the_permits_cohorts() -> None:
    """A tracker needs two free filters; the body names the subsets exact answers may use."""
    permit = _with_cohorts({"elderly": "age >= 70", "women": "sex == 2"})
    # The same filter however it is written; no filter at all.
    assert _check(permit=permit, request=_params(where="age>=70"))
    assert _check(permit=permit, request=_params())
    with pytest.raises(PermitRefused) as caught:
        _check(permit=permit, request=_params(where="age >= 70 or sex == 1"))
    assert caught.value.rule == "permit.cohort"
    assert "elderly: 'age >= 70'; women: 'sex == 2'" in caught.value.fix
    # Under DP the filter is free: the noise and the budget cover it.
    dp = _params(where="age >= 70 or sex == 1", dp={"epsilon": 0.5})
    assert _check(permit=_with_cohorts({}), request=dp)
    # A body that lets exact requests filter freely says so explicitly (null).
    assert _check(permit=_with_cohorts(None), request=_params(where="age < 60 or sex == 1"))
    assert "cohorts" not in _permit().model_dump(mode="json")["datasets"][0]
