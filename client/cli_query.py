"""``oncofed query TASK``: one command per installed task type, made from its declaration.

Every parameter a researcher may set (``TaskParams.researcher_interface``)
becomes an argument or option, with the field's description as its help, so
the command line offers exactly what ``Session.run`` accepts: a task added
to ``tasks/`` has its command without a line here. Values are passed on as
text and validated by the task's parameters, as in Python:

- a flag for a yes/no field (``--secure-aggregation``, ``--no-correction``);
- a comma-separated list for a list (``--categories 1,2``);
- ``KEY=VALUE[,VALUE]`` for a mapping, repeated per key
  (``--bounds age=40,90``, ``--strata-categories ph.ecog=0,1,2,3``);
- ``KEY=VALUE,KEY=VALUE`` (or JSON) for a group of settings
  (``--dp epsilon=0.5,delta=1e-6``);
- the text itself for a filter or a formula (``--where "age >= 60"``).

Errors suggest parameters in the same shapes: ``cli_syntax`` writes a fix's
``Param`` as the option that sets it (``--grid 30``, ``--bounds age=lo,hi``).
"""

from __future__ import annotations

import functools
import json
import shlex
import sys
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import click
import pandas as pd
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from rich.table import Table

from oncofed.client.cli_options import DEFAULT_CREDENTIALS, console, err_console
from oncofed.kernel.errors import Param, hole_label, number_text
from oncofed.tasks import TASKS
from oncofed.tasks.base import TaskType, WrittenAs
from oncofed.tasks.tables import number

Shape = Literal["flag", "choice", "scalar", "list", "list-or-scalar", "mapping", "settings", "text"]


@dataclass(frozen=True)
class Parameter:
    """One task parameter as the command line takes it."""

    name: str
    info: FieldInfo
    shape: Shape
    choices: tuple[str, ...] = ()

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def value(self, raw: Any) -> Any:
        """The command line's text as the value the task's parameters validate."""
        if self.shape == "mapping":  # a repeated option (a tuple too): one key each time
            return {key: (_items(v) if "," in v else v) for key, v in map(self._pair, raw)}
        if isinstance(raw, tuple):  # positional words: one item each, or the text itself
            return raw[0] if len(raw) == 1 and self.shape == "text" else list(raw)
        if self.shape in ("flag", "choice", "scalar", "text"):
            return raw
        if self.shape == "list":
            return _items(raw)
        if self.shape == "list-or-scalar":
            return _items(raw) if "," in raw else raw
        return (
            json.loads(raw) if raw.lstrip().startswith("{") else dict(map(self._pair, _items(raw)))
        )

    def option(self, param: Param) -> str:
        """A fix's suggestion of this parameter as the command line writes it."""
        return _written(self.flag, self.shape, param)

    def _pair(self, text: str) -> tuple[str, str]:
        key, sep, value = text.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{text!r} is not KEY=VALUE", param_hint=self.flag)
        return key.strip(), value.strip()

    def metavar(self) -> str | None:
        """How the value is written, in the help's first column."""
        if self.shape == "choice":
            return None  # click lists the choices
        if self.shape == "scalar":
            kinds = {a for a in _alternatives(self.info.annotation) if a is not type(None)}
            return "INTEGER" if kinds == {int} else "NUMBER" if kinds <= {int, float} else "TEXT"
        return {
            "list": "A,B,...",
            "list-or-scalar": "N|A,B,...",
            "mapping": "KEY=V[,V]",
            "settings": "KEY=V,...",
            "text": "TEXT",
        }[self.shape]

    def help(self) -> str:
        parts = [(self.info.description or "").rstrip(".") + "."]
        written = next((m for m in self.info.metadata if isinstance(m, WrittenAs)), None)
        if written is not None:
            parts.append(f"E.g. {written.example}.")
        elif self.shape == "mapping":
            parts.append("Repeat the option once per key.")
        elif self.shape == "settings":
            parts.append('E.g. "epsilon=0.5,delta=1e-6".')
        default = self.info.get_default(call_default_factory=True)
        if not self.info.is_required() and default not in (None, (), {}, False):
            parts.append(f"[default: {default}]")
        return " ".join(p for p in parts if p)


