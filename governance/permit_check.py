"""Whether a permit covers a signed task: one set of rules, for the coordinator and every node.

A pure function. In: the permit (its signature already checked against a key
the caller trusts), the researcher's signed task, the request as it arrives
and as the signature permits it, the issuer's newest revocation list and the
time. Out: a ``Grant``, or a ``PermitRefused`` naming the rule. The
coordinator runs it when a task is submitted, so the researcher hears at
once; every node runs it on every message, because a node trusts nothing the
coordinator vouches for (decision 0015). What only one side can know stays
with that side: the node's trusted keys, its own task allow-list, nonces and
approvals; the coordinator's record of who is calling.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from oncofed.governance.envelope import SignedTask, TaskEnvelope
from oncofed.governance.permits import DatasetGrant, Permit, RevocationList, check_validity
from oncofed.kernel.errors import PermitRefused


class PermitRequest(Protocol):
    """What the rules read of a request (a task's validated parameters)."""

    @property
    def dataset(self) -> str: ...

    @property
    def study(self) -> str: ...

    def researcher_fields(self) -> Mapping[str, Any]: ...

    def required_columns(self) -> Mapping[str, str]: ...

    @property
    def dp(self) -> object | None:
        """The differential privacy the request asks for (None: an exact answer)."""

    def filter_among(self, cohorts: Mapping[str, str]) -> bool:
        """Whether the request uses no row filter, or one of these named ones."""


@dataclass(frozen=True)
class TaskKind:
    """What the rules read of a task type."""

    name: str
    returns_models: bool
    has_dp: bool
    """Whether the task type has a differentially private release."""


@dataclass(frozen=True)
class Grant:
    """A task a permit covers: the permit, the verified signed task, the dataset's grant."""

    permit: Permit
    task: TaskEnvelope
    dataset: DatasetGrant

    @property
    def epsilon(self) -> float | None:
        """The permit's privacy budget on the dataset (None: each node's own cap)."""
        return self.dataset.epsilon


def check_task(
    *,
    permit: Permit,
    signed: SignedTask,
    kind: TaskKind,
    request: PermitRequest,
    signed_request: PermitRequest,
    revocations: RevocationList | None,
    now: datetime.datetime,
    node: str = "",
) -> Grant:
    """The grant under which ``request`` may run, or the refusal of the first rule it breaks.

    ``signed_request`` is what the researcher's signature permits for this
    step: the signed parameters themselves, or the step a task derives from
    them (training's ``describe``); only the server's round state may differ.
    """

    def refuse(detail: str, rule: str, fix: str) -> PermitRefused:
        return PermitRefused(detail, rule=rule, node=node, fix=fix)

    check_validity(permit, now, node)
    _check_not_revoked(permit, revocations, now, refuse)
    person = permit.person(signed.task.researcher)
    if person is None:
        raise refuse(
            f"{signed.task.researcher} is not named in permit {permit.permit_id!r}",
            "permit.person",
            "only persons the permit names may submit tasks under it; ask the data-access "
            "body to amend the permit",
        )
    task = signed.verified(person.verifying_key(), node)
    if task.permit_id != permit.permit_id:
        raise refuse(
            f"the task was signed for permit {task.permit_id!r}, not {permit.permit_id!r}",
            "task.permit",
            "relay each task with the permit it was signed for",
        )
    if kind.name not in permit.task_types:
        raise refuse(
            f"permit {permit.permit_id!r} does not allow task type {kind.name!r}",
            "permit.task_type",
            f"the permit allows: {', '.join(permit.task_types)}",
        )
    if kind.returns_models and not permit.output.models_may_leave:
        raise refuse(
            f"permit {permit.permit_id!r} does not let model weights leave the centres",
            "permit.output",
            "ask the data-access body for a permit whose output policy allows models",
        )
    asked, allowed = request.researcher_fields(), signed_request.researcher_fields()
    if asked != allowed:
        changed = sorted(key for key, value in asked.items() if allowed.get(key) != value)
        raise refuse(
            f"the message's parameters differ from the signed task in {changed}",
            "task.altered",
            "the coordinator may not change a signed task",
        )
    if request.study != permit.permit_id:
        raise refuse(
            f"the task's study {request.study!r} is not its permit {permit.permit_id!r}",
            "task.permit",
            "set the study to the permit id (Session(permit=...) does)",
        )
    grant = permit.grant(request.dataset)
    if grant is None:
        raise refuse(
            f"permit {permit.permit_id!r} does not cover dataset {request.dataset!r}",
            "permit.dataset",
            f"the permit covers: {', '.join(d.dataset for d in permit.datasets)}",
        )
    if grant.release == "dp" and request.dp is None:
        raise refuse(
            f"permit {permit.permit_id!r} grants {request.dataset!r} with differential "
            "privacy only, and the request asks for an exact answer",
            "permit.release",
            'ask with dp={"epsilon": 0.5} (Python) or --dp epsilon=0.5 (oncofed query)'
            if kind.has_dp
            else f"task type {kind.name!r} has no DP release: only a permit granting "
            f"{request.dataset!r} with release = exact allows it",
        )
    if (
        grant.release == "exact"
        and request.dp is None
        and grant.cohorts is not None
        and not request.filter_among(grant.cohorts)
    ):
        named = "; ".join(f"{name}: {text!r}" for name, text in grant.cohorts.items())
        raise refuse(
            f"permit {permit.permit_id!r} grants exact answers on {request.dataset!r} only "
            "for the row subsets it names, and the request filters on another",
            "permit.cohort",
            f"use where= one of the permit's cohorts ({named})"
            if named
            else "drop where= (the permit names no cohort), or ask with dp=",
        )
    if grant.variables is not None:
        outside = sorted(set(request.required_columns()) - set(grant.variables))
        if outside:
            raise refuse(
                f"permit {permit.permit_id!r} does not grant variable(s) {outside} of "
                f"{request.dataset!r}",
                "permit.variables",
                f"the permit grants: {', '.join(grant.variables)}",
            )
    return Grant(permit=permit, task=task, dataset=grant)


def _check_not_revoked(
    permit: Permit,
    revocations: RevocationList | None,
    now: datetime.datetime,
    refuse: Callable[[str, str, str], PermitRefused],
) -> None:
    issuer = permit.issuer.name
    if revocations is None:
        raise refuse(
            f"no revocation list from {issuer} has been published yet",
            "permit.revocations_stale",
            "the data-access body publishes its revocation list with `oncofed permit renew` "
            "(`oncofed permit publish` and `oncofed permit revoke` publish one too), and the "
            "coordinator relays it",
        )
    if permit.permit_id in revocations.revoked_ids():
        raise refuse(
            f"permit {permit.permit_id!r} was revoked by {issuer}",
            "permit.revoked",
            "ask the data-access body about the revocation",
        )
    if revocations.revokes(permit.permit_id, permit.version):
        raise refuse(
            f"version {permit.version} of permit {permit.permit_id!r} was superseded by an "
            "amendment",
            "permit.superseded",
            "the coordinator must relay the permit's newest version",
        )
    if now >= revocations.next_update:
        raise refuse(
            f"the newest revocation list from {issuer} expired at "
            f"{revocations.next_update:%Y-%m-%d %H:%M} UTC",
            "permit.revocations_stale",
            "the data-access body must publish a fresh list (`oncofed permit renew`); a "
            "coordinator withholding it stops all work under that body's permits",
        )


__all__ = ["Grant", "PermitRequest", "TaskKind", "check_task"]
