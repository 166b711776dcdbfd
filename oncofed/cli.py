"""The ``oncofed`` command. Errors print as one line and exit with a documented code."""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path
from typing import Annotated, Any

import click
import pandas as pd
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from oncofed import __version__
from oncofed.errors import ConfigError, ExitCode, OncofedError
from oncofed.logs import LogFormat, setup_logging

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

console = Console()
err_console = Console(stderr=True)

LogLevelOption = Annotated[str, typer.Option(help="debug, info, warning or error.")]
LogFormatOption = Annotated[
    LogFormat,
    typer.Option(envvar="ONCOFED_LOG_FORMAT", help="text, or json: one object per line."),
]

CoordinatorOption = Annotated[
    str,
    typer.Option(
        "--coordinator", "-c", envvar="ONCOFED_COORDINATOR", help="host:port of the coordinator."
    ),
]


def _stop_on_signals(stop: Any) -> None:
    def handler(_signum: int, _frame: object) -> None:
        threading.Thread(target=stop, daemon=True).start()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


@app.command()
def version() -> None:
    """Print the installed oncofed version."""
    console.print(__version__)


@app.command()
def demo(
    centres: Annotated[int, typer.Option(min=3, max=10, help="Number of centres.")] = 5,
) -> None:
    """Run a federated network of lung cancer centres on this machine and compare with pooled."""
    from oncofed.demo import run_demo

    run_demo(console, centres)


@app.command()
def sandbox(
    data: Annotated[Path, typer.Option(help="CSV or Parquet file to split into nodes.")],
    split_by: Annotated[str, typer.Option(help="Column whose values become the nodes.")],
    dataset: Annotated[str, typer.Option(help="Dataset name the nodes offer.")] = "data",
) -> None:
    """Start a local network from one file and keep it up until Ctrl-C."""
    from oncofed.sandbox import Sandbox

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
        console.print("Connect from Python:")
        console.print(
            f"  from oncofed import Session\n  s = Session({net.address!r}, dataset={dataset!r})"
        )
        console.print(f"or: oncofed query describe -c {net.address} --dataset {dataset} COLUMN")
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
    log_level: LogLevelOption = "info",
    log_format: LogFormatOption = "text",
) -> None:
    """Run the coordinator until SIGTERM or Ctrl-C."""
    from oncofed.coordinator.server import Coordinator

    setup_logging(log_level, log_format)
    coordinator = Coordinator(db, listen, heartbeat_seconds=heartbeat)
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
    from oncofed.flower import install_process_identity
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


@app.command()
def nodes(coordinator: CoordinatorOption = "127.0.0.1:7100") -> None:
    """List the nodes the coordinator knows: name, version, online, datasets."""
    from oncofed.session import Session

    with Session(coordinator, progress=False) as session:
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
    by: Annotated[str | None, typer.Option(help="Categorical column to group by.")] = None,
    categories: Annotated[str | None, typer.Option(help="Agreed groups, comma separated.")] = None,
    min_nodes: Annotated[int, typer.Option(help="Wait for this many nodes.")] = 1,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for nodes.")] = 120.0,
    where: Annotated[str | None, typer.Option(help='Rows to keep, e.g. "age >= 60".')] = None,
    csv: Annotated[bool, typer.Option("--csv", help="Print CSV instead of a table.")] = False,
) -> None:
    """Count, missing, mean, variance and standard deviation over all nodes."""
    from oncofed.render import describe_table
    from oncofed.session import Session

    with Session(coordinator, dataset=dataset, console=err_console) as session:
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


@task_app.command("status")
def task_status(task_id: str, coordinator: CoordinatorOption = "127.0.0.1:7100") -> None:
    """Show a task's state and progress."""
    from oncofed.session import Session

    with Session(coordinator, progress=False) as session:
        status = session.status(task_id)
    console.print(
        f"{status.task_id} {status.task_type}: {status.state} "
        f"({status.replies}/{status.expected} replies) {status.detail}"
    )


@task_app.command("result")
def task_result(task_id: str, coordinator: CoordinatorOption = "127.0.0.1:7100") -> None:
    """Wait for a task and print its result as JSON."""
    from oncofed.session import Session

    with Session(coordinator, console=err_console) as session:
        sys.stdout.write(session.wait(task_id) + "\n")


@task_app.command("cancel")
def task_cancel(task_id: str, coordinator: CoordinatorOption = "127.0.0.1:7100") -> None:
    """Cancel a queued or running task."""
    from oncofed.session import Session

    with Session(coordinator, progress=False) as session:
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
