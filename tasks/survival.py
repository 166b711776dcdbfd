"""What the survival tasks share: the agreed time grid and per-node event tables.

Event and censoring times are a patient's own dates in disguise, so a node
never releases them unless its policy says so. Every survival request agrees
a time grid instead, and each node moves its durations onto it before
counting anything:

* ``grid=w``: a duration ``d`` becomes ``ceil(d / w) * w``, the end of its
  ``w``-wide cell (``grid=30`` on days: monthly);
* ``time_points=[t1, ..., tk]``: ``d`` becomes the first point ``>= d``;
  follow-up ends at ``tk``, so a later event or censoring counts as censored
  at ``tk``;
* ``exact_times=True``: durations as they are, only at nodes whose policy has
  ``exact_event_times = true``; any other node refuses.

Results are therefore exactly lifelines' on the pooled rows with their
durations replaced by the grid values -- a statement the tests check. A
node also refuses a grid finer than its policy's ``min_grid_width``, which
would otherwise hand exact times back (a 1-day grid on durations in days).

Missing values: complete cases on every column a task uses; each node reports
how many rows it dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd
from flwr.serverapp import Grid
from pydantic import Field, model_validator

from oncofed.kernel.errors import Hole, NodeRefusal, Param, QueryError
from oncofed.privacy.disclosure import check_cells
from oncofed.privacy.dp import DPRequest, release_for
from oncofed.privacy.release import (
    AgreedIndices,
    AgreedValues,
    Count,
    Counts,
    EventTimes,
    Release,
)
from oncofed.tasks.base import (
    ColumnRole,
    DPReport,
    LocalDataset,
    TaskParams,
    dp_report,
    released,
    selected_rows,
)
from oncofed.tasks.broadcast import broadcast
from oncofed.tasks.encoding import agreed_categories, category_labels, no_row_in_categories
from oncofed.tasks.messaging import wait_for_nodes

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]
ALL = "(all)"
MAX_TIME_POINTS = 10_000


class SurvivalParams(TaskParams):
    duration: str = Field(min_length=1, description="Numeric column: time to event or censoring.")
    event: str = Field(min_length=1, description="0/1 (or boolean) column: 1 = event observed.")
    grid: float | None = Field(
        default=None, gt=0, description="Grid width: durations are rounded up to multiples."
    )
    time_points: tuple[float, ...] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_TIME_POINTS,
        description="Agreed time points: durations move to the first point at or after them.",
    )
    exact_times: bool = Field(
        default=False, description="Exact durations; only nodes whose policy allows it answer."
    )

    @model_validator(mode="after")
    def _one_time_grid(self) -> SurvivalParams:
        chosen = [self.grid is not None, self.time_points is not None, self.exact_times]
        if sum(chosen) != 1:
            raise ValueError(
                f"agree exactly one time grid: {Param('grid', Hole('width'))} (e.g. "
                f"{Param('grid', 30)} for months on durations in days), "
                f"{Param('time_points', Hole.items())}, or {Param('exact_times', True)} where "
                "every node's policy allows exact event times"
            )
        if self.time_points is not None:
            points = np.asarray(self.time_points)
            if not (np.all(np.isfinite(points)) and points[0] >= 0 and np.all(np.diff(points) > 0)):
                raise ValueError("time_points must be finite, >= 0 and strictly increasing")
        return self

    def required_columns(self) -> dict[str, ColumnRole]:
        roles = super().required_columns()
        roles[self.duration] = "numeric"
        roles[self.event] = "numeric"
        return roles

    @property
    def time_grid(self) -> str:
        """The agreed grid in words, stated in every result."""
        if self.grid is not None:
            return f"durations rounded up to multiples of {self.grid:g}"
        if self.time_points is not None:
            shown = ", ".join(f"{t:g}" for t in self.time_points[:8])
            more = ", ..." if len(self.time_points) > 8 else ""
            return (
                f"durations moved to the next of the time points {shown}{more}; "
                f"follow-up ends at {self.time_points[-1]:g}"
            )
        return "exact event and censoring times (allowed by every node's policy)"

    def grid_width(self) -> float | None:
        """The narrowest cell of the grid (None for exact times)."""
        if self.grid is not None:
            return self.grid
        if self.time_points is not None:
            return float(np.min(np.diff(np.concatenate([[0.0], self.time_points]))))
        return None


class GroupedSurvivalParams(SurvivalParams):
    by: str | None = Field(default=None, description="Column whose agreed categories are groups.")
    categories: tuple[str, ...] | None = Field(
        default=None,
        description="Agreed group labels; defaults to the categories the schema declares.",
    )

    @model_validator(mode="after")
    def _categories_need_by(self) -> GroupedSurvivalParams:
        if self.categories is not None and self.by is None:
            raise ValueError("categories only make sense with a grouping column")
        if self.categories is not None and len(set(self.categories)) != len(self.categories):
            raise ValueError("categories must not repeat")
        return self

    def required_columns(self) -> dict[str, ColumnRole]:
        roles = super().required_columns()
        if self.by is not None:
            roles[self.by] = "group"
        return roles

    def declared_levels(self) -> dict[str, tuple[str, ...]]:
        if self.by is None or self.categories is None:
            return {}
        return {self.by: self.categories}


# ---- node side ----------------------------------------------------------


@dataclass(frozen=True)
class SurvivalRows:
    """A node's complete rows, with durations on the agreed grid."""

    frame: pd.DataFrame
    time: FloatArray
    event: BoolArray
    rows_dropped: int


