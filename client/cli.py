"""The ``oncofed`` command. Errors print as one line and exit with a documented code."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, cast

import click
import pandas as pd
import typer
from rich.markup import escape
from rich.table import Table

from oncofed.client.cli_governance import (
    application_app,
    approvals_app,
    audit_app,
    permit_app,
    pki_app,
)
from oncofed.client.cli_options import (
    DEFAULT_CREDENTIALS,
    CoordinatorOption,
    CredentialsOption,
    LogFormatOption,
    LogLevelOption,
    PermitOption,
    console,
    err_console,
)
from oncofed.kernel.errors import ConfigError, ExitCode, OncofedError
from oncofed.kernel.logs import setup_logging
from oncofed.kernel.version import VERSION

if TYPE_CHECKING:
    from oncofed.tasks.quantiles import Method

app = typer.Typer(
    name="oncofed",
    help="Federated analytics for cancer centres: statistics computed where the data lives.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
node_app = typer.Typer(help="Run and check a centre's node.", no_args_is_help=True)
coordinator_app = typer.Typer(help="Run the network's coordinator.", no_args_is_help=True)
query_app = typer.Typer(help="Run federated analyses (researchers).", no_args_is_help=True)
task_app = typer.Typer(help="Follow, fetch and cancel submitted tasks.", no_args_is_help=True)
app.add_typer(node_app, name="node")
app.add_typer(coordinator_app, name="coordinator")
app.add_typer(query_app, name="query")
app.add_typer(task_app, name="task")
app.add_typer(pki_app, name="pki")
app.add_typer(application_app, name="application")
app.add_typer(permit_app, name="permit")
app.add_typer(audit_app, name="audit")
node_app.add_typer(approvals_app, name="approvals")


def _stop_on_signals(stop: Any) -> None:
    def handler(_signum: int, _frame: object) -> None:
        threading.Thread(target=stop, daemon=True).start()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


@app.command()
def version() -> None:
    """Print the installed oncofed version."""
    console.print(VERSION)


@app.command()
def demo(
    centres: Annotated[int, typer.Option(min=3, max=10, help="Number of centres.")] = 5,
) -> None:
    """Run a federated network of lung cancer centres on this machine and compare with pooled."""
    from oncofed.client.demo import run_demo

    run_demo(console, centres)


@app.command()
def sandbox(
    data: Annotated[Path, typer.Option(help="CSV or Parquet file to split into nodes.")],
    split_by: Annotated[str, typer.Option(help="Column whose values become the nodes.")],
    dataset: Annotated[str, typer.Option(help="Dataset name the nodes offer.")] = "data",
) -> None:
    """Start a local network from one file and keep it up until Ctrl-C."""
    from oncofed.client.sandbox import Sandbox

    if not data.is_file():
        raise ConfigError(
            f"file {str(data)!r} does not exist",
            rule="sandbox.data",
            fix="pass an existing CSV or Parquet file",
        )
    frame = pd.read_parquet(data) if data.suffix in (".parquet", ".pq") else pd.read_csv(data)
    net = Sandbox.from_frame(frame, split_by=split_by, dataset=dataset)
    with err_console.status("starting the network ..."):
        net.start()
    stop = threading.Event()
    _stop_on_signals(stop.set)
    try:
        console.print(
            f"[green]network up[/]: coordinator at [bold]{net.address}[/], "
            f"nodes {', '.join(net.node_names)}, dataset [bold]{dataset}[/]"
        )
        net.grant("sandbox")
        folder = str(net.credentials(net.researcher))
        console.print(f"Researcher {net.researcher!r} holds permit 'sandbox'. Connect from Python:")
        console.print(
            f"  from oncofed import Session\n  s = Session({net.address!r}, "
            f"credentials={folder!r}, permit='sandbox', dataset={dataset!r})",
            soft_wrap=True,
        )
        console.print(
            f"or: oncofed query describe -c {net.address} --credentials {folder} "
            f"--permit sandbox --dataset {dataset} COLUMN",
            soft_wrap=True,
        )
        console.print(f"Logs and node configs: {net.workdir}. Press Ctrl-C to stop.")
        stop.wait()
    finally:
        net.stop()


@coordinator_app.command("start")
def coordinator_start(
    db: Annotated[
        str,
        typer.Option(
            envvar="ONCOFED_DATABASE_URL",
            help="SQLAlchemy URL: sqlite:///FILE or postgresql+psycopg://...",
        ),
    ] = "sqlite:///oncofed-coordinator.db",
    listen: Annotated[
        str, typer.Option(help="host:port to listen on (port 0 picks one).")
    ] = "127.0.0.1:7100",
    ready_file: Annotated[
        Path | None, typer.Option(help="Write the bound port here once serving.")
    ] = None,
    heartbeat: Annotated[float, typer.Option(help="Seconds between heartbeats.")] = 5.0,
    credentials: Annotated[
        Path,
        typer.Option(
            envvar="ONCOFED_CREDENTIALS",
            help="The coordinator's folder: identity.json, tls.key, tls.crt, ca.crt.",
        ),
    ] = Path("credentials"),
    crl: Annotated[
        Path | None,
        typer.Option(help="The network CA's crl.pem (re-read when it changes)."),
    ] = None,
    audit_retention_days: Annotated[
        int,
        typer.Option(min=366, help="Keep audit entries at least this many days (EHDS: a year)."),
    ] = 366,
    log_level: LogLevelOption = "info",
    log_format: LogFormatOption = "text",
) -> None:
    """Run the coordinator until SIGTERM or Ctrl-C."""
    from oncofed.coordinator.server import Coordinator

    setup_logging(log_level, log_format)
    coordinator = Coordinator(
        db,
        credentials,
        listen,
        heartbeat_seconds=heartbeat,
        crl=crl,
        audit_retention_days=audit_retention_days,
    )
    port = coordinator.start()
    if ready_file is not None:
        tmp = ready_file.with_suffix(".tmp")
        tmp.write_text(str(port))
        os.replace(tmp, ready_file)
    _stop_on_signals(coordinator.stop)
    coordinator.wait()


@node_app.command("start")
def node_start(
    config: Annotated[Path, typer.Argument(help="The node's TOML config file.")],
    log_level: LogLevelOption = "info",
    log_format: LogFormatOption = "text",
) -> None:
    """Connect to the coordinator and serve tasks until SIGTERM or Ctrl-C."""
    from oncofed.kernel.flower import install_process_identity
    from oncofed.node.config import load_node_config
    from oncofed.node.runner import NodeRunner

    setup_logging(log_level, log_format)
    install_process_identity()
    runner = NodeRunner(load_node_config(config))
    _stop_on_signals(runner.stop)
    runner.run_forever()


@node_app.command("check")
def node_check(
    config: Annotated[Path, typer.Argument(help="The node's TOML config file.")],
) -> None:
    """Validate the config and the data; print each dataset's schema and row count."""
    from oncofed.node.config import load_node_config
    from oncofed.node.data import read_dataset

    cfg = load_node_config(config)
    console.print(f"node [bold]{cfg.name}[/] -> coordinator {cfg.coordinator}")
    for name, dataset in cfg.datasets.items():
        frame = read_dataset(name, dataset, cfg.name)
        table = Table(
            title=f"dataset {name}: {len(frame)} rows, {dataset.path}", title_justify="left"
        )
        for column in ("column", "type", "missing", "categories"):
            table.add_column(column)
        for column, spec in dataset.columns.items():
            categories = ", ".join(spec.categories) if spec.categories else ""
            table.add_row(column, spec.type, str(int(frame[column].isna().sum())), categories)
        console.print(table)
    console.print("[green]ok[/]: config and data are valid")


