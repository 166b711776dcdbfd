"""Kaplan-Meier survival curves, overall or per agreed group, on the agreed time grid.

Each node releases, per agreed group and grid time, its number of events and
of censorings (``survival.event_table_node``; with ``dp=``, noisy counts at
every agreed time point). The number at risk at a time is
each group's pooled total minus the rows removed before it, so the server has
the pooled event table and computes lifelines' estimator from it: the product
limit, Greenwood's variance and the exponential ("log(-log)") confidence band
that ``KaplanMeierFitter`` draws by default. The result equals
``KaplanMeierFitter`` on the pooled rows with durations on the grid.
"""

from __future__ import annotations

from statistics import NormalDist
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from flwr.serverapp import Grid
from pydantic import BaseModel, Field
from rich.console import Group
from rich.markup import escape
from rich.table import Table

from oncofed.tasks.base import DPReport, TaskType
from oncofed.tasks.plotting import pyplot
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

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


class KaplanMeierParams(GroupedSurvivalParams):
    DP = True
    alpha: float = Field(default=0.05, gt=0, lt=1, description="1 - confidence level.")


class KaplanMeierCurve(BaseModel):
    """One group's survival table, lifelines' ``survival_function_`` with its band."""

    group: str
    n: int
    total_events: int
    median: float | None = Field(description="First time S(t) <= 0.5; None if never reached.")
    median_ci_lower: float | None
    median_ci_upper: float | None
    time: list[float]
    at_risk: list[int]
    events: list[int]
    censored: list[int]
    survival: list[float]
    ci_lower: list[float]
    ci_upper: list[float]

    def to_frame(self) -> pd.DataFrame:
        columns = ("at_risk", "events", "censored", "survival", "ci_lower", "ci_upper")
        frame = pd.DataFrame({c: getattr(self, c) for c in columns}, index=self.time)
        frame.index.name = "time"
        return frame


class KaplanMeierResult(BaseModel):
    dataset: str
    duration: str
    event: str
    by: str | None
    time_grid: str = Field(description="The agreed grid the durations were moved onto.")
    grid: float | None
    time_points: list[float] | None
    exact_times: bool
    alpha: float
    curves: list[KaplanMeierCurve]
    nodes: list[str]
    rows_dropped: dict[str, int] = Field(description="Rows with a missing value, per node.")
    rows_outside_categories: int = 0
    privacy: DPReport | None = Field(
        default=None, description="Mechanism, loss and noise of a DP release of the counts."
    )

    def curve(self, group: str | None = None) -> KaplanMeierCurve:
        """The curve of ``group`` (the only curve without ``by``)."""
        if group is None and len(self.curves) == 1:
            return self.curves[0]
        for curve in self.curves:
            if curve.group == group:
                return curve
        raise KeyError(f"no group {group!r}; groups: {[c.group for c in self.curves]}")

    def to_frame(self) -> pd.DataFrame:
        """The survival table(s): indexed by time, or by (group, time) with ``by``."""
        if self.by is None:
            return self.curves[0].to_frame()
        return pd.concat({c.group: c.to_frame() for c in self.curves}, names=[self.by, "time"])

    def medians(self) -> pd.DataFrame:
        """Median survival per group with its confidence interval (NaN: not reached)."""
        level = f"{1 - self.alpha:.0%}"
        rows = {
            c.group: {
                "n": c.n,
                "events": c.total_events,
                "median": c.median,
                f"lower {level}": c.median_ci_lower,
                f"upper {level}": c.median_ci_upper,
            }
            for c in self.curves
        }
        frame = pd.DataFrame.from_dict(rows, orient="index").astype({"n": int, "events": int})
        frame.index.name = self.by or "group"
        return frame

    def plot(self, ax: Axes | None = None, ci: bool = True) -> Figure:
        """Step curves with their confidence bands; returns the matplotlib figure."""
        if ax is None:
            ax = pyplot().figure(figsize=(7.0, 4.5)).add_subplot()
        for curve in self.curves:
            label = curve.group if self.by is not None else "all"
            median = "not reached" if curve.median is None else f"{curve.median:g}"
            (line,) = ax.step(
                curve.time,
                curve.survival,
                where="post",
                label=f"{label} (n={curve.n}, median {median})",
            )
            if ci:
                ax.fill_between(
                    curve.time,
                    curve.ci_lower,
                    curve.ci_upper,
                    step="post",
                    alpha=0.2,
                    color=line.get_color(),
                    linewidth=0,
                )
        ax.set_ylim(0.0, 1.02)
        ax.set_xlim(left=0.0)
        ax.set_xlabel(self.duration)
        ax.set_ylabel("survival probability")
        grouped = f" by {self.by}" if self.by else ""
        ax.set_title(
            f"Kaplan-Meier, {self.dataset}{grouped}: {len(self.nodes)} nodes, "
            f"{1 - self.alpha:.0%} band",
            fontsize="medium",
        )
        ax.legend(loc="upper right", fontsize="small", title=self.by)
        figure = ax.get_figure(root=True)
        assert figure is not None, "an Axes made by matplotlib belongs to a figure"
        figure.text(0.01, 0.005, f"time grid: {self.time_grid}", fontsize="x-small", alpha=0.7)
        return figure


# ---- server side --------------------------------------------------------