def survival_rows(
    params: SurvivalParams, local: LocalDataset, columns: Sequence[str] = ()
) -> SurvivalRows:
    """Rows kept by ``where`` and complete in every column used, on the agreed grid.

    Refuses, before reading a row, a request for exact times that the node's
    policy forbids, or a grid finer than the policy allows.
    """
    node = local.node_name
    check_time_grid(params, local)
    frame = selected_rows(params, local)
    used = list(dict.fromkeys([params.duration, params.event, *columns]))
    complete = frame[used].notna().all(axis=1).to_numpy(dtype=bool)
    kept = frame.loc[complete]
    duration = kept[params.duration].to_numpy(dtype=float, na_value=np.nan)
    event = kept[params.event].to_numpy(dtype=float, na_value=np.nan)
    if params.dp is not None:
        # Under DP an invalid value leaves its row out like a missing one: a refusal
        # would tell, for free, whether any selected row holds one.
        valid = np.isfinite(duration) & (duration >= 0) & ((event == 0) | (event == 1))
        complete[np.flatnonzero(complete)[~valid]] = False
        kept, duration, event = kept.loc[valid], duration[valid], event[valid]
    if not np.all(np.isfinite(duration) & (duration >= 0)):
        raise QueryError(
            f"duration column {params.duration!r} has negative or infinite values",
            rule="survival.duration_values",
            node=node,
            fix="fix the data or filter the rows, e.g. "
            f"{Param('where', f'{params.duration} >= 0')}",
            column=params.duration,
        )
    if not np.all((event == 0) | (event == 1)):
        raise QueryError(
            f"event column {params.event!r} has values other than 0 and 1",
            rule="survival.event_values",
            node=node,
            fix="use a 0/1 or boolean column where 1 means the event (e.g. death) was observed",
            column=params.event,
        )
    time, observed = on_grid(params, duration, event == 1)
    return SurvivalRows(kept, time, observed, int((~complete).sum()))


def check_time_grid(params: SurvivalParams, local: LocalDataset) -> None:
    policy, node = local.policy, local.node_name
    if params.exact_times and not policy.exact_event_times:
        raise NodeRefusal(
            "this node's policy does not release exact event times",
            rule="privacy.exact_event_times",
            node=node,
            fix=f"agree a time grid instead (e.g. {Param('grid', 30)} for months on days), or "
            "ask the node's operator to set exact_event_times = true in its [policy]",
        )
    width = params.grid_width()
    if width is not None and width < policy.min_grid_width:
        raise NodeRefusal(
            f"the time grid has a cell {width:g} wide; this node's policy needs at least "
            f"{policy.min_grid_width:g}, as finer cells come close to exact event times",
            rule="privacy.min_grid_width",
            node=node,
            fix=f"use {Param('grid', policy.min_grid_width)} or wider, or "
            f"{Param('time_points')} at least {policy.min_grid_width:g} apart",
        )


