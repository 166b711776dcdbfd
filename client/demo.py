"""``oncofed demo``: a federated network of lung cancer centres on this machine.

The NCCTG lung cancer data (228 patients, ``lifelines.datasets.load_lung``)
carries the institution that treated each patient. The demo merges the 18
institutions into a few centres of similar size, starts a coordinator and one
node per centre as real processes, makes a CA and a data-access body, walks
a researcher's application through to a signed permit, runs federated
queries under it, prints each federated statistic next to the pooled one,
and ends with each node's verified audit trail.

The demo's nodes allow exact answers on ``lung`` and its permit grants them
(both sides' consent, which a real network gives only where a data-access
body has a reason), so the federated statistics must equal the pooled ones;
it then asks the same under differential privacy, as every node answers by
default, and shows the noisy values next to the pooled ones and the noise's
scale.
"""

from __future__ import annotations

import datetime
import math
import os
import string
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from oncofed.client.access import DataAccessClient, draft_permit
from oncofed.client.sandbox import HDAB, Sandbox
from oncofed.client.session import Session
from oncofed.governance.audit import AuditTrail
from oncofed.governance.permits import DataAccessApplication, DatasetRequest, Purpose
from oncofed.kernel.errors import ConfigError
from oncofed.node.runner import AUDIT_FILE
from oncofed.tasks.describe import ALL, STATISTICS, DescribeResult
from oncofed.tasks.tables import missing, number

COLUMNS = ["age", "time", "ph.karno", "meal.cal", "wt.loss"]
GRANTED = (*COLUMNS, "sex", "status")
"""The variables the permit grants: exact answers use the records complete on all of them."""
DP = {"epsilon": 1.0, "delta": 1e-6}
DP_BOUNDS = {"age": (18.0, 100.0), "wt.loss": (-50.0, 80.0)}
"""Public bounds for the DP sums (clinical ranges, never read from the data)."""
GRID_DAYS = 30.0
PLOT_FILE = "oncofed-demo-kaplan-meier.png"


def default_plot_path() -> Path:
    """The temporary folder, not the working directory: a demo run in a checkout
    must not leave a file in it."""
    return Path(tempfile.gettempdir()) / PLOT_FILE


def check_plot_path(path: Path) -> Path:
    """The absolute path the figure will be written to, refused before the network starts
    when it cannot be (rather than after the whole demo has run)."""
    try:
        from matplotlib.backend_bases import FigureCanvasBase
    except ModuleNotFoundError:
        raise ConfigError(
            "the demo plots its survival curves with matplotlib",
            rule="demo.extra",
            fix='pip install "oncofed[demo]"',
        ) from None
    target = path.expanduser().absolute()
    folder = target.parent
    fix = f"pass --plot PATH in a folder you can write, e.g. --plot {Path.home() / PLOT_FILE}"
    if not folder.is_dir():
        raise ConfigError(f"folder {str(folder)!r} does not exist", rule="demo.plot", fix=fix)
    if target.is_dir() or not os.access(target if target.exists() else folder, os.W_OK):
        raise ConfigError(f"cannot write {str(target)!r}", rule="demo.plot", fix=fix)
    formats = FigureCanvasBase.get_supported_filetypes()
    suffix = target.suffix.lower().lstrip(".")
    if suffix and suffix not in formats:
        raise ConfigError(
            f"matplotlib cannot save a figure as {target.suffix!r}",
            rule="demo.plot",
            fix=f"end the --plot PATH with one of: {', '.join('.' + f for f in sorted(formats))}",
        )
    return target


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
            diff = "" if fed is None or missing(ref) else f"{abs(float(fed) - float(ref)):.1e}"
            table.add_row(row.group, row.column, stat, number(fed), number(ref), diff)
    return table


def max_relative_difference(result: DescribeResult, pooled: pd.DataFrame) -> float:
    worst = 0.0
    reference = _by_key(pooled)
    for row in result.rows:
        expected = reference[(row.group, row.column)]
        for stat in STATISTICS:
            fed, ref = getattr(row, stat), expected[stat]
            if fed is None or missing(ref):
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


