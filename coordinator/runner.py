"""Runs each task's server function on the governed Grid, in a worker thread.

On start-up every task that was queued or running when the coordinator
stopped is launched again; its server function replays against the messages
and replies already in the database (see ``grid.py``).
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

from oncofed.coordinator.access_store import AccessStore
from oncofed.coordinator.grid import GovernedGrid
from oncofed.coordinator.hub import Hub
from oncofed.coordinator.store import Store, TaskView
from oncofed.governance.envelope import Authorisation, SignedTask
from oncofed.governance.permits import SignedPermit, SignedRevocations
from oncofed.governance.sealing import seal
from oncofed.kernel.errors import OncofedError, TaskCancelled, TaskFailed
from oncofed.kernel.flower import server_app, server_context
from oncofed.tasks import get_task

log = logging.getLogger(__name__)


class TaskRunner:
    def __init__(self, store: Store, access: AccessStore, hub: Hub, max_parallel: int = 4) -> None:
        self.store = store
        self.access = access
        self.hub = hub
        self._pool = ThreadPoolExecutor(max_parallel, thread_name_prefix="task")

    def launch(self, task_id: str) -> None:
        self._pool.submit(self._run, task_id)

    def recover(self) -> int:
        task_ids = self.store.unfinished_task_ids()
        for task_id in task_ids:
            log.info("resuming task %s after restart", task_id)
            self.launch(task_id)
        return len(task_ids)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _run(self, task_id: str) -> None:
        try:
            self._execute(task_id)
        finally:
            self.hub.notify_progress()

    def _execute(self, task_id: str) -> None:
        view = self.store.task(task_id)
        if view is None or not self.store.start_task(task_id):
            return
        results: list[str] = []
        try:
            task = get_task(view.task_type)
            app = server_app(lambda grid: results.append(task.run_server(grid, view.params)))
            grid = GovernedGrid(
                self.store, self.hub, task_id, view.run_id, lambda: self._authorisation(view)
            )
            app(grid, server_context(view.run_id))
            if not results:
                raise TaskFailed("the server function returned no result", rule="task.result")
            sealed = self._seal(view, results[0])
            self.store.finish_task(task_id, "succeeded", detail="done", result=sealed)
            log.info("task %s (%s) succeeded", task_id, view.task_type)
        except TaskCancelled:
            self.store.finish_task(task_id, "cancelled", detail="cancelled")
        except OncofedError as exc:
            log.info("task %s failed: %s", task_id, exc.one_line())
            self.store.finish_task(task_id, "failed", detail=exc.one_line(), error=exc.to_json())
        except Exception as exc:
            log.exception("task %s crashed", task_id)
            error = TaskFailed(
                f"the coordinator failed running task {task_id} ({type(exc).__name__}: {exc})",
                rule="coordinator.internal",
                fix="report this to the network operator with the task id",
            )
            self.store.finish_task(
                task_id, "failed", detail=error.one_line(), error=error.to_json()
            )

    def _signed_permit(self, view: TaskView) -> str:
        published = self.access.permit(view.permit_id or "")
        if published is None:
            raise TaskFailed(
                f"permit {view.permit_id!r} is no longer on file",
                rule="permit.unknown",
                fix="the data-access body publishes it again",
            )
        return published

    def _authorisation(self, view: TaskView) -> str:
        """What every message of the task carries: read afresh, so that a permit amended or
        revoked mid-task reaches the nodes with the next round."""
        authorisation = Authorisation(
            task=SignedTask.model_validate_json(view.signed_task or ""),
            permit=SignedPermit.model_validate_json(self._signed_permit(view)),
            revocations=tuple(
                SignedRevocations.model_validate_json(text)
                for text in self.access.revocation_lists()
            ),
        )
        return authorisation.model_dump_json()

    def _seal(self, view: TaskView, result: str) -> str:
        permit = SignedPermit.model_validate_json(self._signed_permit(view)).permit
        researcher = permit.person(view.researcher)
        if researcher is None:
            raise TaskFailed(
                f"{view.researcher} is no longer named in permit {permit.permit_id!r}; the "
                "result is discarded",
                rule="permit.person",
                fix="ask the data-access body",
            )
        # Sealed to the cards the body signed: hybrid post-quantum where a card has ML-KEM.
        return seal(result.encode(), (researcher, permit.issuer), context=view.task_id)


__all__ = ["TaskRunner"]
