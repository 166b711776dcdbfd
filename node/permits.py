"""The node's permit checker: it acts only on a task a data-access body it trusts has permitted.

Every message must carry (see ``governance/envelope.py``) a permit signed by a
body in the node's ``[governance] trusted_bodies``, and a task signed by a
person the permit names. The rules a permit imposes are one pure function
shared with the coordinator (``governance/permit_check.py``); this module
adds what only the node can know: the keys it trusts, the newest
revocation list it has seen, its own task allow-list, the nonces it has
bound to runs, and its operator's approvals. The checks use nothing the
coordinator could vouch for by itself, because the coordinator is exactly
who they defend against.

A message's authorisation is the same for every message of a run, so its
parse and the permit's signature check are kept per authorisation text, and
the signed parameters per signed task; the rules themselves run on every
message.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import OrderedDict
from typing import Any, Generic, TypeVar

from flwr.app import Message
from pydantic import ValidationError

from oncofed.governance.envelope import Authorisation, SignedTask
from oncofed.governance.keys import parse_public_key
from oncofed.governance.permit_check import Grant, check_task
from oncofed.governance.permits import Permit, RevocationList, SignedRevocations, utcnow
from oncofed.kernel.errors import ApprovalPending, PermitRefused, QueryError
from oncofed.kernel.flower import authorisation_json
from oncofed.node.config import DatasetConfig, GovernanceConfig
from oncofed.node.governance_state import GovernanceState
from oncofed.node.request import NodeRequest
from oncofed.tasks import TASKS
from oncofed.tasks.base import TaskParams, TaskType

MAX_RUN_ID = 2**63
"""A signed task is bound to its run in a signed 64-bit column (Flower's run ids are unsigned;
the oncofed coordinator's stay below 2^53, Flower's simulation draws any 64-bit id)."""

log = logging.getLogger(__name__)

CACHED_AUTHORISATIONS = 64
"""Authorisations (one per running task, ~2 kB each) kept parsed and signature-checked."""
CACHED_NONCES = 4096
"""Nonce bindings kept in memory; the state file holds them all."""

K = TypeVar("K")
V = TypeVar("V")


class _Recent(Generic[K, V]):
    """The most recently used values, at most ``size`` of them, safe across worker threads."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: K, value: V) -> None:
        with self._lock:
            self._items[key] = value
            while len(self._items) > self.size:
                self._items.popitem(last=False)


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
        self._lock = threading.Lock()
        self._verified: _Recent[str, tuple[Authorisation, Permit]] = _Recent(CACHED_AUTHORISATIONS)
        self._signed_params: _Recent[str, TaskParams] = _Recent(CACHED_AUTHORISATIONS)
        self._bound: _Recent[str, tuple[int, float]] = _Recent(CACHED_NONCES)
        self._binding = threading.Lock()

    def _refuse(self, detail: str, rule: str, fix: str) -> PermitRefused:
        return PermitRefused(detail, rule=rule, node=self.node, fix=fix)

    def authorise(self, message: Message, request: NodeRequest) -> Grant:
        """The grant that covers this request, or a typed refusal (or ``ApprovalPending``)."""
        authorisation, permit = self._authorisation(message)
        for signed in authorisation.revocations:
            self._keep_revocations(signed)
        signed_kind, signed_request = self._signed_request(authorisation.task, request)
        self._check_node_allows(signed_kind, request.params.dataset)
        grant = check_task(
            permit=permit,
            signed=authorisation.task,
            kind=signed_kind.permit_kind,
            request=request.params,
            signed_request=signed_request,
            revocations=self._newest_list(permit.issuer.name),
            now=utcnow(),
            node=self.node,
        )
        self._check_replay(grant, request.run_id)
        self._check_approval(grant, request)
        return grant

    def _authorisation(self, message: Message) -> tuple[Authorisation, Permit]:
        text = authorisation_json(message)
        if text is None:
            raise self._refuse(
                "the message carries no permit",
                "permit.missing",
                "submit tasks through the coordinator with a permit (Session(permit=...))",
            )
        known = self._verified.get(text)
        if known is not None:
            return known
        try:
            authorisation = Authorisation.model_validate_json(text)
        except ValidationError as exc:
            raise self._refuse(
                f"the message's authorisation is malformed ({exc.error_count()} problem(s))",
                "permit.malformed",
                "relay the signed task and permit unchanged",
            ) from None
        verified = (authorisation, authorisation.permit.verified(self.trusted, self.node))
        self._verified.put(text, verified)
        return verified

    def _newest_list(self, issuer: str) -> RevocationList | None:
        with self._lock:
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
        with self._lock:
            held = self._newest.get(issuer)
            if held is None or revocations.sequence > held.sequence:
                self._newest[issuer] = revocations

    def _signed_request(
        self, signed: SignedTask, request: NodeRequest
    ) -> tuple[TaskType[Any, Any], TaskParams]:
        """The signed task's type, and the request it permits for this message's action.

        That is the signed parameters themselves, or -- where a task sends another
        task's message as one of its steps (training asks for ``describe`` to
        standardise) -- the request the signed parameters derive for it.
        """
        task = signed.task
        signed_kind = TASKS.get(task.task_type)
        if signed_kind is None:
            raise self._refuse(
                f"the task is a {task.task_type!r} task, which is not installed on this node",
                "node.task_installed",
                "the node operator upgrades oncofed, or the researcher uses an installed type: "
                + ", ".join(sorted(TASKS)),
            )
        altered = self._refuse(
            f"the message asks for {request.action!r}, which the researcher's signed "
            f"{task.task_type!r} task does not",
            "task.altered",
            "the coordinator may not change a signed task",
        )
        params = self._signed_params_of(signed, signed_kind, altered)
        expected = params if request.task is signed_kind else params.request_for(request.task.name)
        if expected is None or type(expected) is not type(request.params):
            raise altered
        return signed_kind, expected

    def _signed_params_of(
        self, signed: SignedTask, kind: TaskType[Any, Any], altered: PermitRefused
    ) -> TaskParams:
        # Keyed by what was signed, not by the signature: an altered envelope carrying a
        # genuine signature (refused later by the signature check) must not plant its
        # parameters under the genuine task's key.
        key = hashlib.sha256(signed.task.payload()).hexdigest()
        known = self._signed_params.get(key)
        if known is not None:
            return known
        try:
            params: TaskParams = kind.params.model_validate_json(signed.task.params_json)
        except ValidationError:
            raise altered from None
        self._signed_params.put(key, params)
        return params

    def _check_node_allows(self, kind: TaskType[Any, Any], dataset: str) -> None:
        offered = self.datasets.get(dataset)
        allowed = offered.allowed_tasks if offered is not None else None
        if allowed is not None and kind.name not in allowed:
            raise self._refuse(
                f"this node does not run {kind.name!r} on dataset {dataset!r}",
                "node.allowed_tasks",
                f"this node allows: {', '.join(allowed) or 'none'}",
            )

    def _check_replay(self, grant: Grant, run_id: int) -> None:
        if not 0 <= run_id < MAX_RUN_ID:
            raise QueryError(
                f"run id {run_id} is outside 0 to 2^63 - 1",
                rule="task.run_id",
                node=self.node,
                fix="submit tasks through the oncofed coordinator, which numbers runs",
            )
        task = grant.task
        replay = self._refuse(
            "this signed task already ran as another run; a signed task runs once",
            "task.replay",
            "the researcher submits a new task",
        )
        now = time.time()
        # Check and bind as one step: two messages of different tasks under one run, taken
        # by two workers at once, must not both be bound to it (an approval is per run).
        with self._binding:
            seen = self._bound.get(task.nonce) or self.state.nonce_run(task.nonce)
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
                        f"tasks must reach nodes within {self.governance.max_task_age_hours:g} "
                        "h of signing; submit it again",
                    )
                # One run, one signed task (the state file's unique index says so too).
                seen = self.state.bind_nonce(task.nonce, run_id, task.permit_id)
                if seen is None:
                    raise replay
            # A binding never changes once written, so it need not be read again.
            self._bound.put(task.nonce, seen)
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

    def _check_approval(self, grant: Grant, request: NodeRequest) -> None:
        """On a ``manual`` dataset: go on once approved, else say the task is pending.

        Nothing waits here: the request is stored, the message answered as
        pending, and the coordinator sends it again until the operator decides
        or the task's timeout ends; the node's workers stay free meanwhile.
        """
        dataset = self.datasets.get(request.params.dataset)
        if dataset is None or dataset.approval == "automatic":
            return
        task = grant.task
        approval, asked = self.state.request_approval(
            run_id=request.run_id,
            permit_id=grant.permit.permit_id,
            researcher=task.researcher,
            task_type=task.task_type,
            dataset=request.params.dataset,
            params_json=task.params_json,
        )
        if approval.state == "approved":
            return
        if approval.state == "rejected":
            raise self._refuse(
                f"the node operator rejected this task: {approval.reason or 'no reason given'}",
                "node.approval",
                "contact the centre's operator",
            )
        if asked:
            log.info(
                "task run %d (%s by %s) waits for the operator's approval: "
                "oncofed node approvals approve CONFIG %d",
                request.run_id,
                task.task_type,
                task.researcher,
                request.run_id,
            )
        raise ApprovalPending(
            f"the task waits for the approval of {self.node}'s operator",
            rule="node.approval_pending",
            node=self.node,
            fix=f"the centre's operator runs `oncofed node approvals approve CONFIG "
            f"{request.run_id}`; the coordinator asks again until then",
            first=asked,
        )


__all__ = ["CACHED_AUTHORISATIONS", "PermitChecker"]
