"""The tasks a researcher's console submitted, and their results, kept on their machine.

The coordinator keeps no list of a researcher's tasks, and a result opens only
with the researcher's key; so the console writes each submitted task to a
JSON-lines file before showing it, and each result (opened) once it has it.
A console restarted after a crash lists and shows everything it had.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

TASKS_FILE = "tasks.jsonl"
RESULTS_FOLDER = "results"


@dataclass(frozen=True)
class SubmittedTask:
    task_id: str
    task: str
    permit: str
    params: dict[str, Any]
    submitted_at: float


class TaskLog:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        (folder / RESULTS_FOLDER).mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def add(self, entry: SubmittedTask) -> None:
        line = json.dumps(asdict(entry), sort_keys=True) + "\n"
        with self._lock, open(self.folder / TASKS_FILE, "a", encoding="utf-8") as out:
            out.write(line)
            out.flush()
            os.fsync(out.fileno())

    def tasks(self) -> list[SubmittedTask]:
        """Newest first."""
        path = self.folder / TASKS_FILE
        if not path.exists():
            return []
        entries = [
            SubmittedTask(**json.loads(line))
            for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip()
        ]
        return sorted(entries, key=lambda e: e.submitted_at, reverse=True)

    def task(self, task_id: str) -> SubmittedTask | None:
        return next((t for t in self.tasks() if t.task_id == task_id), None)

    def result(self, task_id: str) -> str | None:
        path = self._result_path(task_id)
        return path.read_text(encoding="utf-8") if path.exists() else None

    def keep_result(self, task_id: str, result_json: str) -> None:
        path = self._result_path(task_id)
        partial = path.with_suffix(".tmp")
        partial.write_text(result_json, encoding="utf-8")
        partial.replace(path)

    def _result_path(self, task_id: str) -> Path:
        # Task ids come from the coordinator: never let one name a path outside the folder.
        safe = "".join(c for c in task_id if c.isalnum() or c in "-_")
        return self.folder / RESULTS_FOLDER / f"{safe}.json"


__all__ = ["RESULTS_FOLDER", "TASKS_FILE", "SubmittedTask", "TaskLog"]
