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

With ``dp=`` the nodes release Kaplan-Meier's noisy event table (explicit
``time_points`` required) and the server runs the same arithmetic on the
pooled noisy counts: ``statistic`` and ``p_value`` estimate the exact test
but treat the noise as data, so under no difference they come out too large
and too small respectively. The result therefore also states the noise's
first-order covariance W of observed minus expected (``count_noise_covariance``)
and the test with W added to the log-rank variance V: under the null
hypothesis O - E is about N(0, V + W), so that p-value holds its level to
first order in the noise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from flwr.serverapp import Grid
from pydantic import BaseModel, Field
from rich.console import Group
from rich.markup import escape
from rich.table import Table
from scipy.stats import chi2

from oncofed.kernel.errors import Param, QueryError
from oncofed.tasks.base import DPReport, TaskType
from oncofed.tasks.survival import (
    EventTable,
    EventTableRelease,
    FloatArray,
    GroupedSurvivalParams,
    NoisyEventTableRelease,
    event_table_node,
    pooled_event_tables,
)
from oncofed.tasks.tables import footer, number


class LogrankParams(GroupedSurvivalParams):
    DP = True
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
    privacy: DPReport | None = Field(
        default=None, description="Mechanism, loss and noise of a DP release of the counts."
    )
    observed_noise_std: list[float] | None = Field(
        default=None,
        description="Under DP: standard deviation of the noise in each group's observed events.",
    )
    noise_std: list[float] | None = Field(
        default=None,
        description="Under DP: first-order standard deviation of the noise in each group's "
        "observed minus expected events.",
    )
    noise_adjusted_statistic: float | None = Field(
        default=None,
        description="Under DP: chi-square with the noise's covariance added to the log-rank "
        "variance.",
    )
    noise_adjusted_p_value: float | None = Field(
        default=None,
        description="Under DP: the p-value to test with; p_value treats the noisy counts as "
        "exact and is too small when the groups do not differ.",
    )

    def to_frame(self) -> pd.DataFrame:
        """Per group: rows, observed and expected events."""
        frame = pd.DataFrame(
            {"n": self.n, "observed": self.observed, "expected": self.expected},
            index=pd.Index(self.groups, name=self.group),
        )
        frame["observed/expected"] = frame["observed"] / frame["expected"]
        return frame

    def summary(self) -> str:
        lines = [
            f"log-rank test of {self.duration} (event {self.event}) by {self.group}, "
            f"{self.dataset}, {len(self.nodes)} nodes",
            f"time grid: {self.time_grid}",
            self.to_frame().to_string(float_format=lambda v: f"{v:.4f}"),
            f"chi-square = {self.statistic:.4f} on {self.df} df, p = {self.p_value:.4g}",
        ]
        return "\n".join([*lines, *self.noise_lines()])

    def noise_lines(self) -> list[str]:
        """Under DP, how noisy the counts are and the test that allows for it."""
        if self.privacy is None or self.noise_std is None:
            return []
        epsilon = max(self.privacy.epsilon.values())
        stds = ", ".join(f"{g}: {v:.3g}" for g, v in zip(self.groups, self.noise_std, strict=True))
        return [
            f"DP (epsilon {epsilon:g} per node): counts are noisy, so the chi-square and p "
            "above are approximate and p is too small when the groups do not differ",
            f"noise std of observed - expected: {stds}",
            f"allowing for the noise: chi-square = {self.noise_adjusted_statistic:.4f}, "
            f"p = {self.noise_adjusted_p_value:.4g}",
        ]


@dataclass(frozen=True)
class LogrankTest:
    """Observed and expected events per group and their hypergeometric covariance V."""

    observed: FloatArray
    expected: FloatArray
    covariance: FloatArray

    def statistic(self, noise: FloatArray | None = None) -> float:
        """The chi-square on the first k - 1 groups; ``noise``: a covariance added to V."""
        v = self.covariance if noise is None else self.covariance + noise
        z = (self.observed - self.expected)[:-1]
        return float(z @ np.linalg.pinv(v[:-1, :-1]) @ z)