@node_app.command("identity")
def node_identity(
    config: Annotated[Path, typer.Argument(help="The node's TOML config file.")],
) -> None:
    """Print this node's public identity key (created on first use) for peers to pin."""
    from oncofed.node.config import load_node_config
    from oncofed.node.identity import load_or_create_identity, public_key_text

    cfg = load_node_config(config)
    key = load_or_create_identity(cfg.state_dir)
    print(f'"{cfg.name}" = "{public_key_text(key.public_key())}"')


@node_app.command("budget")
def node_budget(
    config: Annotated[Path, typer.Argument(help="The node's TOML config file.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines instead.")] = False,
) -> None:
    """Privacy spent and remaining per permit and dataset, from the node's ledger."""
    from oncofed.node.config import load_node_config
    from oncofed.privacy.ledger import LEDGER_FILE, PrivacyLedger

    cfg = load_node_config(config)
    if not (cfg.state_dir / LEDGER_FILE).exists():
        console.print(f"node [bold]{cfg.name}[/]: no differentially private release yet")
        return
    ledger = PrivacyLedger.at(cfg.state_dir, cfg.name)
    rows = ledger.summary({name: cfg.policy.privacy_for(name) for name in cfg.datasets})
    ledger.close()
    if as_json:
        for row in rows:
            fields = asdict(row)
            fields["permit"] = fields.pop("study")
            print(json.dumps({**fields, "remaining_epsilon": row.remaining_epsilon}))
        return
    table = Table(title=f"privacy budget at node {cfg.name}", title_justify="left")
    for column in ("permit", "dataset", "releases", "spent ε", "cap ε", "remaining ε", "δ"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            row.study,
            row.dataset,
            str(row.releases),
            f"{row.spent_epsilon:.4g}",
            f"{row.epsilon:g}",
            f"{row.remaining_epsilon:.4g}",
            f"{row.delta:g}",
        )
    console.print(table)