def on_grid(
    params: SurvivalParams, duration: FloatArray, event: BoolArray
) -> tuple[FloatArray, BoolArray]:
    """Durations and event flags moved onto the agreed grid (see the module docstring)."""
    if params.grid is not None:
        return np.ceil(duration / params.grid) * params.grid, event
    if params.time_points is not None:
        points = np.asarray(params.time_points, dtype=float)
        index = np.searchsorted(points, duration, side="left")
        beyond = index == points.size
        time = points[np.minimum(index, points.size - 1)]
        return time, event & ~beyond
    return duration, event


def category_codes(
    column: str,
    requested: Sequence[str] | None,
    local: LocalDataset,
    frame: pd.DataFrame,
    *,
    option: str,
    rule: str,
    per_column: bool = False,
) -> tuple[tuple[str, ...], IntArray]:
    """A column's agreed categories and each row's position in them (-1: outside)."""
    levels = agreed_categories(
        column,
        requested,
        local.schema,
        local.node_name,
        option=option,
        rule=rule,
        per_column=per_column,
    )
    labels = category_labels(frame[column], local.schema.columns[column])
    position = {label: i for i, label in enumerate(levels)}
    codes: IntArray = np.asarray(labels.map(position).fillna(-1), dtype=np.int64)
    return levels, codes


def group_index(
    params: GroupedSurvivalParams, local: LocalDataset, frame: pd.DataFrame
) -> tuple[tuple[str, ...], IntArray]:
    """The agreed groups and each row's group (-1 outside the agreed categories)."""
    if params.by is None:
        return (ALL,), np.zeros(len(frame), dtype=np.int64)
    return category_codes(
        params.by,
        params.categories,
        local,
        frame,
        option="categories",
        rule="survival.categories_required",
    )


class EventTableRelease(Release):
    """An exact reply: events and censorings per (agreed group, grid time) cell where any row ends.

    Cell ``i`` is group ``groups[group[i]]`` at time ``time[i]``, a time on the
    agreed grid (under ``exact_times``, which the node's policy must allow, a
    duration as it is). Rows with a missing value and rows outside the agreed
    categories are counted, not placed.
    """

    groups: tuple[str, ...]
    group: AgreedIndices
    time: EventTimes
    events: Counts
    censored: Counts
    rows_dropped: Count
    rows_outside_categories: Count


class NoisyEventTableRelease(Release):
    """A DP reply (Kaplan-Meier and log-rank with ``dp=``): noisy counts in every agreed cell.

    Every agreed group at every agreed time point has a cell, occupied or not
    (``group`` and ``time`` list them all, groups outer), so the cells say
    nothing of the data; events, censorings, rows dropped and rows outside the
    agreed categories carry discrete Gaussian noise (unbiased, so a count may be negative).
    """

    groups: tuple[str, ...]
    group: AgreedIndices
    time: AgreedValues
    events: Counts
    censored: Counts
    rows_dropped: Count
    rows_outside_categories: Count