def logrank_test(tables: Sequence[EventTable]) -> LogrankTest:
    """lifelines' ``multivariate_logrank_test`` arithmetic on pooled event tables."""
    k = len(tables)
    times = np.unique(np.concatenate([table.time for table in tables]))
    at_risk = np.stack([t.at_risk_on(times) for t in tables], axis=1).astype(np.float64)
    events = np.stack([t.events_on(times) for t in tables], axis=1).astype(np.float64)
    # A time without events adds nothing; under DP an agreed point may have nobody at risk.
    occupied = events.sum(axis=1) > 0
    at_risk, events = at_risk[occupied], events[occupied]
    n_t, d_t = at_risk.sum(axis=1), events.sum(axis=1)
    observed = events.sum(axis=0)
    expected = (at_risk * (d_t / n_t)[:, None]).sum(axis=0)
    # Hypergeometric variance; (n - d) / (n - 1) is 1 when one row is at risk, as in lifelines.
    ratio = np.divide(n_t - d_t, n_t - 1, out=np.ones_like(n_t), where=n_t > 1)
    factor = ratio * d_t / n_t**2
    covariance = -(at_risk * factor[:, None]).T @ at_risk
    covariance[np.diag_indices(k)] += (factor[:, None] * at_risk * n_t[:, None]).sum(axis=0)
    return LogrankTest(observed, expected, covariance)


def count_noise_covariance(tables: Sequence[EventTable], count_std: float) -> FloatArray:
    """First-order covariance of the noise in O - E when every count carries noise ``count_std``.

    For the DP event table, where each group has a cell at every agreed time
    point. With N the numbers at risk (a group's cells at or after t), n and
    d the totals, P = N / n and h = d / n, group g's O - E moves with an
    event cell (h, s) by A - Q and with a censoring cell by -Q, where
    A_ghs = [g = h] - P_gs and Q_ghs = sum over t <= s of A_ght h_t: an event
    counts in O at once, and every removed row also shrinks the risk sets
    that E sums over. Independent noise then gives W = std^2 J J^T.
    """
    k = len(tables)
    at_risk = np.stack([t.at_risk_on(t.time) for t in tables], axis=1).astype(np.float64)
    events = np.stack([t.events for t in tables], axis=1).astype(np.float64)
    n_t, d_t = at_risk.sum(axis=1), events.sum(axis=1)
    share = np.divide(at_risk, n_t[:, None], out=np.zeros_like(at_risk), where=n_t[:, None] > 0)
    hazard = np.divide(d_t, n_t, out=np.zeros_like(d_t), where=n_t > 0)
    # Where nobody is at risk a cell's noise enters O and E alike and leaves O - E unchanged.
    a = (np.eye(k)[:, :, None] - share.T[:, None, :]) * (n_t > 0)
    q = np.cumsum(a * hazard, axis=2)
    event_part, censoring_part = (a - q).reshape(k, -1), q.reshape(k, -1)
    jacobian = np.concatenate([event_part, censoring_part], axis=1)
    noise: FloatArray = count_std**2 * (jacobian @ jacobian.T)
    return noise


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
    if sum(int(table.events.sum()) for table in pooled.tables) == 0:
        raise QueryError(
            "no events in any group, so there is nothing to compare",
            rule="logrank.no_events",
            node=everyone,
            fix=f"check the event column, or widen the {Param('where')} filter or the time points",
            column=params.event,
        )
    test = logrank_test(pooled.tables)
    statistic = test.statistic()
    observed_noise: list[float] | None = None
    noise_std: list[float] | None = None
    adjusted: float | None = None
    if pooled.privacy is not None:
        count_std = pooled.privacy.noise_std["count"]
        noise = count_noise_covariance(pooled.tables, count_std)
        # O sums a group's event cells, one per agreed time point.
        observed_noise = [count_std * float(np.sqrt(t.time.size)) for t in pooled.tables]
        noise_std = np.sqrt(np.diag(noise)).tolist()
        adjusted = test.statistic(noise)
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
        observed=[int(v) for v in test.observed],
        expected=test.expected.tolist(),
        statistic=statistic,
        df=k - 1,
        p_value=float(chi2.sf(statistic, k - 1)),
        nodes=pooled.nodes,
        rows_dropped=pooled.rows_dropped,
        rows_outside_categories=pooled.rows_outside_categories,
        privacy=pooled.privacy,
        observed_noise_std=observed_noise,
        noise_std=noise_std,
        noise_adjusted_statistic=adjusted,
        noise_adjusted_p_value=None if adjusted is None else float(chi2.sf(adjusted, k - 1)),
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
    return Group(
        table, test, *result.noise_lines(), footer(f"time grid: {result.time_grid}", result.nodes)
    )


TASK: TaskType[LogrankParams, LogrankResult] = TaskType(
    name="logrank",
    params=LogrankParams,
    result=LogrankResult,
    serve=logrank_serve,
    node_handlers={"logrank": event_table_node},
    releases=(EventTableRelease, NoisyEventTableRelease),
    summary="log-rank test of equal survival across two or more groups",
    arguments=("duration", "event", "by"),
    table=logrank_table,
)

__all__ = [
    "TASK",
    "LogrankParams",
    "LogrankResult",
    "LogrankTest",
    "count_noise_covariance",
    "logrank_test",
]
