"""The ``oncofed`` command. Errors print as one line and exit with a documented code."""

from __future__ import annotations

import difflib
import functools
import json
import os
import signal
import sys
import threading
from dataclasses import asdict
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import click
import typer
from rich.markup import escape
from rich.table import Table
from typer.core import TyperGroup

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
    console,
    err_console,
)
from oncofed.kernel.errors import ConfigError, ExitCode, OncofedError
from oncofed.kernel.logs import setup_logging
from oncofed.kernel.version import VERSION

if TYPE_CHECKING:
    pass


@functools.cache
def _query_group() -> click.Group:
    from oncofed.client.cli_query import query_group

    return query_group()


class _Commands(TyperGroup):
    """The ``oncofed`` group, whose ``query`` commands are made on first use.

    They are made from every installed task, and importing the tasks (OpenDP,
    scikit-learn) takes seconds that ``node check`` or a mistyped ``sandbox``
    option should not wait for before answering.
    """

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [*super().list_commands(ctx), "query"]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name == "query":
            return _query_group()
        return super().get_command(ctx, cmd_name)

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        # click suggests only from the commands made so far, which leaves out `query`.
        try:
            return super().resolve_command(ctx, args)
        except click.UsageError as error:
            close = difflib.get_close_matches(args[0], self.list_commands(ctx)) if args else []
            if close and "Did you mean" not in error.message:
                names = ", ".join(repr(name) for name in close)
                error.message = f"{error.message.rstrip('.')}. Did you mean {names}?"
            raise