@app.command()
def nodes(
    coordinator: CoordinatorOption = "127.0.0.1:7100",
    credentials: CredentialsOption = DEFAULT_CREDENTIALS,
) -> None:
    """List the nodes the coordinator knows: name, version, online, datasets."""
    from oncofed.client.session import Session

    with Session(coordinator, credentials=credentials, progress=False) as session:
        listing = session.nodes()
    table = Table()
    for column in listing.columns:
        table.add_column(str(column))
    for row in listing.itertuples(index=False):
        table.add_row(*(", ".join(v) if isinstance(v, list) else str(v) for v in row))
    console.print(table)


@query_app.command("describe")
def query_describe(
    columns: Annotated[list[str], typer.Argument(help="Numeric columns.")],
    dataset: Annotated[str, typer.Option(help="Dataset name.")],
    coordinator: CoordinatorOption = "127.0.0.1:7100",
    credentials: CredentialsOption = DEFAULT_CREDENTIALS,
    permit: PermitOption = None,
    by: Annotated[str | None, typer.Option(help="Categorical column to group by.")] = None,
    categories: Annotated[str | None, typer.Option(help="Agreed groups, comma separated.")] = None,
    min_nodes: Annotated[int, typer.Option(help="Wait for this many nodes.")] = 1,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for nodes.")] = 120.0,
    where: Annotated[str | None, typer.Option(help='Rows to keep, e.g. "age >= 60".')] = None,
    csv: Annotated[bool, typer.Option("--csv", help="Print CSV instead of a table.")] = False,
) -> None:
    """Count, missing, mean, variance and standard deviation over all nodes."""
    from oncofed.client.render import describe_table
    from oncofed.client.session import Session

    with Session(
        coordinator,
        credentials=credentials,
        permit=permit,
        dataset=dataset,
        console=err_console,
    ) as session:
        result = session.describe(
            columns,
            by=by,
            min_nodes=min_nodes,
            timeout=timeout,
            categories=categories.split(",") if categories else None,
            where=where,
        )
    if csv:
        sys.stdout.write(result.to_frame().to_csv())
    else:
        console.print(describe_table(result))


DatasetOption = Annotated[str, typer.Option(help="Dataset name.")]
MinNodesOption = Annotated[int, typer.Option(help="Wait for this many nodes.")]
TimeoutOption = Annotated[float, typer.Option(help="Seconds to wait for nodes.")]
WhereOption = Annotated[str | None, typer.Option(help='Rows to keep, e.g. "age >= 60".')]
CsvOption = Annotated[bool, typer.Option("--csv", help="Print CSV instead of a table.")]


