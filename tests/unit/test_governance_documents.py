"""Permits, applications, revocation lists and sealed results, each checked against misuse."""

from __future__ import annotations

import dataclasses
import datetime
import json
from pathlib import Path

import pytest
from cryptography import x509
from pydantic import ValidationError

from oncofed.client.access import draft_permit, revoke
from oncofed.governance.envelope import SignedTask
from oncofed.governance.keys import Identity
from oncofed.governance.permits import (
    DataAccessApplication,
    DatasetRequest,
    Purpose,
    SignedPermit,
    check_validity,
    utcnow,
)
from oncofed.governance.pki import init_network, issue, issued, request
from oncofed.governance.pki import revoke as revoke_certificate
from oncofed.governance.sealing import open_sealed, seal
from oncofed.kernel.errors import AccessDenied, ConfigError, PermitRefused, UnknownTask
from oncofed.tasks import check_installed

ADA = Identity.generate("ada", "researcher")
BOB = Identity.generate("bob", "researcher")
BODY = Identity.generate("hdab-fi", "hdab")


def _application(**changes: object) -> DataAccessApplication:
    fields: dict[str, object] = {
        "applicant": ADA.card,
        "organisation": "Example Hospital",
        "persons": (ADA.card,),
        "purposes": (Purpose.SCIENTIFIC_RESEARCH,),
        "description": "Survival by sex across four centres.",
        "datasets": (DatasetRequest(dataset="lung", variables=("age",)),),
        "task_types": ("describe",),
        "period_start": datetime.date(2026, 1, 1),
        "period_end": datetime.date(2027, 1, 1),
    }
    return DataAccessApplication.model_validate({**fields, **changes})


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"period_end": datetime.date(2025, 1, 1)}, "period_end"),
        ({"persons": (BOB.card,)}, "applicant must be one of"),
        ({"purposes": ("marketing",)}, "purposes"),
        ({"persons": (ADA.card, BODY.card)}, "researcher identities"),
    ],
)
def test_an_application_that_does_not_hold_together_is_refused(
    changes: dict[str, object], words: str
) -> None:
    with pytest.raises(ValidationError, match=words):
        _application(**changes)


def test_a_permit_naming_a_task_type_not_installed_here_still_parses() -> None:
    # A node one version behind must keep serving the types it has under a newer permit;
    # only the coordinator's intake of applications refuses names it does not run.
    permit = draft_permit(
        _application(task_types=("describe", "spatial_scan")), BODY, permit_id="p1"
    )
    assert permit.task_types == ("describe", "spatial_scan")
    with pytest.raises(UnknownTask, match="spatial_scan") as caught:
        check_installed(permit.task_types, rule="application.task_types")
    assert caught.value.rule == "application.task_types"
    check_installed(("describe",), rule="application.task_types")


def test_a_signed_permit_verifies_only_unchanged_and_only_under_the_trusted_key() -> None:
    permit = draft_permit(_application(), BODY, permit_id="p1", valid_days=30)
    signed = permit.sign(BODY.signing)
    trusted = {BODY.name: BODY.signing.public_key()}
    assert signed.verified(trusted) == permit
    changed = SignedPermit(
        permit=permit.model_copy(update={"persons": (ADA.card, BOB.card)}),
        signature=signed.signature,
    )
    with pytest.raises(PermitRefused, match="valid signature") as caught:
        changed.verified(trusted)
    assert caught.value.rule == "permit.signature"
    with pytest.raises(PermitRefused) as caught:
        signed.verified({BODY.name: Identity.generate("x", "hdab").signing.public_key()})
    assert caught.value.rule == "permit.issuer"
    with pytest.raises(ValueError, match="issuer"):
        permit.sign(ADA.signing)


def test_validity_is_a_half_open_window() -> None:
    permit = draft_permit(_application(), BODY, permit_id="p1", valid_days=1)
    check_validity(permit, utcnow())
    with pytest.raises(PermitRefused, match="expired"):
        check_validity(permit, permit.valid_until)
    with pytest.raises(PermitRefused, match="not yet valid"):
        check_validity(permit, permit.valid_from - datetime.timedelta(seconds=1))


def test_a_task_signature_covers_every_field() -> None:
    signed = SignedTask.create(ADA, "describe", '{"dataset": "lung"}', "p1")
    assert signed.verified(ADA.signing.public_key()).researcher == "ada"
    for field, value in [
        ("params_json", '{"dataset": "gbsg2"}'),
        ("permit_id", "p2"),
        ("nonce", "0" * 32),
        ("issued_at", 0.0),
    ]:
        forged = SignedTask(
            task=signed.task.model_copy(update={field: value}), signature=signed.signature
        )
        with pytest.raises(PermitRefused):
            forged.verified(ADA.signing.public_key())
    with pytest.raises(PermitRefused):
        signed.verified(BOB.signing.public_key())


def test_revocation_lists_only_grow_and_are_numbered(tmp_path: Path) -> None:
    first = revoke(BODY, tmp_path, ["p1"], reason="breach")
    second = revoke(BODY, tmp_path, ["p2"], valid_for=datetime.timedelta(hours=1))
    renewed = revoke(BODY, tmp_path)
    assert [x.revocations.sequence for x in (first, second, renewed)] == [1, 2, 3]
    assert renewed.revocations.revoked_ids() == {"p1", "p2"}
    amended = revoke(BODY, tmp_path, superseded={"p3": 2}).revocations
    assert amended.revokes("p3", 1) and not amended.revokes("p3", 2)
    assert "p3" not in amended.revoked_ids() and amended.revokes("p1", 7)
    assert renewed.verified({BODY.name: BODY.signing.public_key()}) == renewed.revocations
    assert oct((tmp_path / "revocations.json").stat().st_mode & 0o777) == "0o600"


def test_a_sealed_result_opens_for_its_readers_only_and_not_once_altered() -> None:
    sealed = seal(b'{"mean": 62.4}', (ADA.card, BODY.card), context="task-1")
    assert b"62.4" not in sealed.encode()
    assert open_sealed(sealed, ADA) == b'{"mean": 62.4}'
    assert open_sealed(sealed, BODY) == b'{"mean": 62.4}'
    with pytest.raises(AccessDenied, match="not sealed to you"):
        open_sealed(sealed, BOB)
    with pytest.raises(AccessDenied, match="key does not match"):
        open_sealed(sealed, dataclasses.replace(BOB, name="ada"))  # bob posing as ada
    box = json.loads(sealed)
    box["context"] = "task-2"  # moved onto another task
    with pytest.raises(AccessDenied, match="altered"):
        open_sealed(json.dumps(box), ADA)


def test_the_ca_issues_role_and_name_from_the_request_and_revokes_by_name(tmp_path: Path) -> None:
    ca = tmp_path / "ca"
    init_network(ca, "net")
    cert_path = issue(ca, request(tmp_path / "centre-a", "node", "centre-a"))
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    ou = cert.subject.get_attributes_for_oid(x509.oid.NameOID.ORGANIZATIONAL_UNIT_NAME)
    assert ou[0].value == "node"
    assert (tmp_path / "centre-a" / "identity.json").stat().st_mode & 0o077 == 0
    assert (tmp_path / "centre-a" / "tls.key").stat().st_mode & 0o077 == 0
    revoked = revoke_certificate(ca, "centre-a")
    assert [c.serial for c in revoked] == [cert.serial_number]
    assert issued(ca)[0].revoked
    crl = x509.load_pem_x509_crl((ca / "crl.pem").read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None
    with pytest.raises(ConfigError, match="already exists"):
        request(tmp_path / "centre-a", "node", "centre-a")  # keys are never overwritten
