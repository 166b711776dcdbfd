"""The parameter reference of every installed task, written from the task declarations.

``docs/analyses/reference.md`` is this module's output; a test fails when the
two differ, so the reference cannot drift from the code. Regenerate it with::

    python -m oncofed.client.reference > docs/analyses/reference.md
"""

from __future__ import annotations

import inspect
from typing import Any

from oncofed.client.cli_query import parameters
from oncofed.client.session import Session
from oncofed.tasks import TASKS
from oncofed.tasks.base import TaskType

HEADER = """# Task reference

Every analysis a node can run, with every parameter a researcher sets, as
`Session` takes it in Python and as `oncofed query` takes it on the command
line. Generated from the task declarations in `tasks/` by
`python -m oncofed.client.reference`; the guides in this folder explain the
analyses and their privacy rules.

Every task also takes `dataset` (the session's by default), `where` (rows to
include), `min_nodes` and `timeout`. On the command line, a list is written
comma-separated (`--categories 1,2`), a mapping as `KEY=VALUE[,VALUE]` once per
key (`--bounds age=40,90`), a group of settings as `KEY=VALUE,KEY=VALUE`
(`--dp epsilon=0.5,delta=1e-6`), and a filter or a formula as its text.
"""


def _signature(task: TaskType[Any, Any]) -> str:
    method = getattr(Session, task.name, None)
    if method is None:
        args = ", ".join(f"{name}=..." for name in task.params.researcher_interface())
        return f'Session.run("{task.name}", {args})'
    names: list[str] = []
    for name, p in inspect.signature(method).parameters.items():
        if p.kind is inspect.Parameter.KEYWORD_ONLY and "*" not in names:
            names.append("*")
        if name != "self":
            names.append(name if p.default is p.empty else f"{name}={p.default!r}")
    return f"Session.{task.name}({', '.join(names)})"


def task_reference(task: TaskType[Any, Any]) -> str:
    command = task.name.replace("_", "-")
    words = " ".join(name.upper() for name in task.arguments)
    lines = [
        f"## {task.name}",
        "",
        f"{task.summary[:1].upper()}{task.summary[1:]}.",
        "",
        "```text",
        _signature(task),
        f"oncofed query {command} {words} [OPTIONS]".replace("  ", " "),
        "```",
        "",
        "| parameter | command line | default | what it is |",
        "|---|---|---|---|",
    ]
    for parameter in parameters(task):
        line = parameter.name.upper() if parameter.name in task.arguments else parameter.flag
        if parameter.info.is_required():
            default = "required"
        else:
            value = parameter.info.get_default(call_default_factory=True)
            default = f"`{value!r}`"
        text = " ".join((parameter.info.description or "").split()).replace("|", "\\|")
        lines.append(f"| `{parameter.name}` | `{line}` | {default} | {text} |")
    return "\n".join(lines) + "\n"


def reference_markdown() -> str:
    return HEADER + "".join("\n" + task_reference(task) for task in TASKS.values())


if __name__ == "__main__":
    print(reference_markdown(), end="")


__all__ = ["reference_markdown", "task_reference"]
