"""The console's figures: survival curves, histograms and forest plots of regression terms.

Every figure is a ``matplotlib.figure.Figure`` on its own Agg canvas, never
one made through ``pyplot``: pyplot keeps each figure in a process-wide
registry until it is closed, and the console draws from several request
threads and for as long as it runs. The results' own ``plot`` methods draw
on an Axes given to them, so they are used that way.

Each figure comes with a text alternative that states what it shows and its
key numbers, for a reader who cannot see it.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
from pydantic import BaseModel

from oncofed.tasks.coxph import CoxPHResult
from oncofed.tasks.glm import GLMResult
from oncofed.tasks.histogram import HistogramResult
from oncofed.tasks.kaplan_meier import KaplanMeierResult

INTERCEPT = "Intercept"
"""The design column a formula's intercept is named (``tasks.formula``)."""

GLM_ALPHA = 0.05
"""The level of the intervals ``GLMResult.to_frame()`` shows by default, and so the plot's."""

RATIO_NAMES = {"binomial": "odds ratio", "poisson": "rate ratio"}
"""What exp(coef) is for each family with a log-scale link (logit, log)."""


def new_figure(width: float, height: float) -> Figure:
    """A figure that renders with Agg and is known to no process-wide state."""
    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    return figure


def figure_for(result: BaseModel) -> tuple[Figure, str] | None:
    """The figure a result is better looked at than read as, with its text alternative.

    None for the tasks whose table is the clearest way to read them.
    """
    if isinstance(result, KaplanMeierResult):
        return kaplan_meier_figure(result)
    if isinstance(result, HistogramResult):
        return histogram_figure(result)
    if isinstance(result, CoxPHResult):
        return coxph_figure(result)
    if isinstance(result, GLMResult):
        return glm_figure(result)
    return None


def figure_png(figure: Figure) -> bytes:
    """The figure as PNG bytes; the figure stays open for the caller to reuse."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    return buffer.getvalue()


def kaplan_meier_figure(result: KaplanMeierResult) -> tuple[Figure, str]:
    """Survival curves with their confidence bands, and the medians in words."""
    figure = new_figure(7.0, 4.5)
    result.plot(ax=figure.add_subplot(), ci=True)
    level = _level(result.alpha)
    plural = "s" if len(result.curves) > 1 else ""
    if result.by is None:
        groups = "all rows"
    else:
        groups = f"{result.by} = " + ", ".join(c.group for c in result.curves)
    medians = "; ".join(
        f"{c.group if result.by is not None else 'all'}: "
        + (
            "not reached"
            if c.median is None
            else f"{_num(c.median)} ({level} CI {_bound(c.median_ci_lower)}"
            f"\u2013{_bound(c.median_ci_upper)})"
        )
        + f", n = {c.n}, {c.total_events} events"
        for c in result.curves
    )
    alt = (
        f"Kaplan\u2013Meier survival curve{plural} of {result.duration} with {level} "
        f"confidence band{plural} for {groups}; median survival {medians}"
    )
    return figure, alt


def histogram_figure(result: HistogramResult) -> tuple[Figure, str]:
    """The counts over the agreed edges, and every bin's count in words."""
    figure = new_figure(6.4, 4.0)
    result.plot(ax=figure.add_subplot())
    bins = ", ".join(
        f"{_interval(lo, hi, _num)}: {count}"
        for lo, hi, count in zip(result.edges, result.edges[1:], result.counts, strict=False)
    )
    outside = (
        f"; {result.below} below and {result.above} above the edges"
        if result.below or result.above
        else ""
    )
    alt = f"Histogram of {result.column}, n = {result.n}, counts per bin: {bins}{outside}"
    return figure, alt


def coxph_figure(result: CoxPHResult) -> tuple[Figure, str]:
    """Hazard ratios with their intervals on a log axis, against no effect at 1."""
    lower, upper = result.wald_interval(result.alpha)
    return forest_figure(
        list(result.names),
        [math.exp(v) for v in result.coef],
        [math.exp(v) for v in lower],
        [math.exp(v) for v in upper],
        measure="hazard ratio",
        level=_level(result.alpha),
        ratio=True,
        title=f"Cox model, {result.dataset}: {result.formula}",
    )


