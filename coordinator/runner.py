"""Runs each task's server function on the governed Grid, in a worker thread.

On start-up every task that was queued or running when the coordinator
stopped is launched again; its server function replays against the messages
and replies already in the database (see ``grid.py``).
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

from oncofed.coordinator.grid import GovernedGrid
from oncofed.coordinator.hub import Hub
from oncofed.coordinator.store import Store
from oncofed.errors import OncofedError, TaskCancelled, TaskFailed
from oncofed.flower import server_app, server_context
from oncofed.tasks import get_task

log = logging.getLogger(__name__)


class TaskRunner:
    def __init__(self, store: Store, hub: Hub, max_parallel: int = 4) -> None:
        self.store = store
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
            app(
                GovernedGrid(self.store, self.hub, task_id, view.run_id),
                server_context(view.run_id),
            )
            if not results:
                raise TaskFailed("the server function returned no result", rule="task.result")
            self.store.finish_task(task_id, "succeeded", detail="done", result=results[0])
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


__all__ = ["TaskRunner"]
