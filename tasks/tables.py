"""What the results' terminal tables share: how a number is written, and who contributed."""

from __future__ import annotations

import math

from rich.text import Text


def missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def number(value: object) -> str:
    """Six significant digits for floats, "-" for a missing value, anything else as is."""
    if missing(value):
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def footer(detail: str, nodes: list[str]) -> Text:
    """A dim line under a table: what was left out, and the nodes that answered."""
    return Text(f"{detail}; {len(nodes)} nodes: {', '.join(nodes)}", style="dim")


__all__ = ["footer", "missing", "number"]
