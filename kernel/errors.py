"""Typed errors: each carries the rule that refused, the node, and the fix.

Errors cross process boundaries (node -> coordinator -> researcher) as JSON, so
a refusal raised inside a hospital reaches the researcher's terminal with the
same class, rule, node and fix. The CLI turns any of them into one readable
line and the exit code of its class (see ``docs/operators.md``).

A fix names the request parameters it suggests with ``Param`` (``f"use
{Param('grid', 30)} or wider"``): the name and value travel with the error as a
marker in its text, and each interface writes them in its own syntax -- Python
as a keyword argument (``grid=30``, what ``str(error)`` and ``.fix`` show), the
command line as its option (``--grid 30``, ``client/cli_query.py``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from enum import IntEnum
from typing import Any, ClassVar

from pydantic import ValidationError


class ExitCode(IntEnum):
    """Documented process exit codes of the ``oncofed`` command."""

    OK = 0
    INTERNAL = 1
    USAGE = 2
    CONFIG = 3
    DATA = 4
    REFUSED = 5
    UNAVAILABLE = 6
    TASK_FAILED = 7
    CANCELLED = 8
    DENIED = 9
    INTERRUPTED = 130


class Hole(str):
    """A blank in a suggested value, for the researcher to fill in: ``Hole("lo")``.

    Written as its label in Python (``bounds={'age': (lo, hi)}``) and as ``cli``
    (default: the label) on the command line. A ``str``, so it can be a key too.
    """

    cli: str

    def __new__(cls, label: str, cli: str | None = None) -> Hole:
        hole = super().__new__(cls, label)
        hole.cli = label if cli is None else cli
        return hole

    @classmethod
    def items(cls) -> list[Hole]:
        """Some list: ``[...]`` in Python, ``A,B,...`` on the command line."""
        return [cls("...", cli="A,B,...")]


_HOLE = "\x00"  # a hole's mark in the marker's JSON, where it is text like any string
_MARKER = re.compile("\u27e6([^\u27e7]*)\u27e7")  # ⟦...⟧: ensure_ascii JSON never holds ⟧
_BARE = object()


class Param:
    """A request parameter a fix suggests, named once; each interface writes it its own way.

    ``Param("grid", 30)`` is ``grid=30`` in Python and ``--grid 30`` on the
    command line; ``Param("min_nodes")`` names the parameter alone
    (``min_nodes``, ``--min-nodes``). In an f-string it becomes a marker,
    text that crosses processes inside the error and that ``render`` replaces.
    ``python`` is how a Python caller writes it; ``value`` is as JSON has it
    (tuples as lists, holes as marked text: ``hole_label``).
    """

    __slots__ = ("has_value", "name", "python", "value")

    def __init__(self, name: str, value: Any = _BARE) -> None:
        self.name = name
        self.has_value = value is not _BARE
        self.value: Any = _plain(value) if self.has_value else None
        # Written here, where tuples are still tuples: JSON keeps only lists.
        self.python = f"{name}={_python(value)}" if self.has_value else name

    def __str__(self) -> str:
        fields: dict[str, Any] = {"name": self.name, "python": self.python}
        if self.has_value:
            fields["value"] = self.value
        return "\u27e6" + json.dumps(fields, ensure_ascii=True, separators=(",", ":")) + "\u27e7"

    def __repr__(self) -> str:
        return f"Param({self.python})"

    @classmethod
    def parse(cls, marker: str) -> Param | None:
        """The parameter a marker's text holds (None for text that is not one)."""
        try:
            fields = json.loads(marker)
            param = cls.__new__(cls)
            param.name, param.python = str(fields["name"]), str(fields["python"])
        except (ValueError, TypeError, KeyError):
            return None
        param.has_value = "value" in fields
        param.value = fields.get("value")
        return param


ParamWriter = Callable[[Param], str]
"""How one interface writes a suggested parameter."""


def python_syntax(param: Param) -> str:
    """A suggested parameter as a keyword argument: what ``str(error)`` and ``.fix`` show."""
    return param.python


def render(text: str, write: ParamWriter = python_syntax) -> str:
    """``text`` with every ``Param`` marker written by ``write``."""

    def replace(match: re.Match[str]) -> str:
        param = Param.parse(match.group(1))
        return match.group(0) if param is None else write(param)

    return _MARKER.sub(replace, text)


