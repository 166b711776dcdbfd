"""The researcher-facing API: submit a task, watch it, fetch its result, cancel it."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import grpc
from pydantic import ValidationError

from oncofed.coordinator.access_store import AccessStore
from oncofed.coordinator.auth import abort, caller
from oncofed.coordinator.hub import Hub
from oncofed.coordinator.runner import TaskRunner
from oncofed.coordinator.store import Store, TaskView
from oncofed.governance.audit import AuditTrail
from oncofed.governance.envelope import SignedTask, TaskEnvelope
from oncofed.governance.permit_check import check_task
from oncofed.governance.permits import SignedPermit, utcnow
from oncofed.governance.tls import Peer
from oncofed.kernel.errors import (
    AccessDenied,
    OncofedError,
    PermitRefused,
    QueryError,
    format_validation_error,
)
from oncofed.kernel.wire import oncofed_pb2 as pb
from oncofed.kernel.wire.oncofed_pb2_grpc import ResearcherServicer
from oncofed.tasks import get_task

WATCH_POLL_SECONDS = 0.5  # upper bound; replies and task ends wake watchers at once


def status(view: TaskView) -> pb.TaskStatus:
    return pb.TaskStatus(
        task_id=view.task_id,
        task_type=view.task_type,
        state=view.state,
        replies=view.replies,
        expected=view.expected,
        detail=view.detail,
        updated_at=view.updated_at,
    )


class Researcher(ResearcherServicer):
    def __init__(
        self,
        store: Store,
        access: AccessStore,
        runner: TaskRunner,
        hub: Hub,
        audit: AuditTrail,
    ) -> None:
        self.store = store
        self.access = access
        self.runner = runner
        self.hub = hub
        self.audit = audit

    def Submit(self, request: pb.SubmitRequest, context: grpc.ServicerContext) -> pb.TaskRef:  # noqa: N802
        peer = caller(context)
        try:
            signed = SignedTask.model_validate_json(request.signed_task_json)
        except ValidationError as exc:
            malformed = QueryError(
                f"the signed task is malformed: {format_validation_error(exc)[:500]}",
                rule="task.envelope",
                fix="submit through oncofed's Session",
            )
            self.audit.append(
                actor=peer.name,
                action="submit",
                outcome="QueryError",
                rule=malformed.rule,
                request_bytes=len(request.signed_task_json),
            )
            abort(context, grpc.StatusCode.INVALID_ARGUMENT, malformed)
        task = signed.task
        try:
            params_json = self._admissible(peer.name, signed)
        except OncofedError as exc:
            self._audit(peer.name, task, exc)
            code = (
                grpc.StatusCode.PERMISSION_DENIED
                if isinstance(exc, PermitRefused | AccessDenied)
                else grpc.StatusCode.INVALID_ARGUMENT
            )
            abort(context, code, exc)
        view = self.store.create_task(
            task.task_type,
            params_json,
            peer.name,
            permit_id=task.permit_id,
            nonce=task.nonce,
            signed_task=request.signed_task_json,
        )
        if view is None:
            replay = PermitRefused(
                "this signed task was submitted before; a signed task runs once",
                rule="task.replay",
                fix="submit a new task (the Session signs a fresh one each time)",
            )
            self._audit(peer.name, task, replay)
            abort(context, grpc.StatusCode.ALREADY_EXISTS, replay)
        self._audit(peer.name, task, None, view.task_id)
        self.runner.launch(view.task_id)
        return pb.TaskRef(task_id=view.task_id)

    def _admissible(self, caller_name: str, signed: SignedTask) -> str:
        """The task's validated parameters, if the permit on file covers the signed task.

        The rules are the nodes' own (``governance/permit_check.py``), run here
        so that a researcher hears at once instead of from every node; each
        node runs them again by itself.
        """
        task = signed.task
        if task.researcher != caller_name:
            raise AccessDenied(
                f"{caller_name} submitted a task signed as {task.researcher}",
                rule="task.signer",
                fix="sign tasks with your own identity",
            )
        kind = get_task(task.task_type)
        published = self.access.permit(task.permit_id)
        if published is None:
            raise PermitRefused(
                f"permit {task.permit_id!r} has not been published to this coordinator",
                rule="permit.unknown",
                fix="the data-access body publishes it with `oncofed permit publish`",
            )
        permit = SignedPermit.model_validate_json(published).permit
        try:
            params = kind.params.model_validate_json(task.params_json or "{}")
        except ValidationError as exc:
            raise QueryError(
                f"invalid parameters for {task.task_type!r}: {format_validation_error(exc)}",
                rule="task.params",
                fix="correct the request",
            ) from None
        check_task(
            permit=permit,
            signed=signed,
            kind=kind.permit_kind,
            request=params,
            signed_request=params,
            revocations=self.access.newest_revocations(permit.issuer.name),
            now=utcnow(),
        )
        return str(params.model_dump_json())

    def _audit(
        self, who: str, task: TaskEnvelope, error: OncofedError | None, task_id: str = ""
    ) -> None:
        self.audit.append(
            actor=who,
            action=f"submit:{task.task_type}"[:64],
            permit_id=task.permit_id,
            params_sha256=hashlib.sha256(task.params_json.encode()).hexdigest(),
            outcome=type(error).__name__ if error else "accepted",
            rule=error.rule if error else "",
            task_id=task_id,
        )

    def Watch(self, request: pb.TaskRef, context: grpc.ServicerContext) -> Iterator[pb.TaskStatus]:  # noqa: N802
        last: tuple[object, ...] | None = None
        while context.is_active():
            seen = self.hub.progress_version()
            view = self._task(request.task_id, context, "watch")
            key = (view.state, view.replies, view.expected, view.detail)
            if key != last:
                last = key
                yield status(view)
            if view.finished:
                return
            self.hub.wait_progress(WATCH_POLL_SECONDS, seen)

    def Result(self, request: pb.TaskRef, context: grpc.ServicerContext) -> pb.TaskResult:  # noqa: N802
        view = self._task(request.task_id, context, "result")
        peer = caller(context)
        self.audit.append(
            actor=peer.name,
            action="result",
            permit_id=view.permit_id or "",
            outcome="sealed" if view.result else view.state,
            task_id=view.task_id,
        )
        return pb.TaskResult(
            task_id=view.task_id,
            state=view.state,
            sealed_result=view.result or "",
            error_json=view.error or "",
        )

    def Cancel(self, request: pb.TaskRef, context: grpc.ServicerContext) -> pb.TaskStatus:  # noqa: N802
        peer = caller(context)
        self._task(request.task_id, context, "cancel")
        who = "the researcher" if peer.role == "researcher" else f"data-access body {peer.name}"
        self.store.finish_task(request.task_id, "cancelled", detail=f"cancelled by {who}")
        return status(self._task(request.task_id, context, "cancel"))

    def _task(self, task_id: str, context: grpc.ServicerContext, action: str) -> TaskView:
        """A task the caller may see: a researcher's own, or, for a data-access body, one
        under a permit that body issued. Any other is refused as if it did not exist, and
        the refusal is audited."""
        view = self.store.task(task_id)
        peer = caller(context)
        if view is None or not self._may_see(peer, view):
            self.audit.append(
                actor=peer.name,
                action=action,
                permit_id="",
                outcome="QueryError",
                rule="task.exists",
                task_id=task_id[:64],
            )
            # The same answer for another's task as for none: ids are not a way to probe.
            abort(
                context,
                grpc.StatusCode.NOT_FOUND,
                QueryError(f"no task {task_id!r}", rule="task.exists", fix="check the task id"),
            )
        return view

    def _may_see(self, peer: Peer, view: TaskView) -> bool:
        if peer.role == "researcher":
            return view.researcher == peer.name
        if peer.role == "hdab":
            issuer = self.access.permit_issuer(view.permit_id) if view.permit_id else None
            return issuer == peer.name
        return False


__all__ = ["Researcher"]
