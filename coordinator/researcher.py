"""The researcher-facing API: submit a task, watch it, fetch its result, cancel it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import NoReturn

import grpc
from pydantic import ValidationError

from oncofed.coordinator.hub import Hub
from oncofed.coordinator.runner import TaskRunner
from oncofed.coordinator.store import Store, TaskView
from oncofed.errors import OncofedError, QueryError
from oncofed.node.config import format_validation_error
from oncofed.tasks import get_task
from oncofed.wire import oncofed_pb2 as pb
from oncofed.wire.oncofed_pb2_grpc import ResearcherServicer

WATCH_POLL_SECONDS = 0.5  # upper bound; replies and task ends wake watchers at once


def abort(context: grpc.ServicerContext, code: grpc.StatusCode, error: OncofedError) -> NoReturn:
    """End the call with a typed error the client turns back into its class."""
    context.abort(code, error.to_json())
    raise AssertionError("context.abort returns only by raising")


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
    def __init__(self, store: Store, runner: TaskRunner, hub: Hub) -> None:
        self.store = store
        self.runner = runner
        self.hub = hub

    def Submit(self, request: pb.SubmitRequest, context: grpc.ServicerContext) -> pb.TaskRef:  # noqa: N802
        try:
            task = get_task(request.task_type)
            params = task.params.model_validate_json(request.params_json or "{}")
        except OncofedError as exc:
            abort(context, grpc.StatusCode.INVALID_ARGUMENT, exc)
        except ValidationError as exc:
            abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                QueryError(
                    f"invalid parameters for {request.task_type!r}: {format_validation_error(exc)}",
                    rule="task.params",
                    fix="correct the request",
                ),
            )
        view = self.store.create_task(
            request.task_type, params.model_dump_json(), request.researcher or "anonymous"
        )
        self.runner.launch(view.task_id)
        return pb.TaskRef(task_id=view.task_id)

    def Watch(self, request: pb.TaskRef, context: grpc.ServicerContext) -> Iterator[pb.TaskStatus]:  # noqa: N802
        last: tuple[object, ...] | None = None
        while context.is_active():
            seen = self.hub.progress_version()
            view = self._task(request.task_id, context)
            key = (view.state, view.replies, view.expected, view.detail)
            if key != last:
                last = key
                yield status(view)
            if view.finished:
                return
            self.hub.wait_progress(WATCH_POLL_SECONDS, seen)

    def Result(self, request: pb.TaskRef, context: grpc.ServicerContext) -> pb.TaskResult:  # noqa: N802
        view = self._task(request.task_id, context)
        return pb.TaskResult(
            task_id=view.task_id,
            state=view.state,
            result_json=view.result or "",
            error_json=view.error or "",
        )

    def Cancel(self, request: pb.TaskRef, context: grpc.ServicerContext) -> pb.TaskStatus:  # noqa: N802
        self._task(request.task_id, context)
        self.store.finish_task(request.task_id, "cancelled", detail="cancelled by the researcher")
        return status(self._task(request.task_id, context))

    def _task(self, task_id: str, context: grpc.ServicerContext) -> TaskView:
        view = self.store.task(task_id)
        if view is None:
            abort(
                context,
                grpc.StatusCode.NOT_FOUND,
                QueryError(f"no task {task_id!r}", rule="task.exists", fix="check the task id"),
            )
        return view


__all__ = ["Researcher"]