def hole_label(value: Any, *, cli: bool = False) -> str | None:
    """The label of a hole in a ``Param.value`` (None for any other value)."""
    if not (isinstance(value, str) and value.startswith(_HOLE)):
        return None
    label, _, written = value[1:].partition(_HOLE)
    return written if cli else label


def _plain(value: Any) -> Any:
    if isinstance(value, Hole):
        return f"{_HOLE}{value}{_HOLE}{value.cli}"
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    return value


def _python(value: Any) -> str:
    """``value`` as Python source: repr, but holes as their labels and whole floats short."""
    if isinstance(value, Hole):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(map(_python, value)) + "]"
    if isinstance(value, tuple):
        return "(" + ", ".join(map(_python, value)) + ("," if len(value) == 1 else "") + ")"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{_python(k)}: {_python(v)}" for k, v in value.items()) + "}"
    return number_text(value) if isinstance(value, float) else repr(value)


def number_text(value: float) -> str:
    """A float as a fix writes it: ``30`` rather than ``30.0``, else Python's shortest repr."""
    return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)


class OncofedError(Exception):
    """Base of every error oncofed raises on purpose.

    ``detail`` and ``fix`` read as Python; ``raw_detail`` and ``raw_fix`` keep
    the ``Param`` markers, for ``one_line`` to write in another interface's syntax.
    """

    exit_code: ClassVar[ExitCode] = ExitCode.INTERNAL

    def __init__(
        self,
        detail: str,
        *,
        rule: str = "",
        node: str = "",
        fix: str = "",
        **context: Any,
    ) -> None:
        self.raw_detail = detail
        self.rule = rule
        self.node = node
        self.raw_fix = fix
        self.context = {k: v for k, v in context.items() if v is not None}
        super().__init__(self.one_line())

    @property
    def detail(self) -> str:
        return render(self.raw_detail)

    @property
    def fix(self) -> str:
        return render(self.raw_fix)

    def params(self) -> list[Param]:
        """The parameters the error suggests, in its detail or its fix."""
        found = (Param.parse(m) for m in _MARKER.findall(self.raw_detail + self.raw_fix))
        return [param for param in found if param is not None]

    def one_line(self, write: ParamWriter = python_syntax) -> str:
        """Render as the single line the CLI prints, parameters written by ``write``."""
        where = f"[{self.node}] " if self.node else ""
        rule = f" (rule: {self.rule})" if self.rule else ""
        fix = f" Fix: {self.raw_fix}" if self.raw_fix else ""
        return render(f"{where}{self.raw_detail}{rule}.{fix}", write)

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": type(self).__name__,
            "detail": self.raw_detail,
            "rule": self.rule,
            "node": self.node,
            "fix": self.raw_fix,
            "context": self.context,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @staticmethod
    def from_dict(data: dict[str, Any]) -> OncofedError:
        """Rebuild an error sent by another process, keeping its class."""
        cls = _REGISTRY.get(str(data.get("type", "")), OncofedError)
        return cls(
            str(data.get("detail", "unknown error")),
            rule=str(data.get("rule", "")),
            node=str(data.get("node", "")),
            fix=str(data.get("fix", "")),
            **dict(data.get("context") or {}),
        )

    @staticmethod
    def from_json(text: str) -> OncofedError:
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            return OncofedError(text or "unknown error")
        if not isinstance(data, dict):
            return OncofedError(text)
        return OncofedError.from_dict(data)


class ConfigError(OncofedError):
    """A configuration file is missing, malformed or inconsistent."""

    exit_code = ExitCode.CONFIG


class DataError(OncofedError):
    """Local data cannot be read or does not match its declared schema."""

    exit_code = ExitCode.DATA


class QueryError(OncofedError):
    """A request names something that does not exist or is used in the wrong role."""

    exit_code = ExitCode.REFUSED


class NodeRefusal(OncofedError):
    """A node refused to run or release a task."""

    exit_code = ExitCode.REFUSED


class NodeUnavailable(OncofedError):
    """A node did not answer in time or dropped out."""

    exit_code = ExitCode.UNAVAILABLE


