"""Rows per node and in all, of the rows a ``where`` filter keeps: the smallest whole task.

Not installed with oncofed: ``tests/integration/test_new_task.py`` copies this
module into a copy of the package, adds it to the registry in
``tasks/__init__.py`` and finds it in ``Session.run`` and ``oncofed query``.
"""

from __future__ import annotations

import pandas as pd
from flwr.serverapp import Grid
from pydantic import BaseModel, Field
from rich.table import Table

from oncofed.privacy.disclosure import check_cells
from oncofed.privacy.release import Count, Release
from oncofed.tasks.base import LocalDataset, TaskParams, TaskType, released, selected_rows
from oncofed.tasks.broadcast import broadcast
from oncofed.tasks.messaging import wait_for_nodes


class RowCountParams(TaskParams):
    label: str = Field(default="rows", description="What to call the count in the result.")


class RowCountResult(BaseModel):
    label: str
    total: int
    nodes: list[str]

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame({self.label: [self.total]}, index=pd.Index(["all"], name="nodes"))


class RowsRelease(Release):
    """What a node sends: the number of rows it kept."""

    rows: Count


def row_count_node(params: RowCountParams, local: LocalDataset) -> RowsRelease:
    rows = len(selected_rows(params, local))
    check_cells([rows], local.policy, local.node_name, what="count", fix="widen the filter")
    return RowsRelease(rows=rows)


def row_count_serve(grid: Grid, params: RowCountParams) -> RowCountResult:
    replies = broadcast(grid, "row_count", params, wait_for_nodes(grid, params))
    parts = released(replies, RowsRelease)
    return RowCountResult(
        label=params.label,
        total=sum(part.rows for _, part in parts),
        nodes=[node for node, _ in parts],
    )


def row_count_table(result: RowCountResult) -> Table:
    table = Table(title=f"{result.label} over {len(result.nodes)} nodes")
    table.add_column(result.label, justify="right")
    table.add_row(str(result.total))
    return table


TASK: TaskType[RowCountParams, RowCountResult] = TaskType(
    name="row_count",
    params=RowCountParams,
    result=RowCountResult,
    serve=row_count_serve,
    node_handlers={"row_count": row_count_node},
    releases=(RowsRelease,),
    summary="rows the filter keeps, over all nodes",
    table=row_count_table,
)