def parameters(task: TaskType[Any, Any]) -> list[Parameter]:
    """The task's researcher parameters, each with the shape the command line gives it."""
    fields = task.params.model_fields
    return [_parameter(name, fields[name]) for name in task.params.researcher_interface()]


def _parameter(name: str, info: FieldInfo) -> Parameter:
    if any(isinstance(m, WrittenAs) for m in info.metadata):
        return Parameter(name, info, "text")
    options = [a for a in _alternatives(info.annotation) if a is not type(None)]
    kinds = {typing.get_origin(a) or a for a in options}
    if kinds == {bool}:
        return Parameter(name, info, "flag")
    if kinds == {Literal}:
        return Parameter(name, info, "choice", tuple(str(v) for v in typing.get_args(options[0])))
    if kinds == {dict}:
        return Parameter(name, info, "mapping")
    if all(isinstance(a, type) and issubclass(a, BaseModel) for a in options):
        return Parameter(name, info, "settings")
    sequences = kinds & {tuple, list}
    if sequences and kinds - sequences:
        return Parameter(name, info, "list-or-scalar")
    if sequences:
        return Parameter(name, info, "list")
    return Parameter(name, info, "scalar")


def _alternatives(annotation: Any) -> list[Any]:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [a for member in typing.get_args(annotation) for a in _alternatives(member)]
    if typing.get_origin(annotation) is typing.Annotated:
        return _alternatives(typing.get_args(annotation)[0])
    return [annotation]


