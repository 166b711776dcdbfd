"""The permit mod: a node acts only on a task a data-access body it trusts has permitted.

Every message must carry (see ``governance/envelope.py``) a permit signed by a
body in the node's ``[governance] trusted_bodies``, valid now and not revoked;
a task signed by a person the permit names, with the key the permit gives for
them; parameters equal to the signed ones (the server's round state aside);
a task type both the permit and this node allow on the dataset; only
variables the permit grants; and a nonce no other run has used. The checks
use nothing the coordinator could vouch for by itself, because the
coordinator is exactly who they defend against.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from flwr.app import Context, Message
from pydantic import ValidationError

from oncofed.governance.envelope import Authorisation, TaskEnvelope
from oncofed.governance.keys import parse_public_key
from oncofed.governance.permits import (
    Permit,
    RevocationList,
    SignedRevocations,
    check_validity,
    utcnow,
)
from oncofed.kernel.errors import OncofedError, PermitRefused
from oncofed.kernel.flower import ClientAppCallable, Mod, authorisation_json, error_reply, set_grant
from oncofed.node.config import DatasetConfig, GovernanceConfig
from oncofed.node.governance_state import GovernanceState
from oncofed.node.mods import CatalogueFor, action_of, decode_params
from oncofed.tasks import TASKS, task_for_action
from oncofed.tasks.base import TaskParams, TaskType

log = logging.getLogger(__name__)

APPROVAL_POLL_SECONDS = 0.5


@dataclass(frozen=True)
class CoveredTask:
    """A message the node has found covered, with what the audit trail records of it."""

    task: TaskEnvelope
    permit: Permit


class PermitChecker:
    def __init__(
        self,
        node: str,
        governance: GovernanceConfig,
        datasets: dict[str, DatasetConfig],
        state: GovernanceState,
    ) -> None:
        self.node = node
        self.governance = governance
        self.datasets = datasets
        self.state = state
        self.trusted = {
            name: parse_public_key(text) for name, text in governance.trusted_bodies.items()
        }
        # The newest list per body, as stored: every message carries the lists, and most
        # carry nothing new, so neither a signature check nor a write is needed for them.
        self._newest: dict[str, RevocationList] = {}
        self._newest_lock = threading.Lock()

    def _refuse(self, detail: str, rule: str, fix: str) -> PermitRefused:
        return PermitRefused(detail, rule=rule, node=self.node, fix=fix)

    def _authorisation(self, message: Message) -> Authorisation:
        text = authorisation_json(message)
        if text is None:
            raise self._refuse(
                "the message carries no permit",
                "permit.missing",
                "submit tasks through the coordinator with a permit (Session(permit=...))",
            )
        try:
            return Authorisation.model_validate_json(text)
        except ValidationError as exc:
            raise self._refuse(
                f"the message's authorisation is malformed ({exc.error_count()} problem(s))",
                "permit.malformed",
                "relay the signed task and permit unchanged",
            ) from None

    def check(self, message: Message, params: TaskParams) -> CoveredTask:
        authorisation = self._authorisation(message)
        now = utcnow()
        for signed in authorisation.revocations:
            self._keep_revocations(signed)
        permit = authorisation.permit.verified(self.trusted, self.node)
        check_validity(permit, now, self.node)
        self._check_not_revoked(permit, now.timestamp())
        task = self._check_signed_task(authorisation, permit)
        signed_kind, expected = self._signed_request(task, action_of(message), params)
        self._check_task_type(signed_kind, permit, params)
        self._check_params(expected, permit, params)
        self._check_replay(task, message.metadata.run_id)
        return CoveredTask(task, permit)

    def _newest_list(self, issuer: str) -> RevocationList | None:
        with self._newest_lock:
            if issuer not in self._newest:
                held = self.state.newest_revocations(issuer)
                if held is None:
                    return None
                self._newest[issuer] = SignedRevocations.model_validate_json(held).revocations
            return self._newest[issuer]

    def _keep_revocations(self, signed: SignedRevocations) -> None:
        issuer = signed.revocations.issuer.name
        if issuer not in self.trusted:
            return  # another body's list concerns permits this node refuses anyway
        newest = self._newest_list(issuer)
        if newest is not None and signed.revocations.sequence <= newest.sequence:
            return  # not newer than the one held: it could change nothing
        revocations = signed.verified(self.trusted, self.node)
        self.state.keep_revocations(issuer, revocations.sequence, signed.model_dump_json())
        with self._newest_lock:
            held = self._newest.get(issuer)
            if held is None or revocations.sequence > held.sequence:
                self._newest[issuer] = revocations

    def _check_not_revoked(self, permit: Permit, now: float) -> None:
        revocations = self._newest_list(permit.issuer.name)
        if revocations is None:
            raise self._refuse(
                f"this node has no revocation list from {permit.issuer.name} yet",
                "permit.revocations_stale",
                "the data-access body publishes its revocation list (`oncofed permit revoke` "
                "or `oncofed permit renew`), which the coordinator relays",
            )
        if permit.permit_id in revocations.revoked_ids():
            raise self._refuse(
                f"permit {permit.permit_id!r} was revoked by {permit.issuer.name}",
                "permit.revoked",
                "ask the data-access body about the revocation",
            )
        if revocations.revokes(permit.permit_id, permit.version):
            raise self._refuse(
                f"version {permit.version} of permit {permit.permit_id!r} was superseded by an "
                "amendment",
                "permit.superseded",
                "the coordinator must relay the permit's newest version",
            )
        if now >= revocations.next_update.timestamp():
            raise self._refuse(
                f"the newest revocation list from {permit.issuer.name} this node holds expired "
                f"at {revocations.next_update:%Y-%m-%d %H:%M} UTC",
                "permit.revocations_stale",
                "the data-access body must publish a fresh list; a coordinator withholding it "
                "stops all work under that body's permits",
            )

    def _check_signed_task(self, authorisation: Authorisation, permit: Permit) -> TaskEnvelope:
        signed = authorisation.task
        person = permit.person(signed.task.researcher)
        if person is None:
            raise self._refuse(
                f"{signed.task.researcher} is not named in permit {permit.permit_id!r}",
                "permit.person",
                "only persons the permit names may submit tasks under it; ask the data-access "
                "body to amend the permit",
            )
        task = signed.verified(person.verifying_key(), self.node)
        if task.permit_id != permit.permit_id:
            raise self._refuse(
                f"the task was signed for permit {task.permit_id!r}, not {permit.permit_id!r}",
                "task.permit",
                "relay each task with the permit it was signed for",
            )
        return task

    def _signed_request(
        self, task: TaskEnvelope, action: str, params: TaskParams
    ) -> tuple[TaskType[Any, Any], TaskParams]:
        """The signed task's type, and the request it permits for this message's action.

        That is the signed parameters themselves, or -- where a task sends another
        task's message as one of its steps (training asks for ``describe`` to
        standardise) -- the request the signed parameters derive for it.
        """
        altered = self._refuse(
            f"the message asks for {action!r}, which the researcher's signed "
            f"{task.task_type!r} task does not",
            "task.altered",
            "the coordinator may not change a signed task",
        )
        signed_kind = TASKS.get(task.task_type)
        installed = task_for_action(action)
        if signed_kind is None or installed is None:
            raise altered
        try:
            signed = signed_kind.params.model_validate_json(task.params_json)
        except ValidationError:
            raise altered from None
        expected = signed if installed is signed_kind else signed.request_for(installed.name)
        if expected is None or type(expected) is not type(params):
            raise altered
        return signed_kind, expected

    def _check_task_type(
        self, signed_kind: TaskType[Any, Any], permit: Permit, params: TaskParams
    ) -> None:
        name = signed_kind.name
        if name not in permit.task_types:
            raise self._refuse(
                f"permit {permit.permit_id!r} does not allow task type {name!r}",
                "permit.task_type",
                f"the permit allows: {', '.join(permit.task_types)}",
            )
        offered = self.datasets.get(params.dataset)
        allowed = offered.allowed_tasks if offered is not None else None
        if allowed is not None and name not in allowed:
            raise self._refuse(
                f"this node does not run {name!r} on dataset {params.dataset!r}",
                "node.allowed_tasks",
                f"this node allows: {', '.join(allowed) or 'none'}",
            )
        if signed_kind.model_handlers and not permit.output.models_may_leave:
            raise self._refuse(
                f"permit {permit.permit_id!r} does not let model weights leave the centres",
                "permit.output",
                "ask the data-access body for a permit whose output policy allows models",
            )

    def _check_params(self, expected: TaskParams, permit: Permit, params: TaskParams) -> None:
        if expected.researcher_fields() != params.researcher_fields():
            changed = sorted(
                key
                for key, value in params.researcher_fields().items()
                if expected.researcher_fields().get(key) != value
            )
            raise self._refuse(
                f"the message's parameters differ from the signed task in {changed}",
                "task.altered",
                "the coordinator may not change a signed task",
            )
        if params.study != permit.permit_id:
            raise self._refuse(
                f"the task's study {params.study!r} is not its permit {permit.permit_id!r}",
                "task.permit",
                "set the study to the permit id (Session(permit=...) does)",
            )
        if params.dataset not in self.datasets:
            return  # the validation mod refuses a dataset this node does not offer, by name
        grant = permit.grant(params.dataset)
        if grant is None:
            raise self._refuse(
                f"permit {permit.permit_id!r} does not cover dataset {params.dataset!r}",
                "permit.dataset",
                f"the permit covers: {', '.join(d.dataset for d in permit.datasets)}",
            )
        if grant.variables is not None:
            outside = sorted(set(params.required_columns()) - set(grant.variables))
            if outside:
                raise self._refuse(
                    f"permit {permit.permit_id!r} does not grant variable(s) {outside} of "
                    f"{params.dataset!r}",
                    "permit.variables",
                    f"the permit grants: {', '.join(grant.variables)}",
                )

    def _check_replay(self, task: TaskEnvelope, run_id: int) -> None:
        replay = self._refuse(
            "this signed task already ran as another run; a signed task runs once",
            "task.replay",
            "the researcher submits a new task",
        )
        now = time.time()
        seen = self.state.nonce_run(task.nonce)
        if seen is None:
            # Time is judged when a task first arrives; a long training run's later
            # rounds carry the same signed task.
            skew = self.governance.max_clock_skew_seconds
            if task.issued_at > now + skew:
                raise self._refuse(
                    f"the task is dated {task.issued_at - now:.0f} s in the future",
                    "task.clock",
                    f"check the clocks (this node allows {skew:g} s of skew)",
                )
            age_hours = (now - task.issued_at) / 3600
            if age_hours > self.governance.max_task_age_hours:
                raise self._refuse(
                    f"the task was signed {age_hours:.1f} h before it reached this node",
                    "task.stale",
                    f"tasks must reach nodes within {self.governance.max_task_age_hours:g} h "
                    "of signing; submit it again",
                )
            carried = self.state.run_nonce(run_id)
            if carried is not None and carried != task.nonce:
                # One run, one signed task: else an approval or a binding given to one
                # task would cover another sent under the same run.
                raise replay
            bound = self.state.bind_nonce(task.nonce, run_id, task.permit_id)
            seen = (bound, now)
        bound, first_seen = seen
        if bound != run_id:
            raise replay
        running_hours = (now - first_seen) / 3600
        if running_hours > self.governance.max_run_hours:
            raise self._refuse(
                f"this task began {running_hours:.1f} h ago at this node; a task may send "
                f"messages for {self.governance.max_run_hours:g} h",
                "task.expired",
                "submit a new task",
            )

    def wait_for_approval(
        self, covered: CoveredTask, params: TaskParams, run_id: int, deadline: float
    ) -> None:
        dataset = self.datasets.get(params.dataset)
        if dataset is None or dataset.approval == "automatic":
            return
        approval = self.state.request_approval(
            run_id=run_id,
            permit_id=covered.permit.permit_id,
            researcher=covered.task.researcher,
            task_type=covered.task.task_type,
            dataset=params.dataset,
            params_json=covered.task.params_json,
        )
        if approval.state == "pending":
            log.info(
                "task run %d (%s by %s) waits for the operator's approval: "
                "oncofed node approvals approve CONFIG %d",
                run_id,
                covered.task.task_type,
                covered.task.researcher,
                run_id,
            )
        deadline = min(deadline, time.time() + self.governance.max_approval_wait_seconds)
        while approval.state == "pending" and time.time() < deadline:
            time.sleep(APPROVAL_POLL_SECONDS)
            found = self.state.approval(run_id)
            approval = found if found is not None else approval
        if approval.state == "rejected":
            raise self._refuse(
                f"the node operator rejected this task: {approval.reason or 'no reason given'}",
                "node.approval",
                "contact the centre's operator",
            )
        if approval.state != "approved":
            raise self._refuse(
                "the task is waiting for the node operator's approval",
                "node.approval",
                "ask the centre's operator to run `oncofed node approvals approve`, then "
                "submit again",
            )


def permit_mod(checker: PermitChecker, catalogue_for: CatalogueFor) -> Mod:
    def mod(message: Message, context: Context, call_next: ClientAppCallable) -> Message:
        datasets = catalogue_for(context)
        try:
            params = decode_params(message, datasets.node_name)
            covered = checker.check(message, params)
            deadline = message.metadata.created_at + message.metadata.ttl
            checker.wait_for_approval(covered, params, message.metadata.run_id, deadline)
        except OncofedError as exc:
            return error_reply(message, exc)
        grant = covered.permit.grant(params.dataset)
        set_grant(message, grant.epsilon if grant is not None else None)
        return call_next(message, context)

    return mod


__all__ = ["CoveredTask", "PermitChecker", "permit_mod"]