app = typer.Typer(
    cls=_Commands,
    name="oncofed",
    help="Federated analytics for cancer centres: statistics computed where the data lives.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
node_app = typer.Typer(help="Run and check a centre's node.", no_args_is_help=True)
coordinator_app = typer.Typer(help="Run the network's coordinator.", no_args_is_help=True)
task_app = typer.Typer(help="Follow, fetch and cancel submitted tasks.", no_args_is_help=True)
app.add_typer(node_app, name="node")
app.add_typer(coordinator_app, name="coordinator")
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
    plot: Annotated[
        Path | None,
        typer.Option(
            dir_okay=False,
            help="Where to save the Kaplan-Meier figure "
            "[default: oncofed-demo-kaplan-meier.png in the system's temporary folder]",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Run a federated network of lung cancer centres on this machine and compare with pooled."""
    from oncofed.client.demo import run_demo

    run_demo(console, centres, plot=plot)


@app.command("console")
def console_command(
    credentials: CredentialsOption = DEFAULT_CREDENTIALS,
    coordinator: CoordinatorOption = "127.0.0.1:7100",
    node: Annotated[
        Path | None,
        typer.Option(help="A node's TOML config: open the operator's console for that node."),
    ] = None,
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1 (0: any free one).")] = 0,
    browser: Annotated[bool, typer.Option(help="Open the link in a web browser.")] = True,
) -> None:
    """A web console on this machine: a data-access body's or a researcher's (by the
    certificate in --credentials), or a node operator's (--node CONFIG).

    It listens on 127.0.0.1 only and prints a link holding a one-time token."""
    from oncofed.client.console.launch import console_settings
    from oncofed.client.console.server import serve

    settings = console_settings(credentials, coordinator, node)
    console.print(f"oncofed console ({settings.role}); stop with Ctrl-C. Open:")
    serve(settings, port, browser, announce=lambda url: console.print(url, soft_wrap=True))


class ReleaseChoice(StrEnum):
    dp = "dp"
    exact = "exact"


@app.command()
def sandbox(
    data: Annotated[Path, typer.Option(help="CSV or Parquet file to split into nodes.")],
    split_by: Annotated[str, typer.Option(help="Column whose values become the nodes.")],
    dataset: Annotated[str, typer.Option(help="Dataset name the nodes offer.")] = "data",
    release: Annotated[
        ReleaseChoice,
        typer.Option(
            help="dp: every answer carries differential-privacy noise (ask with --dp); "
            "exact: the nodes allow and the permit grants noise-free answers."
        ),
    ] = ReleaseChoice.dp,
) -> None:
    """Start a local network from one file and keep it up until Ctrl-C."""
    # Every input is checked before the sandbox's imports and before any process starts.
    if not data.is_file():
        raise ConfigError(
            f"file {str(data)!r} does not exist",
            rule="sandbox.data",
            fix="pass an existing CSV or Parquet file",
        )
    import pandas as pd

    from oncofed.client.sandbox import Sandbox

    try:
        frame = pd.read_parquet(data) if data.suffix in (".parquet", ".pq") else pd.read_csv(data)
    except (OSError, ValueError) as exc:  # pandas' and pyarrow's parse errors are ValueErrors
        raise ConfigError(
            f"cannot read {str(data)!r}: {exc}",
            rule="sandbox.data",
            fix="pass a CSV file with a header row, or a Parquet file ending in .parquet",
        ) from None
    net = Sandbox.from_frame(
        frame, split_by=split_by, dataset=dataset, release=release.value, keep_logs=True
    )
    with err_console.status("starting the network ..."):
        net.start()
    stop = threading.Event()
    _stop_on_signals(stop.set)
    try:
        console.print(
            f"[green]network up[/]: coordinator at [bold]{net.address}[/], "
            f"nodes {', '.join(net.node_names)}, dataset [bold]{dataset}[/], "
            f"release [bold]{release.value}[/]",
            soft_wrap=True,  # the address is copied from here: never split it across lines
        )
        net.grant("sandbox")
        folder = str(net.credentials(net.researcher))
        console.print(f"Researcher {net.researcher!r} holds permit 'sandbox'. Connect from Python:")
        console.print(
            f"  from oncofed import Session\n  s = Session({net.address!r}, "
            f"credentials={folder!r}, permit='sandbox', dataset={dataset!r})",
            soft_wrap=True,
        )
        # Under DP a sum needs public bounds: the hint shows where they go.
        dp_options = " --dp epsilon=0.5 --bounds COLUMN=LO,HI" if release.value == "dp" else ""
        console.print(
            f"or: oncofed query describe -c {net.address} --credentials {folder} "
            f"--permit sandbox --dataset {dataset} COLUMN{dp_options}",
            soft_wrap=True,
        )
        console.print(
            f"Logs and node configs: {net.workdir}. Press Ctrl-C to stop.", soft_wrap=True
        )
        # Piped (`| tee`, a supervisor), stdout is block-buffered: the address must show now.
        sys.stdout.flush()
        stop.wait()
    finally:
        net.stop()
        if net.logs.is_dir():
            console.print(f"network stopped; its logs are kept in {net.logs}", soft_wrap=True)


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
    from oncofed.node.config_check import check_before_start
    from oncofed.node.runner import NodeRunner

    setup_logging(log_level, log_format)
    cfg = load_node_config(config)
    # Before NodeRunner, which creates state_dir: a node that cannot run leaves nothing behind.
    check_before_start(cfg)
    install_process_identity()
    runner = NodeRunner(cfg)
    _stop_on_signals(runner.stop)
    runner.run_forever()


@node_app.command("check")
def node_check(
    config: Annotated[Path, typer.Argument(help="The node's TOML config file.")],
) -> None:
    """Validate the config, credentials, state folder and data; print each dataset's schema."""
    from oncofed.node.config import load_node_config
    from oncofed.node.config_check import check_credentials, check_state_dir
    from oncofed.node.local_state import dataset_facts

    cfg = load_node_config(config)
    console.print(f"node [bold]{cfg.name}[/] -> coordinator {cfg.coordinator}")
    # The same checks, in the same order, as `node start` makes before it creates anything.
    credentials = check_credentials(cfg)
    console.print(
        f"credentials {escape(str(cfg.credentials))}: node {credentials.holder.name}, "
        f"issued by {escape(credentials.issuer)}, valid until "
        f"{credentials.not_after:%Y-%m-%d}",
        soft_wrap=True,
    )
    exists = check_state_dir(cfg)
    console.print(
        f"state_dir {escape(str(cfg.state_dir))}: "
        + ("writable" if exists else "created when the node starts"),
        soft_wrap=True,
    )
    for name, dataset in cfg.datasets.items():
        facts = dataset_facts(name, dataset, cfg.name)
        # A line of its own: as the table's title, a long path would wrap to the table's width.
        console.print(
            f"dataset {name}: {facts.rows} rows, {escape(str(facts.path))}", soft_wrap=True
        )
        table = Table()
        for heading in ("column", "type", "missing", "categories"):
            table.add_column(heading)
        for column in facts.columns:
            table.add_row(
                column.name, column.type, str(column.missing), ", ".join(column.categories)
            )
        console.print(table)
    console.print("[green]ok[/]: config, credentials and data are valid")


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
    by: Annotated[
        str,
        typer.Option(
            click_type=click.Choice(["permit", "researcher"]),
            help="permit: each permit's budget; researcher: each person's, over every permit.",
        ),
    ] = "permit",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines instead.")] = False,
) -> None:
    """Privacy spent and remaining per permit (or researcher) and dataset, from the ledger."""
    from oncofed.node.config import load_node_config
    from oncofed.node.local_state import budget_rows

    cfg = load_node_config(config)
    rows = budget_rows(cfg, "permit" if by == "permit" else "researcher")
    if rows is None:
        console.print(f"node [bold]{cfg.name}[/]: no differentially private release yet")
        return
    if as_json:
        for row in rows:
            fields = asdict(row)
            fields[by] = fields.pop("holder")
            print(json.dumps({**fields, "remaining_epsilon": row.remaining_epsilon}))
        return
    table = Table(title=f"privacy budget at node {cfg.name}, by {by}", title_justify="left")
    for column in (by, "dataset", "releases", "spent ε", "cap ε", "remaining ε", "δ"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            row.holder,
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


def command() -> click.Group:
    """The whole ``oncofed`` command: the groups above, and one query command per task."""
    group = typer.main.get_command(app)
    assert isinstance(group, click.Group), "a Typer app with groups is a click group"
    _one_suggestion(group)
    return group


def _one_suggestion(group: click.Group) -> None:
    """Leave "Did you mean ...?" for a mistyped command to click alone.

    click suggests close names itself; a Typer group would add the same again.
    """
    if isinstance(group, TyperGroup):
        group.suggest_commands = False
    for sub in group.commands.values():
        if isinstance(sub, click.Group):
            _one_suggestion(sub)


def _error_line(exc: OncofedError) -> str:
    """The error as this interface writes it: a parameter its fix suggests as an option."""
    if not exc.params():
        return exc.one_line()
    # Only now: the options come from the task declarations, which take seconds to import.
    from oncofed.client.cli_query import cli_syntax

    return exc.one_line(cli_syntax)


def main() -> None:
    try:
        command()(standalone_mode=False)
    except OncofedError as exc:
        err_console.print(
            f"[red]error:[/] {escape(_error_line(exc))}", highlight=False, soft_wrap=True
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