def _items(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def cli_syntax(param: Param) -> str:
    """A parameter an error's fix suggests, as the ``oncofed query`` option that sets it.

    Written in the shape the tasks' declarations give the option; a parameter
    no task declares (``--permit``, which every query command has) in the
    shape of its value.
    """
    declared = _declared_options().get(param.name)
    if declared is not None:
        return declared.option(param)
    return _written("--" + param.name.replace("_", "-"), None, param)


@functools.cache
def _declared_options() -> dict[str, Parameter]:
    options: dict[str, Parameter] = {}
    for task in TASKS.values():
        for parameter in parameters(task):
            if parameter.name not in task.arguments:
                options.setdefault(parameter.name, parameter)
    return options


def _written(flag: str, shape: Shape | None, param: Param) -> str:
    """``Parameter.value``'s inverse: the option and the text that gives ``param``'s value."""
    value = param.value
    if not param.has_value or value is True:
        return flag
    if value is False:
        return "--no-" + flag.removeprefix("--")
    if isinstance(value, dict):
        # A mapping of lists is repeated per key; a group of settings is one option.
        lists = any(isinstance(v, list) for v in value.values())
        if shape == "mapping" or (shape is None and lists):
            return " ".join(f"{flag} {value_word(k)}={value_word(v)}" for k, v in value.items())
        return f"{flag} " + ",".join(f"{value_word(k)}={value_word(v)}" for k, v in value.items())
    return f"{flag} {value_word(value, quote=True)}"


def value_word(value: Any, *, quote: bool = False) -> str:
    """One value as the command line (and the console's forms) read it: a list
    comma-separated, text as it is (``quote``: quoted for a shell)."""
    label = hole_label(value, cli=True)
    if label is not None:
        return label
    if isinstance(value, list):
        return ",".join(value_word(v) for v in value)
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return number_text(value)
    text = str(value)
    return shlex.quote(text) if quote else text


def _click_parameter(parameter: Parameter, positional: bool) -> click.Parameter:
    required = parameter.info.is_required()
    if positional:
        many = parameter.shape in ("list", "text")
        return click.Argument(
            [parameter.name],
            nargs=-1 if many else 1,
            required=required,
            metavar=parameter.name.upper() + ("..." if many else ""),
        )
    if parameter.shape == "flag":
        name = parameter.name.replace("_", "-")
        return click.Option(
            [f"--{name}/--no-{name}", parameter.name], default=None, help=parameter.help()
        )
    return click.Option(
        [parameter.flag, parameter.name],
        type=click.Choice(parameter.choices) if parameter.shape == "choice" else str,
        multiple=parameter.shape == "mapping",
        required=required or parameter.name == "dataset",
        default=None,
        metavar=parameter.metavar(),
        help=parameter.help(),
    )


def task_command(task: TaskType[Any, Any]) -> click.Command:
    """The ``oncofed query`` command of one task type."""
    by_name = {p.name: p for p in parameters(task)}
    positional = [by_name[name] for name in task.arguments]
    options = [p for p in by_name.values() if p.name not in task.arguments]
    params: list[click.Parameter] = [
        *(_click_parameter(p, positional=True) for p in positional),
        *(_click_parameter(p, positional=False) for p in options),
        click.Option(
            ["--coordinator", "-c", "coordinator"],
            envvar="ONCOFED_COORDINATOR",
            default="127.0.0.1:7100",
            show_default=True,
            help="host:port of the coordinator.",
        ),
        click.Option(
            ["--credentials", "credentials"],
            envvar="ONCOFED_CREDENTIALS",
            type=click.Path(path_type=Path),
            default=DEFAULT_CREDENTIALS,
            help="Your credentials folder (identity.json, tls.key, tls.crt, ca.crt).",
        ),
        click.Option(
            ["--permit", "permit"],
            envvar="ONCOFED_PERMIT",
            help="The id of the data permit the task runs under.",
        ),
        click.Option(["--csv", "csv"], is_flag=True, help="Print CSV instead of a table."),
        click.Option(
            ["--no-wait", "no_wait"],
            is_flag=True,
            help="Print the task's id and leave it running; follow it with `oncofed task`.",
        ),
    ]
    if hasattr(task.result, "plot"):
        params.append(
            click.Option(
                ["--plot", "plot"],
                type=click.Path(path_type=Path),
                help="Also save the plot to this file (PNG, PDF or SVG).",
            )
        )
    if hasattr(task.result, "save"):
        params.append(
            click.Option(
                ["--save", "save"],
                type=click.Path(path_type=Path),
                help="Also save the result to this JSON file.",
            )
        )

    def run(**values: Any) -> None:
        _run(task, by_name, values)

    return click.Command(
        task.name.replace("_", "-"),
        params=params,
        callback=run,
        help=f"{task.summary[:1].upper()}{task.summary[1:]}.",
        short_help=task.summary,
        no_args_is_help=True,
    )


def _run(task: TaskType[Any, Any], by_name: dict[str, Parameter], values: dict[str, Any]) -> None:
    from oncofed.client.session import Session

    request = {
        name: parameter.value(values[name])
        for name, parameter in by_name.items()
        if values.get(name) not in (None, ())
    }
    with Session(
        values["coordinator"],
        credentials=values["credentials"],
        permit=values["permit"],
        console=err_console,
    ) as session:
        if values["no_wait"]:
            console.print(session.submit(task.name, **request), soft_wrap=True)
            return
        result = session.run(task.name, **request)
    if values.get("plot") is not None:
        result.plot().savefig(values["plot"], dpi=120, bbox_inches="tight")  # type: ignore[attr-defined]
    if values.get("save") is not None:
        result.save(values["save"])  # type: ignore[attr-defined]
    frame: pd.DataFrame = result.to_frame()  # type: ignore[attr-defined]
    if values["csv"]:
        sys.stdout.write(frame_csv(frame))
    else:
        console.print(task.table(result) if task.table is not None else _frame_table(frame))


def frame_csv(frame: pd.DataFrame) -> str:
    """A result's frame as ``--csv`` prints it, and as the console offers it for download.

    A plain row number index is left out; a labelled one (a group, a time, a
    covariate) is data and is written.
    """
    return frame.to_csv(index=not isinstance(frame.index, pd.RangeIndex))


def _frame_table(frame: pd.DataFrame) -> Table:
    table = Table()
    for name in [*frame.index.names, *frame.columns]:
        table.add_column(str(name or ""))
    for index, row in frame.iterrows():
        labels = index if isinstance(index, tuple) else (index,)
        table.add_row(*(str(v) for v in labels), *(number(v) for v in row.tolist()))
    return table


def query_group() -> click.Group:
    """``oncofed query``: the commands of every installed task."""
    group = click.Group(
        "query",
        help="Run federated analyses (researchers): one command per installed task type.",
        no_args_is_help=True,
    )
    for task in TASKS.values():
        group.add_command(task_command(task))
    return group


__all__ = [
    "Parameter",
    "cli_syntax",
    "frame_csv",
    "parameters",
    "query_group",
    "task_command",
    "value_word",
]
