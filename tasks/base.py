"""The task contract: what a task type is, and the helpers its server side uses.

A task type bundles its pydantic parameters, its node-side handlers (run inside
the node's ClientApp, behind the node's mods) and its server-side function
(which drives a Flower ``Grid``). The runtime knows tasks only through this
contract, so adding a task never touches the node or the coordinator.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Generic, Literal, Protocol, TypeVar

import pandas as pd
from flwr.app import Message, RecordDict
from flwr.serverapp import Grid
from pydantic import BaseModel, ConfigDict, Field

from oncofed.errors import FederatedErrors, NodeUnavailable, OncofedError, TaskFailed
from oncofed.flower import params_content, reply_error
from oncofed.privacy.policy import NodePolicy
from oncofed.schema import DatasetSchema
from oncofed.tasks.filters import Filter, check_filter, columns_of, evaluate

# "factor": a formula's categorical factor; check_formula checks its levels, any type will do.
ColumnRole = Literal["numeric", "group", "filter", "factor"]

P = TypeVar("P", bound="TaskParams")
R = TypeVar("R", bound=BaseModel)


class TaskParams(BaseModel):
    """Parameters every task has. Subclasses add their own, all validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dataset: str = Field(min_length=1, description="Dataset name as the nodes offer it.")
    min_nodes: int = Field(default=1, ge=1, description="Wait until this many nodes are online.")
    timeout: float = Field(
        default=120.0, gt=0, le=86_400, description="Seconds to wait for nodes and replies."
    )
    where: Filter | None = Field(default=None, description="Rows to include (see filters.py).")

    def required_columns(self) -> dict[str, ColumnRole]:
        """Columns the request reads, with the role each plays (checked by every node)."""
        return dict.fromkeys(sorted(columns_of(self.where)), "filter") if self.where else {}

    def check_schema(self, schema: DatasetSchema, node: str) -> None:
        """Task-specific checks against a node's schema, run before any row is read.

        The node has already checked that every ``required_columns`` column
        exists in its role; tasks with formulas or other structure add theirs.
        """
        if self.where is not None:
            check_filter(self.where, schema, node)


@dataclass(frozen=True)
class LocalDataset:
    """A node's view of one of its datasets, handed to node-side handlers."""

    node_name: str
    name: str
    schema: DatasetSchema
    frame: pd.DataFrame
    policy: NodePolicy = field(default_factory=NodePolicy)


class LocalDatasets(Protocol):
    """What a node offers to handlers: its name and its datasets by name."""

    @property
    def node_name(self) -> str: ...

    def schema(self, dataset: str) -> DatasetSchema | None: ...

    def load(self, dataset: str) -> LocalDataset: ...


def selected_rows(params: TaskParams, local: LocalDataset) -> pd.DataFrame:
    """The rows a request's ``where`` keeps (all rows without one)."""
    if params.where is None:
        return local.frame
    return local.frame.loc[evaluate(params.where, local.frame)]


NodeHandler = Callable[[P, LocalDataset], RecordDict]


@dataclass(frozen=True)
class TaskType(Generic[P, R]):
    """One federated analysis: parameters, node handlers and server function."""

    name: str
    params: type[P]
    result: type[R]
    serve: Callable[[Grid, P], R]
    node_handlers: Mapping[str, NodeHandler[P]] = field(default_factory=dict)
    summary: str = ""

    def run_server(self, grid: Grid, params_json: str) -> str:
        """Validate parameters, drive the grid, and return the result as JSON."""
        params = self.params.model_validate_json(params_json)
        return self.serve(grid, params).model_dump_json()


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
                fix="start more nodes, lower min_nodes, or raise the timeout",
            )
        time.sleep(poll)


def broadcast(
    grid: Grid,
    action: str,
    params: TaskParams,
    node_ids: Iterable[int],
    group_id: str = "",
) -> dict[int, RecordDict]:
    """Send one ``query.<action>`` with the parameters to each node; return replies by node.

    Any refusal or failure raises one typed error naming every node that
    refused, so a researcher sees all the problems at once.
    """
    node_ids = list(node_ids)
    content_json = params.model_dump_json()
    messages = [
        Message(
            params_content(content_json),
            node_id,
            f"query.{action}",
            group_id=group_id,
            ttl=params.timeout,
        )
        for node_id in node_ids
    ]
    replies = list(grid.send_and_receive(messages, timeout=params.timeout))
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
            f"node {node_id} did not reply within {params.timeout:g} s",
            rule="task.timeout",
            node=str(node_id),
            fix="check that the node is running, or raise the task's timeout",
        )
        for node_id in node_ids
        if node_id not in answered
    )
    if errors:
        raise FederatedErrors.combine(errors)
    if not by_node:
        raise TaskFailed("no node replied", rule="task.no_replies", fix="start nodes first")
    return by_node


__all__ = [
    "ColumnRole",
    "LocalDataset",
    "LocalDatasets",
    "NodeHandler",
    "TaskParams",
    "TaskType",
    "broadcast",
    "selected_rows",
    "wait_for_nodes",
]
