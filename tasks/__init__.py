"""Installed task types.

A node executes only the task types listed here, installed with its oncofed
version; nothing arrives over the wire but parameters. Adding a task means
adding its module beside ``describe.py``, importing it below and listing its
``TASK``: its session call, command and reference docs follow from it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from oncofed.kernel.errors import UnknownTask
from oncofed.tasks import (
    correlation,
    coxph,
    crosstab,
    describe,
    glm,
    histogram,
    kaplan_meier,
    logrank,
    quantiles,
    training,
)
from oncofed.tasks.base import TaskParams, TaskType

TASKS: dict[str, TaskType[Any, Any]] = {
    task.name: task
    for task in (
        describe.TASK,
        correlation.TASK,
        crosstab.TASK,
        histogram.TASK,
        quantiles.TASK,
        glm.TASK,
        kaplan_meier.TASK,
        logrank.TASK,
        coxph.TASK,
        training.TASK,
    )
}


def get_task(name: str) -> TaskType[Any, Any]:
    try:
        return TASKS[name]
    except KeyError:
        raise UnknownTask(
            f"task type {name!r} is not installed",
            rule="task.installed",
            fix=f"use one of: {', '.join(sorted(TASKS))}",
        ) from None


def check_installed(names: Iterable[str], *, rule: str, node: str = "") -> None:
    """Refuse task type names that are not installed here, naming them and what is."""
    unknown = sorted(set(names) - set(TASKS))
    if unknown:
        raise UnknownTask(
            f"task type(s) {unknown} are not installed",
            rule=rule,
            node=node,
            fix=f"use installed task types: {', '.join(sorted(TASKS))}",
        )


def task_for_action(action: str) -> TaskType[Any, Any] | None:
    """The task whose node side handles ``query.<action>``."""
    for task in TASKS.values():
        if action in task.node_handlers or action in task.model_handlers:
            return task
    return None


__all__ = [
    "TASKS",
    "TaskParams",
    "TaskType",
    "check_installed",
    "get_task",
    "task_for_action",
]