def run_demo(console: Console, n_centres: int = 5, plot: Path | None = None) -> float:
    """Run the demo; returns the largest relative difference from the pooled analysis.

    The Kaplan-Meier figure is saved to ``plot`` (default: ``default_plot_path()``).
    """
    started = time.monotonic()
    frame = lung_centres(n_centres)
    plot_path = check_plot_path(plot or default_plot_path())
    console.rule("[bold]oncofed demo: NCCTG lung cancer data in federated cancer centres")
    console.print(
        f"{len(frame)} patients from {frame['inst'].nunique()} institutions, merged into "
        f"{n_centres} centres. Each centre's records stay in its own node process."
    )
    with console.status(f"starting a coordinator and {n_centres} nodes on loopback ..."):
        sandbox = Sandbox.from_frame(frame, split_by="centre", dataset="lung", release="exact")
        sandbox.start()
    try:
        permit_id = grant_access(console, sandbox, frame)
        with sandbox.session(permit=permit_id, console=console) as session:
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

            records = frame.dropna(subset=list(GRANTED))
            console.print(
                f"Exact answers use the {len(records)} records complete on every granted "
                "variable, whichever columns a query names (so adding a column with one "
                "missing value cannot single that patient out)."
            )
            overall = session.describe(COLUMNS, min_nodes=n_centres)
            pooled = pooled_describe(records, COLUMNS)
            console.print(comparison_table(overall, pooled, "describe: all patients"))
            worst = max_relative_difference(overall, pooled)

            by_sex = session.describe(
                ["age", "time"], by="sex", categories=["1", "2"], min_nodes=n_centres
            )
            pooled_sex = pooled_describe(records, ["age", "time"], by="sex", categories=["1", "2"])
            console.print(
                comparison_table(by_sex, pooled_sex, "describe: by sex (1 male, 2 female)")
            )
            worst = max(worst, max_relative_difference(by_sex, pooled_sex))
            survival_worst, survival_count = survival_by_sex(
                console, session, records, n_centres, plot_path
            )
            worst = max(worst, survival_worst)
            dp_describe(console, session, frame, n_centres)
        show_audit(console, sandbox, permit_id)
    finally:
        with console.status("stopping the network ..."):
            sandbox.stop()
    console.print(
        f"[green]federated = pooled[/]: largest relative difference {worst:.1e} "
        f"over {len(overall.rows) * 5 + len(by_sex.rows) * 5 + survival_count} statistics, "
        f"in {time.monotonic() - started:.1f} s."
    )
    return worst


def grant_access(console: Console, sandbox: Sandbox, frame: pd.DataFrame) -> str:
    """The EHDS path, each actor with its own key: application, review, signed permit."""
    console.rule("[bold]access: application -> data-access body -> signed permit")
    researcher, body = sandbox.identity(sandbox.researcher), sandbox.identity(HDAB)
    today = datetime.date.today()
    application = DataAccessApplication(
        applicant=researcher.card,
        organisation="Example University Hospital",
        persons=(researcher.card,),
        purposes=(Purpose.SCIENTIFIC_RESEARCH,),
        description="Survival of advanced lung cancer by sex across centres: describe, "
        "Kaplan-Meier on a 30-day grid. Exact answers, to validate the federation against "
        "the published pooled analysis.",
        datasets=(DatasetRequest(dataset="lung", variables=GRANTED, release="exact"),),
        task_types=("describe", "kaplan_meier"),
        period_start=today,
        period_end=today + datetime.timedelta(days=365),
    )
    with DataAccessClient(sandbox.address, sandbox.credentials(researcher.name)) as client:
        filed = client.submit_application(application)
    console.print(
        f"researcher [bold]{researcher.name}[/] filed application {filed.application_id[:8]}... "
        f"(signed in with her own certificate)"
    )
    permit = draft_permit(
        application,
        body,
        permit_id="lung-survival-demo",
        application_id=filed.application_id,
        conditions="Results are published in aggregate only.",
    )
    sandbox.publish_permit(permit.sign(body.signing))  # signed offline, with the body's key
    with DataAccessClient(sandbox.address, sandbox.credentials(HDAB)) as client:
        decided = client.application(filed.application_id)
    table = Table(title=f"permit {permit.permit_id}, signed by {body.name}", title_justify="left")
    table.add_column("field")
    table.add_column("granted")
    table.add_row("application", f"{decided.application_id[:8]}... now {decided.state}")
    table.add_row("persons", ", ".join(p.name for p in permit.persons))
    table.add_row("purpose", ", ".join(p.value for p in permit.purposes))
    granted = permit.datasets[0]
    table.add_row("datasets", "lung: " + ", ".join(granted.variables or ()))
    table.add_row("release", f"{granted.release} (the nodes' policy allows it too)")
    table.add_row("task types", ", ".join(permit.task_types))
    table.add_row("valid", f"{permit.valid_from:%Y-%m-%d} to {permit.valid_until:%Y-%m-%d}")
    console.print(table)
    console.print(
        f"{len(sandbox.node_names)} nodes trust {body.name}'s key; each checks the permit, "
        f"{researcher.name}'s signature on every task, and the variables used."
    )
    return permit.permit_id


