"""Data access applications, data permits and revocation lists (EHDS Art. 67-68).

A researcher files an application; the health data access body (HDAB) grants
a permit -- the approved subset of the application, with validity, privacy
budget per dataset and output policy -- and signs it with its own Ed25519
key, offline from the coordinator. Nodes trust permits by the body's public
key in their own configuration, never by what the coordinator says.

Revocation reaches a node as a revocation list signed by the body, numbered
and with a ``next_update`` time. The coordinator relays the newest list with
every task; a node keeps the newest it has seen (a withheld newer list cannot
roll it back) and refuses all work under a body whose list is past its
``next_update``, so withholding revocation stops work rather than hiding it
(decision 0015).
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from enum import StrEnum
from typing import Annotated, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from oncofed.governance.keys import IdentityCard, canonical_json, sign, signature_valid
from oncofed.kernel.errors import PermitRefused
from oncofed.kernel.schema import NAME_PATTERN

UTC = datetime.UTC


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(UTC)


class Purpose(StrEnum):
    """Purposes for which a permit may be granted, EHDS Art. 53(1) (a)-(f)."""

    PUBLIC_HEALTH = "a-public-health"
    POLICY_MAKING = "b-policy-making"
    STATISTICS = "c-statistics"
    EDUCATION = "d-education"
    SCIENTIFIC_RESEARCH = "e-scientific-research"
    CARE_IMPROVEMENT = "f-care-improvement"


TaskTypeName = Annotated[str, Field(pattern=NAME_PATTERN, max_length=64)]
"""A task type as documents name it. Whether it is installed is each party's own check:
a permit naming a type this node lacks still covers the types it has."""


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


ReleaseMode = Literal["dp", "exact"]
"""How answers on a dataset may leave: ``dp``, every number with differential-privacy
noise (the default), or ``exact``, noise-free where each node's policy also allows it."""


def _is_dp(mode: str) -> bool:
    # A "dp" release is left out of the signed payload, so permits signed before the
    # field existed (DP-only in meaning) keep verifying.
    return mode == "dp"


def _no_cohorts(cohorts: dict[str, str] | None) -> bool:
    return cohorts == {}


Cohorts = dict[Annotated[str, Field(pattern=NAME_PATTERN)], Annotated[str, Field(max_length=2000)]]
"""Named row subsets, each a filter expression (``"age >= 60 and stage == 'IV'"``)."""

COHORTS_DESCRIPTION = (
    "Row subsets exact answers may use, by name: an exact request's where filter must be "
    "one of them (none: no filter). null lets exact requests use any filter -- two "
    "overlapping filters can then single out a patient, so grant it only for test data."
)


class DatasetTerms(_Frozen):
    """One dataset as an application asks for it and a permit grants it (the same terms)."""

    dataset: str = Field(pattern=NAME_PATTERN)
    variables: tuple[str, ...] | None = Field(
        default=None, description="Columns a task may read; None: every declared column."
    )
    epsilon: float | None = Field(
        default=None,
        gt=0,
        description="Privacy budget at each node (None: each node's own cap; otherwise the "
        "node's cap applies too, whichever is smaller).",
    )
    release: ReleaseMode = Field(
        default="dp",
        exclude_if=_is_dp,
        description="dp: every answer carries differential-privacy noise; exact: noise-free "
        "answers, which the body must justify and each node's policy must also allow.",
    )
    cohorts: Cohorts | None = Field(
        default_factory=dict, exclude_if=_no_cohorts, description=COHORTS_DESCRIPTION
    )


class DatasetRequest(DatasetTerms):
    """A dataset an application asks for."""


class DataAccessApplication(_Frozen):
    """What a researcher asks the data-access body for (EHDS Art. 67)."""

    applicant: IdentityCard
    organisation: str = Field(min_length=1, max_length=256)
    persons: tuple[IdentityCard, ...] = Field(
        min_length=1, description="Everyone who will work under the permit, applicant included."
    )
    purposes: tuple[Purpose, ...] = Field(min_length=1)
    description: str = Field(min_length=20, max_length=20_000)
    datasets: tuple[DatasetRequest, ...] = Field(min_length=1)
    task_types: tuple[TaskTypeName, ...] = Field(min_length=1)
    access: Literal["anonymised", "pseudonymised"] = "anonymised"
    period_start: datetime.date
    period_end: datetime.date

    @model_validator(mode="after")
    def _consistent(self) -> DataAccessApplication:
        if self.period_end <= self.period_start:
            raise ValueError("period_end must come after period_start")
        if self.applicant not in self.persons:
            raise ValueError("the applicant must be one of the named persons")
        if any(p.role != "researcher" for p in self.persons):
            raise ValueError("named persons must hold researcher identities")
        return self


class DatasetGrant(DatasetTerms):
    """A dataset a permit grants: what every node checks a task against."""


class OutputPolicy(_Frozen):
    # Art. 73: only anonymised results leave; a trained model may be personal data.
    models_may_leave: bool = Field(
        default=False, description="Whether trained model weights may be returned."
    )


