"""Typed errors: each carries the rule that refused, the node, and the fix.

Errors cross process boundaries (node -> coordinator -> researcher) as JSON, so
a refusal raised inside a hospital reaches the researcher's terminal with the
same class, rule, node and fix. The CLI turns any of them into one readable
line and the exit code of its class (see ``docs/operators.md``).
"""

from __future__ import annotations

import json
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


class OncofedError(Exception):
    """Base of every error oncofed raises on purpose."""

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
        self.detail = detail
        self.rule = rule
        self.node = node
        self.fix = fix
        self.context = {k: v for k, v in context.items() if v is not None}
        super().__init__(self.one_line())

    def one_line(self) -> str:
        """Render as the single line the CLI prints."""
        where = f"[{self.node}] " if self.node else ""
        rule = f" (rule: {self.rule})" if self.rule else ""
        fix = f" Fix: {self.fix}" if self.fix else ""
        return f"{where}{self.detail}{rule}.{fix}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": type(self).__name__,
            "detail": self.detail,
            "rule": self.rule,
            "node": self.node,
            "fix": self.fix,
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
            key = (type(error).__name__, error.rule, error.detail, error.fix)
            groups.setdefault(key, []).append(error)
        originals = [e.to_dict() for e in errors]
        merged = [
            type(same[0])(
                same[0].detail,
                rule=same[0].rule,
                node=", ".join(sorted({e.node for e in same if e.node})),
                fix=same[0].fix,
                **{**same[0].context, "errors": originals},
            )
            for same in groups.values()
        ]
        if len(merged) == 1:
            return merged[0]
        return cls(
            f"{len(errors)} refusals or failures: " + "; ".join(f"{e.one_line()}" for e in merged),
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
    "NodeRefusal",
    "NodeUnavailable",
    "OncofedError",
    "PermitRefused",
    "QueryError",
    "SandboxError",
    "TaskCancelled",
    "TaskFailed",
    "UnknownTask",
    "format_validation_error",
]