class CoordinatorUnavailable(OncofedError):
    """The coordinator cannot be reached."""

    exit_code = ExitCode.UNAVAILABLE


class DatabaseUnavailable(OncofedError):
    """The coordinator's database server cannot be reached (retrying may help)."""

    exit_code = ExitCode.UNAVAILABLE


class TaskFailed(OncofedError):
    """A federated task ended without a result."""

    exit_code = ExitCode.TASK_FAILED


class TaskCancelled(OncofedError):
    """A federated task was cancelled before it finished."""

    exit_code = ExitCode.CANCELLED


class UnknownTask(OncofedError):
    """The requested task type is not installed."""

    exit_code = ExitCode.REFUSED


class PermitRefused(OncofedError):
    """A node or the coordinator found no valid permit covering the task."""

    exit_code = ExitCode.REFUSED


class ApprovalPending(OncofedError):
    """A node holds the task until its operator approves it; asked again, it may go ahead."""

    exit_code = ExitCode.UNAVAILABLE


class AccessDenied(OncofedError):
    """The caller's certificate is missing, revoked, or its role may not make this call."""

    exit_code = ExitCode.DENIED


class SandboxError(OncofedError):
    """A sandbox process could not start or stopped unexpectedly."""

    exit_code = ExitCode.INTERNAL


class FederatedErrors(OncofedError):
    """Several nodes refused or failed; each error is kept."""

    exit_code = ExitCode.REFUSED

    @classmethod
    def combine(cls, errors: list[OncofedError]) -> OncofedError:
        """Merge per-node errors: the same refusal from several nodes reads as one line.

        Identical refusals (same class, rule, detail and fix) become one error of
        that class naming all their nodes; different ones become a
        ``FederatedErrors`` listing each. Every original is kept in
        ``context["errors"]``.
        """
        groups: dict[tuple[str, str, str, str], list[OncofedError]] = {}
        for error in errors:
            key = (type(error).__name__, error.rule, error.raw_detail, error.raw_fix)
            groups.setdefault(key, []).append(error)
        originals = [e.to_dict() for e in errors]
        merged = [
            type(same[0])(
                same[0].raw_detail,
                rule=same[0].rule,
                node=", ".join(sorted({e.node for e in same if e.node})),
                fix=same[0].raw_fix,
                **{**same[0].context, "errors": originals},
            )
            for same in groups.values()
        ]
        if len(merged) == 1:
            return merged[0]
        # The count heads what follows: repeats (a node refusing every round) are merged.
        distinct = "" if len(merged) == len(errors) else f" ({len(merged)} distinct)"
        return cls(
            f"{len(errors)} refusals or failures{distinct}: "
            # Markers stay markers (str), for the reader's interface to write.
            + "; ".join(e.one_line(str) for e in merged),
            rule=",".join(sorted({e.rule for e in errors if e.rule})),
            errors=originals,
        )


_REGISTRY: dict[str, type[OncofedError]] = {
    cls.__name__: cls
    for cls in (
        OncofedError,
        ConfigError,
        DataError,
        QueryError,
        NodeRefusal,
        NodeUnavailable,
        CoordinatorUnavailable,
        DatabaseUnavailable,
        TaskFailed,
        TaskCancelled,
        UnknownTask,
        PermitRefused,
        ApprovalPending,
        AccessDenied,
        SandboxError,
        FederatedErrors,
    )
}


def format_validation_error(exc: ValidationError) -> str:
    """pydantic's errors as one line: ``location: message; ...``."""
    parts = []
    for err in exc.errors():
        location = ".".join(str(p) for p in err["loc"]) or "(top level)"
        parts.append(f"{location}: {err['msg']}")
    return "; ".join(parts)


__all__ = [
    "AccessDenied",
    "ApprovalPending",
    "ConfigError",
    "CoordinatorUnavailable",
    "DataError",
    "DatabaseUnavailable",
    "ExitCode",
    "FederatedErrors",
    "Hole",
    "NodeRefusal",
    "NodeUnavailable",
    "OncofedError",
    "Param",
    "ParamWriter",
    "PermitRefused",
    "QueryError",
    "SandboxError",
    "TaskCancelled",
    "TaskFailed",
    "UnknownTask",
    "format_validation_error",
    "hole_label",
    "number_text",
    "python_syntax",
    "render",
]