def dp_describe(console: Console, session: Session, frame: pd.DataFrame, n_centres: int) -> None:
    """The same statistics under differential privacy, next to the pooled ones and the noise.

    How every node answers by default: counts and sums with OpenDP noise,
    charged to each node's budget for the permit.
    """
    result = session.describe(list(DP_BOUNDS), dp=DP, bounds=DP_BOUNDS, min_nodes=n_centres)
    privacy = result.privacy
    if privacy is None:
        raise AssertionError("a DP describe came back without its privacy statement")
    table = Table(title="describe under differential privacy", title_justify="left")
    for name in ("column", "statistic", "DP release", "pooled", "noise sd"):
        table.add_column(name, justify="left" if name in ("column", "statistic") else "right")
    for row in result.rows:
        values = pd.to_numeric(frame[row.column], errors="coerce").dropna()
        lo, hi = DP_BOUNDS[row.column]
        pooled = {"count": len(values), "sum": float(values.clip(lo, hi).sum())}
        for stat in ("count", "sum"):
            table.add_row(
                row.column,
                stat,
                number(getattr(row, stat)),
                number(pooled[stat]),
                number(privacy.noise_std[f"{stat}.{row.column}"]),
            )
        table.add_row(row.column, "mean", number(row.mean), number(values.mean()), "")
    console.print(table)
    charged = ", ".join(f"{e:g}" for e in sorted(set(privacy.epsilon.values())))
    console.print(
        f"DP release: epsilon {charged} at each node, delta {privacy.delta:g}, "
        f"{privacy.mechanism}; sums clamped to public bounds {DP_BOUNDS}."
    )


def show_audit(console: Console, sandbox: Sandbox, permit_id: str) -> None:
    """Each node's audit trail: verified, and what it recorded under the permit."""
    table = Table(title=f"audit trails under permit {permit_id}", title_justify="left")
    for column in ("node", "entries", "released", "bytes out", "chain"):
        table.add_column(column, justify="left" if column == "node" else "right")
    for name in sandbox.node_names:
        trail = AuditTrail.open_sqlite(sandbox.workdir / name / "state" / AUDIT_FILE)
        entries = list(trail.entries(permit_id))
        problems = trail.verify(sandbox.node_identity(name))
        trail.close()
        released = [e for e in entries if e.outcome == "released"]
        table.add_row(
            name,
            str(len(entries)),
            str(len(released)),
            str(sum(e.released_bytes for e in released)),
            "intact" if not problems else f"{len(problems)} problem(s)",
        )
    console.print(table)


def survival_by_sex(
    console: Console,
    session: Session,
    frame: pd.DataFrame,
    n_centres: int,
    plot: Path | None = None,
) -> tuple[float, int]:
    """Federated Kaplan-Meier by sex on a 30-day grid, next to lifelines on the pooled rows.

    The pooled rows get the same grid (durations rounded up to multiples of 30
    days), so the curves must agree exactly. Saves the plot to ``plot``
    (default: ``default_plot_path()``); returns the largest relative difference
    and how many values were compared.
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
    path = plot or default_plot_path()
    figure = km.plot()
    figure.savefig(path, dpi=120, bbox_inches="tight")
    console.print(
        f"Kaplan-Meier curves with 95% bands saved to [bold]{escape(str(path))}[/]",
        soft_wrap=True,  # a path to copy: never split it
    )
    return worst, count


def _days(value: float | None) -> str:
    return "not reached" if value is None or math.isinf(value) else f"{value:g}"


__all__ = [
    "PLOT_FILE",
    "check_plot_path",
    "default_plot_path",
    "dp_describe",
    "grant_access",
    "load_lung",
    "lung_centres",
    "run_demo",
    "show_audit",
    "survival_by_sex",
]
