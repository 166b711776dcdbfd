"""A task's typed result as the researcher's result page shows it: tables, a figure, notes.

The first table is always the result's ``to_frame()``, the frame the command
line prints and ``result_csv`` downloads, so the page, the download and
``oncofed query ... --csv`` agree. Notes are read from the fields the
results share (nodes, rows left out, the DP report) rather than written per
task, so a new task's result gets them by naming its fields the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import pandas as pd
from matplotlib.figure import Figure
from pydantic import BaseModel

from oncofed.client.cli_query import frame_csv
from oncofed.client.console.plots import figure_for, figure_png
from oncofed.tasks import get_task
from oncofed.tasks.base import DPReport
from oncofed.tasks.correlation import CorrelationResult
from oncofed.tasks.crosstab import CrosstabResult
from oncofed.tasks.kaplan_meier import KaplanMeierResult
from oncofed.tasks.logrank import LogrankResult
from oncofed.tasks.training.model import TrainedModel


@runtime_checkable
class Framed(Protocol):
    """A result with a table: every installed task's result is one."""

    def to_frame(self) -> pd.DataFrame: ...


@dataclass(frozen=True)
class ResultView:
    """What a result page shows, in order."""

    tables: list[tuple[str, pd.DataFrame]]
    """(caption, frame); the first is the result's ``to_frame()``."""
    figure: Figure | None
    """None when the task has no natural plot."""
    figure_alt: str
    """The figure in words with its key numbers, for ``<img alt>``; "" without a figure."""
    notes: list[str]
    """Short plain-text lines under the result: tests, rows left out, nodes, privacy."""


RowCount = tuple[str, tuple[str, ...], bool]

ROW_COUNTS: tuple[RowCount, ...] = (
    ("rows used", ("rows_used",), True),
    (
        "rows left out for a missing value",
        ("rows_dropped_by_node", "rows_dropped", "rows_missing_by_node", "rows_missing"),
        True,
    ),
    ("rows without a group value", ("rows_group_missing",), False),
    (
        "rows outside the agreed categories",
        ("rows_outside_by_node", "rows_outside_categories"),
        False,
    ),
    ("rows outside the agreed strata", ("rows_outside_strata",), False),
)
"""(label, result fields holding the count, whether a zero is worth a line).

Fields are tried in order, per node first; a field that is None or empty
was not released (under DP) and is passed over. A missing value always gets
its line, since "none" is worth knowing; a zero in the rarer counts is noise.
"""


def result_view(task_name: str, result: BaseModel) -> ResultView:
    """Tables, figure and notes for ``result``, a result of the installed task ``task_name``."""
    summary = get_task(task_name).summary
    dataset = dict(result).get("dataset")
    caption = summary[:1].upper() + summary[1:] + (f": {dataset}" if dataset else "")
    tables = [(caption, _frame(result)), *_more_tables(result)]
    drawn = figure_for(result)
    figure, alt = drawn if drawn is not None else (None, "")
    return ResultView(tables=tables, figure=figure, figure_alt=alt, notes=result_notes(result))


def result_csv(result: BaseModel) -> str:
    """The result's ``to_frame()`` as CSV, exactly as ``oncofed query ... --csv`` prints it."""
    # Annotated: mypy run on this file alone cannot follow the editable install's package-dir
    # mapping, and would see the imported function as returning Any.
    csv: str = frame_csv(_frame(result))
    return csv


def result_notes(result: BaseModel) -> list[str]:
    """Lines a researcher reads under the table, from the fields the result has."""
    fields = dict(result)
    notes = _test_lines(result)
    if fields.get("converged") is False:
        notes.append(
            f"the fit did not converge in {fields['iterations']} iterations: the estimates and "
            "their intervals may not be final"
        )
    for label, names, zero in ROW_COUNTS:
        line = _row_count(label, [fields.get(name) for name in names], zero)
        if line is not None:
            notes.append(line)
    below, above = fields.get("below"), fields.get("above")
    if isinstance(below, int) and isinstance(above, int) and (below or above):
        notes.append(f"values outside the agreed range: {below} below, {above} above")
    if isinstance(fields.get("time_grid"), str):
        notes.append(f"time grid: {fields['time_grid']}")
    nodes = fields.get("nodes")
    if isinstance(nodes, list):
        notes.append(f"nodes that answered ({len(nodes)}): {', '.join(map(str, nodes))}")
    privacy = _privacy_note(result)
    if privacy is not None:
        notes.append(privacy)
    return notes


def _frame(result: BaseModel) -> pd.DataFrame:
    if not isinstance(result, Framed):
        raise TypeError(f"{type(result).__name__} has no to_frame(): not a task's result")
    return result.to_frame()


def _more_tables(result: BaseModel) -> list[tuple[str, pd.DataFrame]]:
    """Tables that read better than the long frame: medians, expected counts, the matrix."""
    if isinstance(result, KaplanMeierResult):
        return [("Median survival", result.medians())]
    if isinstance(result, CrosstabResult) and result.expected is not None:
        return [("Expected counts under independence", result.expected_frame())]
    if isinstance(result, CorrelationResult):
        return [("Correlation matrix", result.correlation)]
    return []


def _test_lines(result: BaseModel) -> list[str]:
    """The test a result is for, where its table does not hold it."""
    if isinstance(result, LogrankResult):
        lines = [
            f"log-rank test: chi-square {result.statistic:.4g} on {result.df} df, "
            f"p = {result.p_value:.4g}"
        ]
        if (
            result.noise_adjusted_statistic is not None
            and result.noise_adjusted_p_value is not None
        ):
            lines.append(
                f"allowing for the DP noise: chi-square {result.noise_adjusted_statistic:.4g}, "
                f"p = {result.noise_adjusted_p_value:.4g} (the p to test with: the one above "
                "treats the noisy counts as exact)"
            )
        return lines
    if isinstance(result, CrosstabResult):
        return [result.test_line()]
    return []


def _row_count(label: str, values: list[Any], zero: bool) -> str | None:
    value = next((v for v in values if v is not None and v != {}), None)
    if isinstance(value, dict):
        total = sum(value.values())
        detail = f" ({', '.join(f'{node} {n}' for node, n in value.items())})"
    elif isinstance(value, int):
        total, detail = value, ""
    else:
        return None
    if total == 0 and not zero:
        return None
    return f"{label}: {total}{detail}"


def _privacy_note(result: BaseModel) -> str | None:
    """Mechanism, the loss each node was charged, and delta; None for an exact result."""
    report = dict(result).get("privacy")
    delta: float | None
    if isinstance(report, DPReport):
        mechanism, epsilon, delta = report.mechanism, report.epsilon, report.delta
    elif isinstance(result, TrainedModel) and result.epsilon:
        # A trained model reports its DP-SGD loss in fields of its own, not a DPReport.
        mechanism, epsilon, delta = "DP-SGD", result.epsilon, result.delta
    else:
        return None
    charged = ", ".join(f"{node} {value:g}" for node, value in epsilon.items())
    at = "" if delta is None else f"; delta {delta:g}"
    return f"differential privacy: {mechanism}, epsilon charged per node: {charged}{at}"


__all__ = ["ResultView", "figure_png", "result_csv", "result_notes", "result_view"]