def event_table_node(
    params: GroupedSurvivalParams, local: LocalDataset
) -> EventTableRelease | NoisyEventTableRelease:
    """Per agreed group and grid time: events and censorings (counts only).

    The number at risk is not released separately: it is each group's total
    minus the rows removed at earlier times, which the server sums over nodes.
    Kaplan-Meier and the log-rank test both run this handler.
    """
    if params.dp is not None:
        return noisy_event_table_node(params, local, params.dp)
    rows = survival_rows(params, local, [params.by] if params.by else [])
    groups, index = group_index(params, local, rows.frame)
    inside = index >= 0
    # A group of a few patients is their own survival curve: a table's cell rule holds.
    # So is the rest outside the categories (a list leaving out one small level).
    check_cells(
        np.append(np.bincount(index[inside], minlength=len(groups)), (~inside).sum()),
        local.policy,
        local.node_name,
        what="groups (or the rows outside the categories)",
        fix="merge rare categories, list every category, leave this node out, or ask with "
        f"{Param('dp', {'epsilon': 0.5})}",
    )
    keys = np.stack([index[inside].astype(float), rows.time[inside]], axis=1)
    cells, inverse = np.unique(keys, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    events = np.bincount(inverse, weights=rows.event[inside], minlength=len(cells))
    censored = np.bincount(inverse, minlength=len(cells)) - events
    return EventTableRelease(
        groups=groups,
        group=cells[:, 0].astype(np.int64),
        time=cells[:, 1],
        events=np.asarray(events, dtype=np.int64),
        censored=np.asarray(censored, dtype=np.int64),
        rows_dropped=rows.rows_dropped,
        rows_outside_categories=int((~inside).sum()),
    )


def noisy_event_table_node(
    params: GroupedSurvivalParams, local: LocalDataset, request: DPRequest
) -> NoisyEventTableRelease:
    """The event table with discrete Gaussian noise, at every agreed time point.

    A DP release cannot list only the times where something happened (that
    list is itself data), so it needs explicit ``time_points``: every group
    and point gets an event and a censoring count. Each row is counted once
    -- in one cell, or as dropped, or outside the groups -- so the whole
    vector has sensitivity one. Counts go out as drawn, negative ones too:
    setting each node's negative cells to zero would add the same positive
    bias at every node and every cell (about 0.4 noise sd each, far more than
    the counts themselves on a fine grid); the server clips the pooled sums.
    """
    if params.time_points is None:
        raise QueryError(
            "a DP survival release needs explicit time_points: the grid's occupied "
            "times would themselves reveal data",
            rule="privacy.time_points_required",
            node=local.node_name,
            fix=f"pass {Param('time_points', [30, 60, Hole('...')])} covering the follow-up",
        )
    rows = survival_rows(params, local, [params.by] if params.by else [])
    groups, index = group_index(params, local, rows.frame)
    points = np.asarray(params.time_points, dtype=np.float64)
    inside = index >= 0
    cell = index[inside] * points.size + np.searchsorted(points, rows.time[inside])
    size = len(groups) * points.size
    events = np.bincount(cell, weights=rows.event[inside], minlength=size).astype(np.int64)
    censored = np.bincount(cell, minlength=size).astype(np.int64) - events
    release = release_for(request)
    noisy = release.counts(
        "count",
        [*events, *censored, rows.rows_dropped, int((~inside).sum())],
        release.budget,
    )
    return NoisyEventTableRelease(
        groups=groups,
        group=np.repeat(np.arange(len(groups)), points.size),
        time=np.tile(points, len(groups)),
        events=noisy[:size],
        censored=noisy[size : 2 * size],
        rows_dropped=int(noisy[-2]),
        rows_outside_categories=int(noisy[-1]),
        privacy=dict(release.record()),
    )


# ---- server side --------------------------------------------------------


@dataclass(frozen=True)
class EventTable:
    """One group's pooled counts at each grid time where anything happened.

    ``total``: the group's size where it is not the sum of the counts shown (noisy
    counts, clipped for the estimators, would overstate it).
    """

    time: FloatArray
    at_risk: IntArray
    events: IntArray
    censored: IntArray
    total: int | None = None

    @property
    def n(self) -> int:
        if self.total is not None:
            return self.total
        return int(self.events.sum() + self.censored.sum())

    def at_risk_on(self, times: FloatArray) -> IntArray:
        """Number still at risk at each of ``times`` (rows removed strictly before)."""
        after_last = self.at_risk[-1] - self.events[-1] - self.censored[-1] if self.time.size else 0
        at_risk = np.concatenate([self.at_risk, [max(int(after_last), 0)]])
        return at_risk[np.searchsorted(self.time, times, side="left")].astype(np.int64)

    def events_on(self, times: FloatArray) -> IntArray:
        """Events at each of ``times`` (0 where this group has none)."""
        position = np.searchsorted(self.time, times, side="left")
        found = position < self.time.size
        found[found] = self.time[position[found]] == times[found]
        out = np.zeros(times.size, dtype=np.int64)
        out[found] = self.events[position[found]]
        return out


@dataclass(frozen=True)
class PooledEvents:
    groups: tuple[str, ...]
    tables: list[EventTable]
    nodes: list[str]
    rows_dropped: dict[str, int]
    rows_outside_categories: int
    privacy: DPReport | None = None


def event_table(times: FloatArray, events: IntArray, censored: IntArray) -> EventTable:
    """A group's table from its pooled counts, exact or noisy.

    Noisy counts are clipped only here, once pooled (post-processing), and only
    where the estimators need it: the group's size and the numbers at risk come
    from the raw sums. Clipping each node's cells at zero made n about 4 times
    too large on an 8-point grid of the lung data.
    """
    total = max(int(events.sum() + censored.sum()), 0)
    at_risk = np.maximum(total - np.concatenate([[0], np.cumsum(events + censored)[:-1]]), 0)
    return EventTable(times, at_risk, np.clip(events, 0, at_risk), np.maximum(censored, 0), total)


def pooled_event_tables(grid: Grid, params: GroupedSurvivalParams, action: str) -> PooledEvents:
    """Broadcast the event-table request and add the nodes' counts per group and time."""
    nodes = wait_for_nodes(grid, params)
    replies = broadcast(grid, action, params, nodes)
    parts: Sequence[tuple[str, EventTableRelease | NoisyEventTableRelease]] = (
        released(replies, NoisyEventTableRelease)
        if params.dp is not None
        else released(replies, EventTableRelease)
    )
    if not parts:
        raise AssertionError("broadcast returns at least one reply")
    groups = parts[0][1].groups
    for node, part in parts:
        if part.groups != groups:
            raise QueryError(
                f"nodes disagree on the categories of {params.by!r}: "
                f"{list(groups)} versus {list(part.groups)}",
                rule="survival.categories_disagree",
                node=node,
                fix=f"pass {Param('categories', Hole.items())} explicitly so every node "
                "groups the same way",
            )
    names = [node for node, _ in parts]
    dropped = {node: max(part.rows_dropped, 0) for node, part in parts}
    outside = max(sum(part.rows_outside_categories for _, part in parts), 0)
    group = np.concatenate([part.group for _, part in parts])
    time = np.concatenate([part.time for _, part in parts])
    events = np.concatenate([part.events for _, part in parts])
    censored = np.concatenate([part.censored for _, part in parts])
    tables = []
    for g in range(len(groups)):
        mine = group == g
        times, inverse = np.unique(time[mine], return_inverse=True)
        d = np.bincount(inverse, weights=events[mine], minlength=times.size).astype(np.int64)
        c = np.bincount(inverse, weights=censored[mine], minlength=times.size).astype(np.int64)
        tables.append(event_table(times, d, c))
    # Under DP a group's size is a noisy sum that may come out at zero or below: that is
    # the noise speaking, answered as such (n 0, a flat curve), not a refusal.
    empty = [
        label
        for label, table in zip(groups, tables, strict=True)
        if table.n == 0 and params.dp is None
    ]
    if outside and len(empty) == len(groups) and params.by is not None:
        raise no_row_in_categories(repr(params.by), outside, options=("categories",))
    if empty:
        raise QueryError(
            f"no rows at any node in group(s) {', '.join(map(repr, empty))} of {params.by!r}",
            rule="survival.empty_group",
            node=", ".join(names),
            fix=f"remove the empty categories from {Param('categories')} or widen the "
            f"{Param('where')} filter",
            column=params.by,
        )
    return PooledEvents(groups, tables, names, dropped, outside, dp_report(replies))


__all__ = [
    "ALL",
    "EventTable",
    "EventTableRelease",
    "GroupedSurvivalParams",
    "NoisyEventTableRelease",
    "PooledEvents",
    "SurvivalParams",
    "SurvivalRows",
    "category_codes",
    "check_time_grid",
    "event_table",
    "event_table_node",
    "group_index",
    "noisy_event_table_node",
    "on_grid",
    "pooled_event_tables",
    "survival_rows",
]