class Permit(_Frozen):
    """A data permit (EHDS Art. 68) as a node checks it."""

    permit_id: str = Field(pattern=NAME_PATTERN)
    version: int = Field(default=1, ge=1, description="Raised by every amendment.")
    application_id: str = ""
    issuer: IdentityCard
    holder: str = Field(min_length=1, description="The organisation the permit is granted to.")
    purposes: tuple[Purpose, ...] = Field(min_length=1)
    description: str = ""
    persons: tuple[IdentityCard, ...] = Field(min_length=1)
    datasets: tuple[DatasetGrant, ...] = Field(min_length=1)
    task_types: tuple[TaskTypeName, ...] = Field(min_length=1)
    access: Literal["anonymised", "pseudonymised"] = "anonymised"
    valid_from: AwareDatetime
    valid_until: AwareDatetime
    output: OutputPolicy = Field(default_factory=OutputPolicy)
    conditions: str = Field(default="", description="Special conditions, in words.")
    issued_at: AwareDatetime = Field(default_factory=utcnow)

    @model_validator(mode="after")
    def _consistent(self) -> Permit:
        if self.issuer.role != "hdab":
            raise ValueError("a permit's issuer must hold a data-access body (hdab) identity")
        if self.valid_until <= self.valid_from:
            raise ValueError("valid_until must come after valid_from")
        if any(p.role != "researcher" for p in self.persons):
            raise ValueError("named persons must hold researcher identities")
        return self

    def person(self, name: str) -> IdentityCard | None:
        return next((p for p in self.persons if p.name == name), None)

    def grant(self, dataset: str) -> DatasetGrant | None:
        return next((d for d in self.datasets if d.dataset == dataset), None)

    def sign(self, key: Ed25519PrivateKey) -> SignedPermit:
        if key.public_key() != self.issuer.verifying_key():
            raise ValueError("the signing key is not the key of the permit's issuer card")
        return SignedPermit(permit=self, signature=sign(key, _payload(self)))


def _payload(document: BaseModel) -> bytes:
    return canonical_json(document.model_dump(mode="json"))


def trusted_issuer(
    card: IdentityCard, trusted: Mapping[str, Ed25519PublicKey], node: str, what: str
) -> Ed25519PublicKey:
    """The configured key of a body, refusing one the node does not trust under that name."""
    key = trusted.get(card.name)
    if key is None or key != card.verifying_key():
        raise PermitRefused(
            f"the {what} is issued by {card.name!r}, a body this node does not trust "
            "(or with a different key)",
            rule="permit.issuer",
            node=node,
            fix="the node operator lists trusted data-access bodies in [governance] trusted_bodies",
        )
    return key


class SignedPermit(_Frozen):
    permit: Permit
    signature: str

    @property
    def issuer(self) -> IdentityCard:
        return self.permit.issuer

    def verified(self, trusted: Mapping[str, Ed25519PublicKey], node: str = "") -> Permit:
        """The permit, once its issuer is trusted and its signature holds."""
        key = trusted_issuer(self.permit.issuer, trusted, node, f"permit {self.permit.permit_id}")
        if not signature_valid(key, _payload(self.permit), self.signature):
            raise PermitRefused(
                f"permit {self.permit.permit_id!r} does not carry a valid signature of "
                f"{self.permit.issuer.name}",
                rule="permit.signature",
                node=node,
                fix="use the permit exactly as the data-access body signed it",
            )
        return self.permit


def check_validity(permit: Permit, now: datetime.datetime, node: str = "") -> None:
    if now < permit.valid_from or now >= permit.valid_until:
        state = "not yet valid" if now < permit.valid_from else "expired"
        raise PermitRefused(
            f"permit {permit.permit_id!r} is {state} (valid {permit.valid_from:%Y-%m-%d %H:%M} "
            f"to {permit.valid_until:%Y-%m-%d %H:%M} UTC)",
            rule="permit.validity",
            node=node,
            fix="ask the data-access body to extend or amend the permit",
        )


class RevokedPermit(_Frozen):
    permit_id: str
    revoked_at: AwareDatetime
    reason: str = ""
    before_version: int = Field(
        default=0,
        ge=0,
        description="0 revokes the permit; N revokes its versions below N (superseded by an "
        "amendment), so a coordinator cannot keep relaying an older, wider version.",
    )

    def covers(self, permit_id: str, version: int) -> bool:
        if permit_id != self.permit_id:
            return False
        return self.before_version == 0 or version < self.before_version


class RevocationList(_Frozen):
    issuer: IdentityCard
    sequence: int = Field(ge=1, description="Raised by every list the body signs.")
    issued_at: AwareDatetime
    next_update: AwareDatetime
    revoked: tuple[RevokedPermit, ...] = ()

    def sign(self, key: Ed25519PrivateKey) -> SignedRevocations:
        return SignedRevocations(revocations=self, signature=sign(key, _payload(self)))

    def revoked_ids(self) -> frozenset[str]:
        """Permits revoked outright (every version)."""
        return frozenset(r.permit_id for r in self.revoked if r.before_version == 0)

    def revokes(self, permit_id: str, version: int) -> bool:
        return any(r.covers(permit_id, version) for r in self.revoked)


class SignedRevocations(_Frozen):
    revocations: RevocationList
    signature: str

    @property
    def issuer(self) -> IdentityCard:
        return self.revocations.issuer

    def verified(self, trusted: Mapping[str, Ed25519PublicKey], node: str = "") -> RevocationList:
        issuer = self.revocations.issuer
        key = trusted_issuer(issuer, trusted, node, "revocation list")
        if not signature_valid(key, _payload(self.revocations), self.signature):
            raise PermitRefused(
                f"the revocation list of {issuer.name} does not carry a valid signature",
                rule="permit.revocations",
                node=node,
                fix="relay the revocation list exactly as the data-access body signed it",
            )
        return self.revocations


__all__ = [
    "DataAccessApplication",
    "DatasetGrant",
    "DatasetRequest",
    "DatasetTerms",
    "OutputPolicy",
    "Permit",
    "Purpose",
    "ReleaseMode",
    "RevocationList",
    "RevokedPermit",
    "SignedPermit",
    "SignedRevocations",
    "check_validity",
    "trusted_issuer",
    "utcnow",
]
