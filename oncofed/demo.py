"""``oncofed demo``: a federated network of lung cancer centres on this machine.

The NCCTG lung cancer data (228 patients, ``lifelines.datasets.load_lung``)
carries the institution that treated each patient. The demo merges the 18
institutions into a few centres of similar size, starts a coordinator and one
node per centre as real processes, runs federated queries and prints each
federated statistic next to the pooled one.
"""

from __future__ import annotations

import math
import string
import time
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from oncofed.errors import ConfigError
from oncofed.render import comparison_table, max_relative_difference, pooled_describe
from oncofed.sandbox import Sandbox
from oncofed.session import Session

COLUMNS = ["age", "time", "ph.karno", "meal.cal", "wt.loss"]
GRID_DAYS = 30.0
PLOT_FILE = "oncofed-demo-kaplan-meier.png"


def load_lung() -> pd.DataFrame:
    try:
        from lifelines.datasets import load_lung as lifelines_lung
    except ModuleNotFoundError:
        raise ConfigError(
            "the demo needs the lung cancer data that ships with lifelines",
            rule="demo.extra",
            fix='pip install "oncofed[demo]"',
        ) from None
    frame: pd.DataFrame = lifelines_lung()
    return frame


def lung_centres(n_centres: int = 5) -> pd.DataFrame:
    """The lung data with a ``centre`` column: institutions merged into balanced centres.

    Institutions are assigned largest first to the centre with the fewest
    patients so far; the patient without an institution joins that centre too.
    """
    frame = load_lung()
    inst = frame["inst"].fillna(-1).astype(int)
    sizes = inst.value_counts().sort_values(ascending=False, kind="stable")
    totals = dict.fromkeys(range(n_centres), 0)
    assignment: dict[int, int] = {}
    for institution, size in zip(sizes.index, sizes.to_numpy(), strict=True):
        centre = min(totals, key=lambda c: (totals[c], c))
        assignment[int(institution)] = centre
        totals[centre] += int(size)
    names = [f"centre-{string.ascii_uppercase[i]}" for i in range(n_centres)]
    return frame.assign(centre=[names[assignment[int(i)]] for i in inst])


def run_demo(console: Console, n_centres: int = 5) -> float:
    """Run the demo; returns the largest relative difference from the pooled analysis."""
    started = time.monotonic()
    frame = lung_centres(n_centres)
    console.rule("[bold]oncofed demo: NCCTG lung cancer data in federated cancer centres")
    console.print(
        f"{len(frame)} patients from {frame['inst'].nunique()} institutions, merged into "
        f"{n_centres} centres. Each centre's records stay in its own node process."
    )
    with console.status(f"starting a coordinator and {n_centres} nodes on loopback ..."):
        sandbox = Sandbox.from_frame(frame, split_by="centre", dataset="lung")
        sandbox.start()
    try:
        with sandbox.session(console=console) as session:
            nodes = session.nodes()
            table = Table(title="nodes connected to the coordinator", title_justify="left")
            for column in ("name", "version", "online", "datasets"):
                table.add_column(column)
            for row in nodes.to_dict("records"):
                table.add_row(
                    str(row["name"]),
                    str(row["version"]),
                    str(row["online"]),
                    ", ".join(row["datasets"]),
                )
            console.print(table)

            overall = session.describe(COLUMNS, min_nodes=n_centres)
            pooled = pooled_describe(frame, COLUMNS)
            console.print(comparison_table(overall, pooled, "describe: all patients"))
            worst = max_relative_difference(overall, pooled)

            by_sex = session.describe(
                ["age", "time"], by="sex", categories=["1", "2"], min_nodes=n_centres
            )
            pooled_sex = pooled_describe(frame, ["age", "time"], by="sex", categories=["1", "2"])
            console.print(
                comparison_table(by_sex, pooled_sex, "describe: by sex (1 male, 2 female)")
            )
            worst = max(worst, max_relative_difference(by_sex, pooled_sex))
            survival_worst, survival_count = survival_by_sex(console, session, frame, n_centres)
            worst = max(worst, survival_worst)
    finally:
        with console.status("stopping the network ..."):
            sandbox.stop()
    console.print(
        f"[green]federated = pooled[/]: largest relative difference {worst:.1e} "
        f"over {len(overall.rows) * 5 + len(by_sex.rows) * 5 + survival_count} statistics, "
        f"in {time.monotonic() - started:.1f} s."
    )
    return worst


def survival_by_sex(
    console: Console, session: Session, frame: pd.DataFrame, n_centres: int
) -> tuple[float, int]:
    """Federated Kaplan-Meier by sex on a 30-day grid, next to lifelines on the pooled rows.

    The pooled rows get the same grid (durations rounded up to multiples of 30
    days), so the curves must agree exactly. Saves the plot in the current
    directory; returns the largest relative difference and how many values
    were compared.
    """
    from lifelines import KaplanMeierFitter

    km = session.kaplan_meier(
        "time", "status", by="sex", categories=["1", "2"], grid=GRID_DAYS, min_nodes=n_centres
    )
    coarse = frame.assign(time=np.ceil(frame["time"] / GRID_DAYS) * GRID_DAYS)
    table = Table(
        title="Kaplan-Meier by sex (1 male, 2 female), days rounded up to a 30-day grid",
        title_justify="left",
    )
    for name in ("sex", "n", "events", "median federated", "median pooled", "95% CI federated"):
        table.add_column(name, justify="left" if name == "sex" else "right")
    table.add_column("max |S(t) difference|", justify="right")
    worst, count = 0.0, 0
    for curve in km.curves:
        part = coarse[coarse["sex"] == int(curve.group)]
        fitter = KaplanMeierFitter().fit(part["time"], part["status"])
        expected = fitter.survival_function_.iloc[:, 0]
        if list(expected.index) != curve.time:
            raise AssertionError("federated and pooled curves step at different times")
        difference = np.abs(np.asarray(curve.survival) - expected.to_numpy())
        worst = max(worst, float(np.max(difference / expected.to_numpy().clip(1e-300))))
        count += len(curve.time) + 1
        table.add_row(
            curve.group,
            str(curve.n),
            str(curve.total_events),
            _days(curve.median),
            _days(float(fitter.median_survival_time_)),
            f"{_days(curve.median_ci_lower)} - {_days(curve.median_ci_upper)}",
            f"{float(difference.max()):.1e}",
        )
        median = math.inf if curve.median is None else curve.median
        if median != fitter.median_survival_time_:
            worst = math.inf
    console.print(table)
    path = Path.cwd() / PLOT_FILE
    figure = km.plot()
    figure.savefig(path, dpi=120, bbox_inches="tight")
    console.print(f"Kaplan-Meier curves with 95% bands saved to [bold]{path}[/]")
    return worst, count


def _days(value: float | None) -> str:
    return "not reached" if value is None or math.isinf(value) else f"{value:g}"


__all__ = ["load_lung", "lung_centres", "run_demo", "survival_by_sex"]