def _numbers(text: str, option: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise typer.BadParameter(
            f"{text!r} is not a comma-separated list of numbers", param_hint=option
        ) from None


@query_app.command("correlation")
def query_correlation(
    columns: Annotated[list[str], typer.Argument(help="Two or more numeric columns.")],
    dataset: DatasetOption,
    coordinator: CoordinatorOption = "127.0.0.1:7100",
    credentials: CredentialsOption = DEFAULT_CREDENTIALS,
    permit: PermitOption = None,
    min_nodes: MinNodesOption = 1,
    timeout: TimeoutOption = 120.0,
    where: WhereOption = None,
    csv: CsvOption = False,
    covariance: Annotated[
        bool, typer.Option("--covariance", help="With --csv: the covariance matrix.")
    ] = False,
) -> None:
    """Covariance and correlation matrices over complete cases."""
    from oncofed.client.render import correlation_tables
    from oncofed.client.session import Session

    with Session(
        coordinator,
        credentials=credentials,
        permit=permit,
        dataset=dataset,
        console=err_console,
    ) as session:
        result = session.correlation(columns, min_nodes=min_nodes, timeout=timeout, where=where)
    if csv:
        sys.stdout.write((result.covariance if covariance else result.correlation).to_csv())
    else:
        console.print(correlation_tables(result))


@query_app.command("crosstab")
def query_crosstab(
    row: Annotated[str, typer.Argument(help="Column for the table's rows.")],
    col: Annotated[str, typer.Argument(help="Column for the table's columns.")],
    dataset: DatasetOption,
    coordinator: CoordinatorOption = "127.0.0.1:7100",
    credentials: CredentialsOption = DEFAULT_CREDENTIALS,
    permit: PermitOption = None,
    row_categories: Annotated[
        str | None, typer.Option(help="Agreed row categories, comma separated.")
    ] = None,
    col_categories: Annotated[
        str | None, typer.Option(help="Agreed column categories, comma separated.")
    ] = None,
    correction: Annotated[
        bool, typer.Option(help="Yates' correction for 2x2 tables (scipy's default).")
    ] = True,
    min_nodes: MinNodesOption = 1,
    timeout: TimeoutOption = 120.0,
    where: WhereOption = None,
    csv: CsvOption = False,
) -> None:
    """Counts on agreed categories, with the chi-square test of independence."""
    from oncofed.client.render import crosstab_table
    from oncofed.client.session import Session

    with Session(
        coordinator,
        credentials=credentials,
        permit=permit,
        dataset=dataset,
        console=err_console,
    ) as session:
        result = session.crosstab(
            row,
            col,
            row_categories=row_categories.split(",") if row_categories else None,
            col_categories=col_categories.split(",") if col_categories else None,
            correction=correction,
            min_nodes=min_nodes,
            timeout=timeout,
            where=where,
        )
    if csv:
        sys.stdout.write(result.to_frame(margins=True).to_csv())
    else:
        console.print(crosstab_table(result))


@query_app.command("histogram")
def query_histogram(
    column: Annotated[str, typer.Argument(help="Numeric column.")],
    dataset: DatasetOption,
    coordinator: CoordinatorOption = "127.0.0.1:7100",
    credentials: CredentialsOption = DEFAULT_CREDENTIALS,
    permit: PermitOption = None,
    edges: Annotated[
        str | None, typer.Option(help='Agreed bin edges, e.g. "40,50,60,70,80".')
    ] = None,
    bins: Annotated[int | None, typer.Option(help="Number of equal bins over --range.")] = None,
    range_: Annotated[
        str | None, typer.Option("--range", help='"lo,hi" for --bins, e.g. "40,90".')
    ] = None,
    min_nodes: MinNodesOption = 1,
    timeout: TimeoutOption = 120.0,
    where: WhereOption = None,
    csv: CsvOption = False,
    plot: Annotated[Path | None, typer.Option(help="Also save the plot to this file.")] = None,
) -> None:
    """Counts on agreed edges (--edges), or --bins equal bins over an agreed --range."""
    from oncofed.client.render import histogram_table
    from oncofed.client.session import Session

    if (edges is None) == (bins is None):
        raise typer.BadParameter("pass either --edges or --bins with --range", param_hint="--edges")
    agreed: int | list[float] = bins if bins is not None else _numbers(str(edges), "--edges")
    interval = _numbers(range_, "--range") if range_ is not None else None
    if interval is not None and len(interval) != 2:
        raise typer.BadParameter("write --range as lo,hi", param_hint="--range")
    with Session(
        coordinator,
        credentials=credentials,
        permit=permit,
        dataset=dataset,
        console=err_console,
    ) as session:
        result = session.histogram(
            column,
            agreed,
            range=(interval[0], interval[1]) if interval is not None else None,
            min_nodes=min_nodes,
            timeout=timeout,
            where=where,
        )
    if plot is not None:
        result.plot().savefig(plot, dpi=120, bbox_inches="tight")
    if csv:
        sys.stdout.write(result.to_frame().to_csv(index=False))
    else:
        console.print(histogram_table(result))


@query_app.command("quantiles")
def query_quantiles(
    column: Annotated[str, typer.Argument(help="Numeric column.")],
    dataset: DatasetOption,
    lower: Annotated[float, typer.Option(help="Agreed lower end of the search.")],
    upper: Annotated[float, typer.Option(help="Agreed upper end of the search.")],
    coordinator: CoordinatorOption = "127.0.0.1:7100",
    credentials: CredentialsOption = DEFAULT_CREDENTIALS,
    permit: PermitOption = None,
    q: Annotated[str, typer.Option(help="Probabilities, comma separated.")] = "0.25,0.5,0.75",
    tolerance: Annotated[
        float | None, typer.Option(help="Largest absolute error; default (upper-lower)/1000.")
    ] = None,
    method: Annotated[
        str,
        typer.Option(
            help="numpy.quantile's method: linear, lower, higher, nearest, midpoint, inverted_cdf."
        ),
    ] = "linear",
    min_nodes: MinNodesOption = 1,
    timeout: TimeoutOption = 120.0,
    where: WhereOption = None,
    csv: CsvOption = False,
) -> None:
    """Approximate quantiles within a stated error bound; no value leaves a node."""
    from oncofed.client.render import quantiles_table
    from oncofed.client.session import Session

    with Session(
        coordinator,
        credentials=credentials,
        permit=permit,
        dataset=dataset,
        console=err_console,
    ) as session:
        result = session.quantiles(
            column,
            _numbers(q, "--q"),
            lower=lower,
            upper=upper,
            tolerance=tolerance,
            method=cast("Method", method),
            min_nodes=min_nodes,
            timeout=timeout,
            where=where,
        )
    if csv:
        sys.stdout.write(result.to_frame().to_csv())
    else:
        console.print(quantiles_table(result))


@query_app.command("glm")
def query_glm(
    formula: Annotated[str, typer.Argument(help='Model formula, e.g. "status ~ age + C(sex)".')],
    dataset: DatasetOption,
    family: Annotated[
        str,
        typer.Option(
            click_type=click.Choice(["gaussian", "binomial", "poisson"]),
            help="gaussian (identity link), binomial (logit) or poisson (log).",
        ),
    ] = "gaussian",
    coordinator: CoordinatorOption = "127.0.0.1:7100",
    credentials: CredentialsOption = DEFAULT_CREDENTIALS,
    permit: PermitOption = None,
    max_iter: Annotated[int, typer.Option(help="Iteration cap.")] = 50,
    min_nodes: MinNodesOption = 1,
    timeout: TimeoutOption = 120.0,
    where: WhereOption = None,
    csv: CsvOption = False,
) -> None:
    """A generalised linear model fitted by federated IRLS; prints the summary table."""
    from oncofed.client.session import Session

    with Session(
        coordinator,
        credentials=credentials,
        permit=permit,
        dataset=dataset,
        console=err_console,
    ) as session:
        result = session.glm(
            formula,
            family,
            where=where,
            min_nodes=min_nodes,
            timeout=timeout,
            max_iter=max_iter,
        )
    # Plain text: rich would read the coefficient names' [T.level] as markup.
    sys.stdout.write(result.to_frame().to_csv() if csv else result.summary() + "\n")


GridOption = Annotated[
    float | None,
    typer.Option(help="Agreed grid width: durations rounded up to multiples (e.g. 30 days)."),
]
TimePointsOption = Annotated[
    str | None, typer.Option(help='Agreed time points instead of a grid, e.g. "90,180,365".')
]
ExactTimesOption = Annotated[
    bool,
    typer.Option("--exact-times", help="Exact event times (only where node policies allow)."),
]


@query_app.command("kaplan-meier")
def query_kaplan_meier(
    duration: Annotated[str, typer.Argument(help="Numeric column: time to event or censoring.")],
    event: Annotated[str, typer.Argument(help="0/1 column: 1 = event observed.")],
    dataset: DatasetOption,
    coordinator: CoordinatorOption = "127.0.0.1:7100",
    credentials: CredentialsOption = DEFAULT_CREDENTIALS,
    permit: PermitOption = None,
    by: Annotated[str | None, typer.Option(help="Column whose categories are groups.")] = None,
    categories: Annotated[str | None, typer.Option(help="Agreed groups, comma separated.")] = None,
    grid: GridOption = None,
    time_points: TimePointsOption = None,
    exact_times: ExactTimesOption = False,
    alpha: Annotated[float, typer.Option(help="1 - confidence level of the band.")] = 0.05,
    min_nodes: MinNodesOption = 1,
    timeout: TimeoutOption = 120.0,
    where: WhereOption = None,
    csv: CsvOption = False,
    plot: Annotated[Path | None, typer.Option(help="Also save the plot to this file.")] = None,
) -> None:
    """Kaplan-Meier survival curves on an agreed time grid, overall or by group."""
    from oncofed.client.render import kaplan_meier_table
    from oncofed.client.session import Session

    with Session(
        coordinator,
        credentials=credentials,
        permit=permit,
        dataset=dataset,
        console=err_console,
    ) as session:
        result = session.kaplan_meier(
            duration,
            event,
            by,
            categories=categories.split(",") if categories else None,
            grid=grid,
            time_points=_numbers(time_points, "--time-points") if time_points else None,
            exact_times=exact_times,
            alpha=alpha,
            min_nodes=min_nodes,
            timeout=timeout,
            where=where,
        )
    if plot is not None:
        result.plot().savefig(plot, dpi=120, bbox_inches="tight")
    if csv:
        sys.stdout.write(result.to_frame().to_csv())
    else:
        console.print(kaplan_meier_table(result))


@query_app.command("logrank")
def query_logrank(
    duration: Annotated[str, typer.Argument(help="Numeric column: time to event or censoring.")],
    event: Annotated[str, typer.Argument(help="0/1 column: 1 = event observed.")],
    group: Annotated[str, typer.Argument(help="Column whose categories are compared.")],
    dataset: DatasetOption,
    coordinator: CoordinatorOption = "127.0.0.1:7100",
    credentials: CredentialsOption = DEFAULT_CREDENTIALS,
    permit: PermitOption = None,
    categories: Annotated[str | None, typer.Option(help="Agreed groups, comma separated.")] = None,
    grid: GridOption = None,
    time_points: TimePointsOption = None,
    exact_times: ExactTimesOption = False,
    min_nodes: MinNodesOption = 1,
    timeout: TimeoutOption = 120.0,
    where: WhereOption = None,
    csv: CsvOption = False,
) -> None:
    """Log-rank test of equal survival across two or more groups."""
    from oncofed.client.render import logrank_table
    from oncofed.client.session import Session

    with Session(
        coordinator,
        credentials=credentials,
        permit=permit,
        dataset=dataset,
        console=err_console,
    ) as session:
        result = session.logrank(
            duration,
            event,
            group,
            categories=categories.split(",") if categories else None,
            grid=grid,
            time_points=_numbers(time_points, "--time-points") if time_points else None,
            exact_times=exact_times,
            min_nodes=min_nodes,
            timeout=timeout,
            where=where,
        )
    if csv:
        sys.stdout.write(result.to_frame().to_csv())
    else:
        console.print(logrank_table(result))


@query_app.command("coxph")
def query_coxph(
    duration: Annotated[str, typer.Argument(help="Numeric column: time to event or censoring.")],
    event: Annotated[str, typer.Argument(help="0/1 column: 1 = event observed.")],
    covariates: Annotated[
        list[str], typer.Argument(help='Covariates, e.g. age "C(sex)" or "age + C(sex)".')
    ],
    dataset: DatasetOption,
    coordinator: CoordinatorOption = "127.0.0.1:7100",
    credentials: CredentialsOption = DEFAULT_CREDENTIALS,
    permit: PermitOption = None,
    strata: Annotated[
        list[str] | None, typer.Option(help="Stratify by this column (repeatable).")
    ] = None,
    strata_categories: Annotated[
        list[str] | None,
        typer.Option(help='Agreed levels of a strata column, e.g. "ph.ecog=0,1,2,3".'),
    ] = None,
    grid: GridOption = None,
    time_points: TimePointsOption = None,
    exact_times: ExactTimesOption = False,
    max_iter: Annotated[int, typer.Option(help="Newton step cap.")] = 50,
    min_nodes: MinNodesOption = 1,
    timeout: TimeoutOption = 120.0,
    where: WhereOption = None,
    csv: CsvOption = False,
) -> None:
    """Cox proportional hazards (Efron ties) by federated Newton-Raphson; prints the summary."""
    from oncofed.client.session import Session

    levels: dict[str, list[str]] = {}
    for text in strata_categories or []:
        column, sep, values = text.partition("=")
        if not sep or not column or not values:
            raise typer.BadParameter(
                f"{text!r} is not COLUMN=LEVEL,LEVEL", param_hint="--strata-categories"
            )
        levels[column] = values.split(",")
    with Session(
        coordinator,
        credentials=credentials,
        permit=permit,
        dataset=dataset,
        console=err_console,
    ) as session:
        result = session.coxph(
            duration,
            event,
            " + ".join(covariates),
            strata=strata,
            strata_categories=levels or None,
            grid=grid,
            time_points=_numbers(time_points, "--time-points") if time_points else None,
            exact_times=exact_times,
            max_iter=max_iter,
            min_nodes=min_nodes,
            timeout=timeout,
            where=where,
        )
    # Plain text: rich would read the coefficient names' [T.level] as markup.
    sys.stdout.write(result.to_frame().to_csv() if csv else result.summary() + "\n")


@task_app.command("status")
def task_status(
    task_id: str,
    coordinator: CoordinatorOption = "127.0.0.1:7100",
    credentials: CredentialsOption = DEFAULT_CREDENTIALS,
) -> None:
    """Show a task's state and progress."""
    from oncofed.client.session import Session

    with Session(coordinator, credentials=credentials, progress=False) as session:
        status = session.status(task_id)
    console.print(
        f"{status.task_id} {status.task_type}: {status.state} "
        f"({status.replies}/{status.expected} replies) {status.detail}"
    )


@task_app.command("result")
def task_result(
    task_id: str,
    coordinator: CoordinatorOption = "127.0.0.1:7100",
    credentials: CredentialsOption = DEFAULT_CREDENTIALS,
) -> None:
    """Wait for a task and print its result as JSON."""
    from oncofed.client.session import Session

    with Session(coordinator, credentials=credentials, console=err_console) as session:
        sys.stdout.write(session.wait(task_id) + "\n")


@task_app.command("cancel")
def task_cancel(
    task_id: str,
    coordinator: CoordinatorOption = "127.0.0.1:7100",
    credentials: CredentialsOption = DEFAULT_CREDENTIALS,
) -> None:
    """Cancel a queued or running task."""
    from oncofed.client.session import Session

    with Session(coordinator, credentials=credentials, progress=False) as session:
        console.print(f"{task_id}: {session.cancel(task_id)}")


def main() -> None:
    try:
        app(standalone_mode=False)
    except OncofedError as exc:
        err_console.print(
            f"[red]error:[/] {escape(exc.one_line())}", highlight=False, soft_wrap=True
        )
        sys.exit(int(exc.exit_code))
    except click.exceptions.Abort:
        sys.exit(int(ExitCode.INTERRUPTED))
    except KeyboardInterrupt:
        sys.exit(int(ExitCode.INTERRUPTED))
    except click.ClickException as exc:
        exc.show()
        sys.exit(int(ExitCode.USAGE))
    sys.exit(int(ExitCode.OK))