def glm_figure(result: GLMResult) -> tuple[Figure, str] | None:
    """The terms' effects with their intervals, the intercept left out (None: no other term).

    A logit or log link makes exp(coef) a ratio, read on a log axis against
    1; an identity link's coefficient is read as it is, against 0.
    """
    lower, upper = result.wald_interval(GLM_ALPHA)
    terms = [i for i, name in enumerate(result.names) if name != INTERCEPT]
    if not terms:
        return None
    ratio = RATIO_NAMES.get(result.family)
    scale = math.exp if ratio is not None else float
    return forest_figure(
        [result.names[i] for i in terms],
        [scale(result.coef[i]) for i in terms],
        [scale(lower.iloc[i]) for i in terms],
        [scale(upper.iloc[i]) for i in terms],
        measure=ratio or "coefficient",
        level=_level(GLM_ALPHA),
        ratio=ratio is not None,
        title=f"GLM ({result.family}), {result.dataset}: {result.formula}",
    )


def forest_figure(
    names: Sequence[str],
    estimate: Sequence[float],
    lower: Sequence[float],
    upper: Sequence[float],
    *,
    measure: str,
    level: str,
    ratio: bool,
    title: str,
) -> tuple[Figure, str]:
    """One row per term, top to bottom in the table's order, each with its value written out.

    Ratios are read on a log axis, where an interval is as wide either side
    of 1 as the coefficient's is either side of 0.
    """
    figure = new_figure(7.0, 1.3 + 0.45 * len(names))
    ax = figure.add_subplot()
    rows = list(range(len(names)))
    ax.errorbar(
        estimate,
        rows,
        xerr=[
            [e - lo for e, lo in zip(estimate, lower, strict=True)],
            [hi - e for e, hi in zip(estimate, upper, strict=True)],
        ],
        fmt="o",
        color="C0",
        capsize=3,
    )
    reference = 1.0 if ratio else 0.0
    ax.axvline(reference, color="0.5", linestyle="--", linewidth=1)
    if ratio:
        ax.set_xscale("log")
        # Ratios read as 0.5 and 2, not 5 x 10^-1 and 2 x 10^0.
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_yticks(rows, labels=list(names))
    ax.set_ylim(len(names) - 0.5, -0.5)
    written = [
        f"{_estimate(e)} ({_interval(lo, hi)})"
        for e, lo, hi in zip(estimate, lower, upper, strict=True)
    ]
    # Beside the axes, in axes coordinates across and data coordinates down: one per row.
    for row, text in zip(rows, written, strict=True):
        ax.text(1.02, row, text, transform=ax.get_yaxis_transform(), va="center", fontsize="small")
    ax.set_xlabel(f"{measure} ({level} CI{', log scale' if ratio else ''})")
    ax.set_title(title, fontsize="medium")
    terms = ", ".join(f"{name} {text}" for name, text in zip(names, written, strict=True))
    scale = " on a log scale" if ratio else ""
    alt = (
        f"Forest plot of {measure}s with {level} confidence intervals{scale}, reference line at "
        f"{_num(reference)}: {terms}"
    )
    return figure, alt


def _level(alpha: float) -> str:
    return f"{1 - alpha:.0%}"


def _num(value: float) -> str:
    return f"{value:.3g}"


def _estimate(value: float) -> str:
    # Three significant digits kept to the end (0.800, 1.00), as intervals are usually read.
    return f"{value:#.3g}".rstrip(".")


def _interval(lower: float, upper: float, written: Callable[[float], str] = _estimate) -> str:
    # A dash between negative numbers reads as a minus sign.
    between = " to " if lower < 0 or upper < 0 else "\u2013"
    return f"{written(lower)}{between}{written(upper)}"


def _bound(value: float | None) -> str:
    return "not reached" if value is None else _num(value)


__all__ = [
    "coxph_figure",
    "figure_for",
    "figure_png",
    "forest_figure",
    "glm_figure",
    "histogram_figure",
    "kaplan_meier_figure",
    "new_figure",
]
