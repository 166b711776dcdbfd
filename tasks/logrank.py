"""The log-rank test of equal survival in two or more agreed groups.

It needs exactly what a grouped Kaplan-Meier needs -- per group and grid
time, the numbers of events and censorings -- so the nodes run the same
handler (``survival.event_table_node``). The server pools the counts, takes
the numbers at risk in every group at every pooled time, and computes
observed minus expected events and their covariance as
``lifelines.statistics.multivariate_logrank_test`` does (which
``logrank_test`` calls for two groups): the chi-square statistic on
``k - 1`` degrees of freedom and its p-value equal lifelines' on the pooled
rows with durations on the grid.

A group in which nobody had the event is a valid input (it contributes
expected events but no observed ones); a group with no rows at all, or data
without a single event, has no test and is refused.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from flwr.serverapp import Grid
from pydantic import BaseModel, Field
from rich.console import Group
from rich.markup import escape
from rich.table import Table
from scipy.stats import chi2

from oncofed.kernel.errors import QueryError
from oncofed.tasks.base import TaskType
from oncofed.tasks.survival import (
    EventTableRelease,
    GroupedSurvivalParams,
    event_table_node,
    pooled_event_tables,
)
from oncofed.tasks.tables import footer, number


class LogrankParams(GroupedSurvivalParams):
    by: str = Field(description="Column whose agreed categories are the groups compared.")


class LogrankResult(BaseModel):
    dataset: str
    duration: str
    event: str
    group: str
    time_grid: str = Field(description="The agreed grid the durations were moved onto.")
    grid: float | None
    time_points: list[float] | None
    exact_times: bool
    groups: list[str]
    n: list[int]
    observed: list[int]
    expected: list[float]
    statistic: float = Field(description="Chi-square statistic.")
    df: int = Field(description="Degrees of freedom: number of groups - 1.")
    p_value: float
    nodes: list[str]
    rows_dropped: dict[str, int] = Field(description="Rows with a missing value, per node.")
    rows_outside_categories: int = 0

    def to_frame(self) -> pd.DataFrame:
        """Per group: rows, observed and expected events."""
        frame = pd.DataFrame(
            {"n": self.n, "observed": self.observed, "expected": self.expected},
            index=pd.Index(self.groups, name=self.group),
        )
        frame["observed/expected"] = frame["observed"] / frame["expected"]
        return frame

    def summary(self) -> str:
        return "\n".join(
            [
                f"log-rank test of {self.duration} (event {self.event}) by {self.group}, "
                f"{self.dataset}, {len(self.nodes)} nodes",
                f"time grid: {self.time_grid}",
                self.to_frame().to_string(float_format=lambda v: f"{v:.4f}"),
                f"chi-square = {self.statistic:.4f} on {self.df} df, p = {self.p_value:.4g}",
            ]
        )


def logrank_serve(grid: Grid, params: LogrankParams) -> LogrankResult:
    pooled = pooled_event_tables(grid, params, "logrank")
    everyone = ", ".join(pooled.nodes)
    k = len(pooled.groups)
    if k < 2:
        raise QueryError(
            f"the log-rank test compares groups, but only {pooled.groups[0]!r} is agreed",
            rule="logrank.groups",
            node=everyone,
            fix="agree two or more categories for the grouping column",
            column=params.by,
        )
    times = np.unique(np.concatenate([table.time for table in pooled.tables]))
    at_risk = np.stack([t.at_risk_on(times) for t in pooled.tables], axis=1).astype(np.float64)
    events = np.stack([t.events_on(times) for t in pooled.tables], axis=1).astype(np.float64)
    if events.sum() == 0:
        raise QueryError(
            "no events in any group, so there is nothing to compare",
            rule="logrank.no_events",
            node=everyone,
            fix="check the event column, or widen where= / the time points",
            column=params.event,
        )
    n_t, d_t = at_risk.sum(axis=1), events.sum(axis=1)
    observed = events.sum(axis=0)
    expected = (at_risk * (d_t / n_t)[:, None]).sum(axis=0)
    # Hypergeometric variance; (n - d) / (n - 1) is 1 when one row is at risk, as in lifelines.
    ratio = np.divide(n_t - d_t, n_t - 1, out=np.ones_like(n_t), where=n_t > 1)
    factor = ratio * d_t / n_t**2
    covariance = -(at_risk * factor[:, None]).T @ at_risk
    covariance[np.diag_indices(k)] += (factor[:, None] * at_risk * n_t[:, None]).sum(axis=0)
    z = (observed - expected)[:-1]
    statistic = float(z @ np.linalg.pinv(covariance[:-1, :-1]) @ z)
    return LogrankResult(
        dataset=params.dataset,
        duration=params.duration,
        event=params.event,
        group=str(params.by),
        time_grid=params.time_grid,
        grid=params.grid,
        time_points=list(params.time_points) if params.time_points is not None else None,
        exact_times=params.exact_times,
        groups=list(pooled.groups),
        n=[table.n for table in pooled.tables],
        observed=[int(v) for v in observed],
        expected=expected.tolist(),
        statistic=statistic,
        df=k - 1,
        p_value=float(chi2.sf(statistic, k - 1)),
        nodes=pooled.nodes,
        rows_dropped=pooled.rows_dropped,
        rows_outside_categories=pooled.rows_outside_categories,
    )


# ---- terminal ------------------------------------------------------------


def logrank_table(result: LogrankResult) -> Group:
    """Observed and expected events per group, then the test."""
    table = Table(title=f"log-rank test {result.dataset}", title_justify="left")
    frame = result.to_frame()
    table.add_column(escape(result.group))
    for column in frame.columns:
        table.add_column(column, justify="right")
    for label, row in frame.iterrows():
        table.add_row(escape(str(label)), *(number(v) for v in row.tolist()))
    test = f"chi-square {result.statistic:.6g} on {result.df} df, p = {result.p_value:.4g}"
    return Group(table, test, footer(f"time grid: {result.time_grid}", result.nodes))


TASK: TaskType[LogrankParams, LogrankResult] = TaskType(
    name="logrank",
    params=LogrankParams,
    result=LogrankResult,
    serve=logrank_serve,
    node_handlers={"logrank": event_table_node},
    releases=(EventTableRelease,),
    summary="log-rank test of equal survival across two or more groups",
    arguments=("duration", "event", "by"),
    table=logrank_table,
)

__all__ = ["TASK", "LogrankParams", "LogrankResult"]
