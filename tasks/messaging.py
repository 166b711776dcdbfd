"""How a task's server function talks to the nodes through a Flower ``Grid``.

Waiting for enough nodes, sending one step to each and collecting replies
and typed refusals, and showing the researcher a line of progress. Every
runtime's grid works here: the governed one and Flower's simulation.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Protocol, runtime_checkable

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from oncofed.kernel.errors import NodeUnavailable, OncofedError, Param
from oncofed.kernel.flower import params_content, reply_error
from oncofed.tasks.base import TaskParams


@runtime_checkable
class ReportsProgress(Protocol):
    """A grid that can show the researcher a line of progress (the governed one can)."""

    def report(self, detail: str) -> None: ...


def report_progress(grid: Grid, detail: str) -> None:
    """Show ``detail`` to the researcher watching the task, where the runtime has a display."""
    if isinstance(grid, ReportsProgress):
        grid.report(detail)


def wait_for_nodes(grid: Grid, params: TaskParams, poll: float = 0.1) -> list[int]:
    """Node ids online once at least ``params.min_nodes`` are, within the timeout."""
    deadline = time.monotonic() + params.timeout
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= params.min_nodes:
            return nodes
        if time.monotonic() >= deadline:
            raise NodeUnavailable(
                f"only {len(nodes)} of the {params.min_nodes} nodes required were online "
                f"after {params.timeout:g} s",
                rule="task.min_nodes",
                fix=f"start more nodes, lower {Param('min_nodes')}, or raise {Param('timeout')}",
            )
        time.sleep(poll)


def exchange(
    grid: Grid,
    action: str,
    params: TaskParams,
    node_ids: Iterable[int],
    group_id: str = "",
    extra: Mapping[int, Mapping[str, ConfigRecord]] | None = None,
) -> tuple[dict[int, RecordDict], list[OncofedError]]:
    """Send ``query.<action>`` to each node; replies by node, and the errors, not raised.

    ``extra`` adds records to the message of a node (a secure-aggregation
    stage carries its keys and shares this way).
    """
    node_ids = list(node_ids)
    content_json = params.model_dump_json()
    messages = []
    for node_id in node_ids:
        content = params_content(content_json, participants=len(node_ids))
        for name, record in (extra or {}).get(node_id, {}).items():
            content[name] = record
        messages.append(
            Message(content, node_id, f"query.{action}", group_id=group_id, ttl=params.timeout)
        )
    return exchange_messages(grid, messages, params.timeout)


def exchange_messages(
    grid: Grid, messages: list[Message], timeout: float
) -> tuple[dict[int, RecordDict], list[OncofedError]]:
    """Send the messages; replies by node, and the errors (a silent node's too), not raised."""
    replies = list(grid.send_and_receive(messages, timeout=timeout))
    by_node: dict[int, RecordDict] = {}
    errors: list[OncofedError] = []
    for reply in replies:
        if reply.has_error():
            errors.append(reply_error(reply))
        else:
            by_node[reply.metadata.src_node_id] = reply.content
    answered = set(by_node) | {r.metadata.src_node_id for r in replies}
    errors.extend(
        NodeUnavailable(
            f"node {node_id} did not reply within {timeout:g} s",
            rule="task.timeout",
            node=str(node_id),
            fix=f"check that the node is running, or raise the task's {Param('timeout')}",
        )
        for node_id in (m.metadata.dst_node_id for m in messages)
        if node_id not in answered
    )
    return by_node, errors


__all__ = [
    "ReportsProgress",
    "exchange",
    "exchange_messages",
    "report_progress",
    "wait_for_nodes",
]
