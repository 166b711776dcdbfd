"""Rich renderings of results for the terminal."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
from rich.table import Table

from oncofed.tasks.describe import ALL, DescribeResult

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


__all__ = ["comparison_table", "describe_table", "max_relative_difference", "pooled_describe"]
