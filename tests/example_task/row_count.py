"""Rows per node and in all, of the rows a ``where`` filter keeps: the smallest whole task.

Not installed with oncofed: ``tests/integration/test_new_task.py`` copies this
module into a copy of the package, adds it to the registry in
``tasks/__init__.py`` and finds it in ``Session.run`` and ``oncofed query``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict
from flwr.serverapp import Grid
from pydantic import BaseModel, Field
from rich.table import Table

from oncofed.privacy.disclosure import check_cells
from oncofed.tasks.base import LocalDataset, TaskParams, TaskType, selected_rows
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


def row_count_node(params: RowCountParams, local: LocalDataset) -> RecordDict:
    rows = len(selected_rows(params, local))
    check_cells([rows], local.policy, local.node_name, what="count", fix="widen the filter")
    return RecordDict(
        {
            "rows": ArrayRecord({"n": Array(np.array([rows], dtype=np.int64))}),
            "meta": ConfigRecord({"node": local.node_name}),
        }
    )


def row_count_serve(grid: Grid, params: RowCountParams) -> RowCountResult:
    replies = broadcast(grid, "row_count", params, wait_for_nodes(grid, params))
    return RowCountResult(
        label=params.label,
        total=sum(int(r.array_records["rows"]["n"].numpy()[0]) for r in replies.values()),
        nodes=sorted(str(r.config_records["meta"]["node"]) for r in replies.values()),
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
    summary="rows the filter keeps, over all nodes",
    table=row_count_table,
)