def kaplan_meier_curve(group: str, table: EventTable, alpha: float) -> KaplanMeierCurve:
    """lifelines' product-limit estimate and exponential Greenwood band from pooled counts."""
    time, at_risk, events, censored = table.time, table.at_risk, table.events, table.censored
    if time.size == 0 or time[0] > 0:
        # lifelines' timeline starts at 0, where everyone is at risk.
        time = np.concatenate([[0.0], time])
        at_risk = np.concatenate([[table.n], at_risk])
        events = np.concatenate([[0], events])
        censored = np.concatenate([[0], censored])
    n, d = at_risk.astype(np.float64), events.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        # No one left at risk (possible only with noisy counts): the curve stays where it is.
        step = np.where(n > 0, np.log(n - d) - np.log(n), 0.0)
        survival = np.exp(np.cumsum(step))
        greenwood = d / (n * (n - d))
        # lifelines counts a time where everyone at risk dies as adding nothing.
        greenwood[~np.isfinite(greenwood)] = 0.0
        variance = np.cumsum(greenwood)
        z = NormalDist().inv_cdf(1.0 - alpha / 2.0)
        v = np.log(survival)
        lower = np.exp(-np.exp(np.log(-v) - z * np.sqrt(variance) / v))
        upper = np.exp(-np.exp(np.log(-v) + z * np.sqrt(variance) / v))
    # Where S(t) = 1 the band is undefined; lifelines reports it as 1.
    lower, upper = np.nan_to_num(lower, nan=1.0), np.nan_to_num(upper, nan=1.0)
    return KaplanMeierCurve(
        group=group,
        n=table.n,
        total_events=int(events.sum()),
        median=first_time_at_or_below(time, survival, 0.5),
        median_ci_lower=first_time_at_or_below(time, lower, 0.5),
        median_ci_upper=first_time_at_or_below(time, upper, 0.5),
        time=time.tolist(),
        at_risk=at_risk.tolist(),
        events=events.tolist(),
        censored=censored.tolist(),
        survival=survival.tolist(),
        ci_lower=lower.tolist(),
        ci_upper=upper.tolist(),
    )


def first_time_at_or_below(time: FloatArray, curve: FloatArray, q: float) -> float | None:
    """lifelines' ``qth_survival_time``: the first time the curve is <= q (None: never)."""
    below = np.flatnonzero(curve <= q)
    return float(time[below[0]]) if below.size else None


def kaplan_meier_serve(grid: Grid, params: KaplanMeierParams) -> KaplanMeierResult:
    pooled = pooled_event_tables(grid, params, "kaplan_meier")
    return KaplanMeierResult(
        dataset=params.dataset,
        duration=params.duration,
        event=params.event,
        by=params.by,
        time_grid=params.time_grid,
        grid=params.grid,
        time_points=list(params.time_points) if params.time_points is not None else None,
        exact_times=params.exact_times,
        alpha=params.alpha,
        curves=[
            kaplan_meier_curve(group, table, params.alpha)
            for group, table in zip(pooled.groups, pooled.tables, strict=True)
        ],
        nodes=pooled.nodes,
        rows_dropped=pooled.rows_dropped,
        rows_outside_categories=pooled.rows_outside_categories,
        privacy=pooled.privacy,
    )


# ---- terminal ------------------------------------------------------------


def kaplan_meier_table(result: KaplanMeierResult) -> Group:
    """Median survival per group, then each group's survival table, then the grid."""
    level = f"{1 - result.alpha:.0%}"
    medians = Table(title=f"Kaplan-Meier {result.dataset}: median survival", title_justify="left")
    for column in (result.by or "group", "n", "events", "median", f"{level} CI"):
        medians.add_column(escape(column), justify="left" if column == result.by else "right")
    tables: list[Table] = [medians]
    for curve in result.curves:
        ci = f"{number(curve.median_ci_lower)} - {number(curve.median_ci_upper)}"
        medians.add_row(
            escape(curve.group), str(curve.n), str(curve.total_events), number(curve.median), ci
        )
        title = f"{result.by} = {curve.group}" if result.by else "all rows"
        table = Table(title=escape(title), title_justify="left")
        columns = ("time", "at risk", "events", "censored", "S(t)", "lower", "upper")
        for column in columns:
            table.add_column(column, justify="right")
        for row in zip(
            curve.time,
            curve.at_risk,
            curve.events,
            curve.censored,
            curve.survival,
            curve.ci_lower,
            curve.ci_upper,
            strict=True,
        ):
            table.add_row(*(number(v) for v in row))
        tables.append(table)
    dropped = sum(result.rows_dropped.values())
    detail = f"time grid: {result.time_grid}; {dropped} rows dropped for a missing value"
    if result.rows_outside_categories:
        detail += f", {result.rows_outside_categories} outside the agreed categories"
    return Group(*tables, footer(detail, result.nodes))


TASK: TaskType[KaplanMeierParams, KaplanMeierResult] = TaskType(
    name="kaplan_meier",
    params=KaplanMeierParams,
    result=KaplanMeierResult,
    serve=kaplan_meier_serve,
    node_handlers={"kaplan_meier": event_table_node},
    releases=(EventTableRelease, NoisyEventTableRelease),
    summary="Kaplan-Meier survival curves with confidence bands, overall or by group",
    arguments=("duration", "event"),
    table=kaplan_meier_table,
)

__all__ = ["TASK", "KaplanMeierCurve", "KaplanMeierParams", "KaplanMeierResult"]
