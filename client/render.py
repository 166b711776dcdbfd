"""Rich renderings of results for the terminal, and the matplotlib entry for plots."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import pandas as pd
from rich.console import Group
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from oncofed.tasks.describe import ALL, DescribeResult

if TYPE_CHECKING:
    from oncofed.tasks.correlation import CorrelationResult
    from oncofed.tasks.crosstab import CrosstabResult
    from oncofed.tasks.histogram import HistogramResult
    from oncofed.tasks.kaplan_meier import KaplanMeierResult
    from oncofed.tasks.logrank import LogrankResult
    from oncofed.tasks.quantiles import QuantilesResult

STATISTICS = ("count", "missing", "mean", "variance", "std")


def describe_table(result: DescribeResult, title: str = "") -> Table:
    table = Table(title=title or f"describe {result.dataset}", title_justify="left")
    if result.by:
        table.add_column(result.by)
    table.add_column("column")
    for stat in STATISTICS:
        table.add_column(stat, justify="right")
    for row in result.rows:
        cells = [] if not result.by else [row.group]
        cells.append(row.column)
        cells.extend(_fmt(getattr(row, stat)) for stat in STATISTICS)
        table.add_row(*cells)
    table.caption = f"{len(result.nodes)} nodes: {', '.join(result.nodes)}"
    return table


def correlation_tables(result: CorrelationResult) -> Group:
    """Covariance and correlation matrices, then who contributed."""
    tables = []
    for name, frame in (("covariance", result.covariance), ("correlation", result.correlation)):
        table = Table(title=f"{name} {result.dataset}", title_justify="left")
        table.add_column("")
        for column in frame.columns:
            table.add_column(escape(str(column)), justify="right")
        for label, row in frame.iterrows():
            table.add_row(escape(str(label)), *(_fmt(float(v)) for v in row))
        tables.append(table)
    return Group(
        *tables,
        _footer(
            f"{result.n} complete rows; {result.rows_dropped} dropped for a missing value",
            result.nodes,
        ),
    )


def crosstab_table(result: CrosstabResult) -> Group:
    """Counts with margins, then the chi-square test and the rows left out."""
    frame = result.to_frame(margins=True)
    table = Table(title=f"crosstab {result.dataset}", title_justify="left")
    # Category labels are data: escaped so a label like "[x]" is not read as markup.
    table.add_column(escape(f"{result.row} \\ {result.col}"))
    for column in frame.columns:
        table.add_column(escape(str(column)), justify="right")
    for label, row in frame.iterrows():
        table.add_row(escape(str(label)), *(str(int(v)) for v in row))
    yates = " (Yates-corrected)" if result.correction else ""
    test = f"chi-square {result.statistic:.6g}, dof {result.dof}, p = {result.pvalue:.4g}{yates}"
    left_out = (
        f"{result.rows_missing} rows missing, "
        f"{result.rows_outside_categories} outside the agreed categories"
    )
    return Group(table, test, _footer(left_out, result.nodes))


def histogram_table(result: HistogramResult) -> Group:
    table = Table(title=f"histogram {result.dataset}: {result.column}", title_justify="left")
    for column in ("left", "right", "count"):
        table.add_column(column, justify="right")
    table.add_column("")
    peak = max(result.counts) or 1
    for left, right, count in zip(result.edges, result.edges[1:], result.counts, strict=False):
        table.add_row(_fmt(left), _fmt(right), str(count), "#" * round(30 * count / peak))
    outside = f"{result.below} below, {result.above} above the edges, {result.missing} missing"
    return Group(table, _footer(outside, result.nodes))


def quantiles_table(result: QuantilesResult) -> Group:
    table = Table(
        title=f"quantiles {result.dataset}: {result.column} ({result.method})",
        title_justify="left",
    )
    for column in ("q", "value", "± bound"):
        table.add_column(column, justify="right")
    none: list[float | None] = [None] * len(result.q)
    bounds: list[float | None] = list(result.bounds) if result.bounds is not None else none
    for q, value, bound in zip(result.q, result.values, bounds, strict=True):
        table.add_row(f"{q:g}", _fmt(value), "noisy (DP)" if bound is None else f"{bound:.2g}")
    search = (
        f"n = {result.n}, {result.missing} missing; grid step {result.grid_step:.3g} "
        f"over [{result.lower:g}, {result.upper:g}], {result.rounds} rounds"
    )
    return Group(table, _footer(search, result.nodes))


def kaplan_meier_table(result: KaplanMeierResult) -> Group:
    """Median survival per group, then each group's survival table, then the grid."""
    level = f"{1 - result.alpha:.0%}"
    medians = Table(title=f"Kaplan-Meier {result.dataset}: median survival", title_justify="left")
    for column in (result.by or "group", "n", "events", "median", f"{level} CI"):
        medians.add_column(escape(column), justify="left" if column == result.by else "right")
    tables: list[Table] = [medians]
    for curve in result.curves:
        ci = f"{_fmt(curve.median_ci_lower)} - {_fmt(curve.median_ci_upper)}"
        medians.add_row(
            escape(curve.group), str(curve.n), str(curve.total_events), _fmt(curve.median), ci
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
            table.add_row(*(_fmt(v) for v in row))
        tables.append(table)
    dropped = sum(result.rows_dropped.values())
    detail = f"time grid: {result.time_grid}; {dropped} rows dropped for a missing value"
    if result.rows_outside_categories:
        detail += f", {result.rows_outside_categories} outside the agreed categories"
    return Group(*tables, _footer(detail, result.nodes))


def logrank_table(result: LogrankResult) -> Group:
    """Observed and expected events per group, then the test."""
    table = Table(title=f"log-rank test {result.dataset}", title_justify="left")
    frame = result.to_frame()
    table.add_column(escape(result.group))
    for column in frame.columns:
        table.add_column(column, justify="right")
    for label, row in frame.iterrows():
        table.add_row(escape(str(label)), *(_fmt(v) for v in row.tolist()))
    test = f"chi-square {result.statistic:.6g} on {result.df} df, p = {result.p_value:.4g}"
    return Group(table, test, _footer(f"time grid: {result.time_grid}", result.nodes))


def _footer(detail: str, nodes: list[str]) -> Text:
    return Text(f"{detail}; {len(nodes)} nodes: {', '.join(nodes)}", style="dim")


def pooled_describe(
    frame: pd.DataFrame,
    columns: list[str],
    by: str | None = None,
    categories: list[str] | None = None,
) -> pd.DataFrame:
    """The same statistics computed by pandas on pooled data (the oracle)."""
    if by is None:
        groups = [(ALL, frame)]
    else:
        labels = frame[by].map(_label, na_action="ignore")
        wanted = categories or sorted(labels.dropna().unique())
        groups = [(label, frame[labels == label]) for label in wanted]
    rows = []
    for label, part in groups:
        for column in columns:
            values = pd.to_numeric(part[column], errors="coerce")
            rows.append(
                {
                    "group": label,
                    "column": column,
                    "count": int(values.count()),
                    "missing": int(values.isna().sum()),
                    "mean": values.mean(),
                    "variance": values.var(ddof=1),
                    "std": values.std(ddof=1),
                }
            )
    return pd.DataFrame(rows).set_index(["group", "column"])


def comparison_table(result: DescribeResult, pooled: pd.DataFrame, title: str) -> Table:
    """Federated next to pooled, per statistic, with the absolute difference."""
    table = Table(title=title, title_justify="left")
    for name in ("group", "column", "statistic"):
        table.add_column(name)
    for name in ("federated", "pooled", "|difference|"):
        table.add_column(name, justify="right")
    reference = _by_key(pooled)
    for row in result.rows:
        expected = reference[(row.group, row.column)]
        for stat in STATISTICS:
            fed = getattr(row, stat)
            ref = expected[stat]
            diff = "" if fed is None or _missing(ref) else f"{abs(float(fed) - float(ref)):.1e}"
            table.add_row(row.group, row.column, stat, _fmt(fed), _fmt(ref), diff)
    return table


def max_relative_difference(result: DescribeResult, pooled: pd.DataFrame) -> float:
    worst = 0.0
    reference = _by_key(pooled)
    for row in result.rows:
        expected = reference[(row.group, row.column)]
        for stat in STATISTICS:
            fed, ref = getattr(row, stat), expected[stat]
            if fed is None or _missing(ref):
                continue
            scale = max(abs(float(ref)), 1e-300)
            worst = max(worst, abs(float(fed) - float(ref)) / scale)
    return worst


def _by_key(pooled: pd.DataFrame) -> dict[tuple[str, str], dict[str, Any]]:
    records: dict[tuple[str, str], dict[str, Any]] = pooled.to_dict("index")  # type: ignore[assignment]
    return records


def _label(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _fmt(value: object) -> str:
    if _missing(value):
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


__all__ = [
    "comparison_table",
    "correlation_tables",
    "crosstab_table",
    "describe_table",
    "histogram_table",
    "kaplan_meier_table",
    "logrank_table",
    "max_relative_difference",
    "pooled_describe",
    "quantiles_table",
]
