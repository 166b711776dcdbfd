"""Options and consoles shared by the ``oncofed`` command's groups."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from oncofed.kernel.logs import LogFormat

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

DEFAULT_CREDENTIALS = Path.home() / ".oncofed"
CredentialsOption = Annotated[
    Path,
    typer.Option(
        envvar="ONCOFED_CREDENTIALS",
        help="Your credentials folder (identity.json, tls.key, tls.crt, ca.crt).",
    ),
]
PermitOption = Annotated[
    str | None,
    typer.Option(envvar="ONCOFED_PERMIT", help="The id of the data permit the task runs under."),
]

__all__ = [
    "DEFAULT_CREDENTIALS",
    "CoordinatorOption",
    "CredentialsOption",
    "LogFormatOption",
    "LogLevelOption",
    "PermitOption",
    "console",
    "err_console",
]
