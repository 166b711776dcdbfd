"""One request per task message: decoded once, verified once, then read by every mod and handler.

The request mod (``mods.py``) turns a message into a frozen ``NodeRequest`` --
the installed task, its validated parameters, how many nodes the step went
to, and the permit's grant -- and hands it inward through a context
variable. Mods and handlers read it; none decodes the message again or
writes into it, so what one mod checked is exactly what the next one uses.
The audit mod, outside the request mod, learns the request the same way.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from flwr.app import Message
from pydantic import ValidationError

from oncofed.governance.permit_check import Grant
from oncofed.kernel.errors import QueryError, UnknownTask, format_validation_error
from oncofed.kernel.flower import params_json, participants_of
from oncofed.tasks import TASKS, task_for_action
from oncofed.tasks.base import TaskParams, TaskType


@dataclass(frozen=True)
class NodeRequest:
    """A task message as this node understood and verified it."""

    action: str
    """``describe`` for ``query.describe``; Flower's ``train`` / ``evaluate`` as they are."""
    task: TaskType[Any, Any]
    params: TaskParams
    params_json: str
    """The parameters as they arrived, for the audit trail's digest."""
    participants: int
    """How many nodes the server says it sent this step to."""
    message_id: str
    run_id: int
    grant: Grant | None = None
    """What the permit allows; None on Flower's simulation runtime, which has no permits."""

    @property
    def researcher(self) -> str:
        """Who asked, as the permit check verified it ("" without permits: a simulation)."""
        return self.grant.task.researcher if self.grant is not None else ""

    @property
    def release_key(self) -> str:
        """What the ledger files this message's release under: the message and what it
        asks, so another task sent under the same message id never gets this reply back."""
        asked = hashlib.sha256(f"{self.action}\n{self.params_json}".encode()).hexdigest()
        return f"{self.message_id}:{asked[:32]}"

    @property
    def exact_granted(self) -> bool:
        """Whether the permit grants exact answers on the dataset (a simulation has no
        permit: the node's policy alone decides there)."""
        return self.grant is None or self.grant.dataset.release == "exact"

    @property
    def epsilon_cap(self) -> float | None:
        """The permit's privacy budget on the dataset, where it names one."""
        return self.grant.epsilon if self.grant is not None else None


_current: ContextVar[NodeRequest] = ContextVar("oncofed_node_request")
_received: ContextVar[list[NodeRequest]] = ContextVar("oncofed_node_received")


def current_request() -> NodeRequest:
    """The request being handled on this thread."""
    try:
        return _current.get()
    except LookupError:
        raise RuntimeError("no task request is being handled: the request mod runs first") from None


@contextmanager
def handling(request: NodeRequest) -> Iterator[NodeRequest]:
    """Make ``request`` the current one for everything called inside."""
    token = _current.set(request)
    seen = _received.get(None)
    if seen is not None:
        seen.append(request)
    try:
        yield request
    finally:
        _current.reset(token)


@contextmanager
def receiving() -> Iterator[list[NodeRequest]]:
    """Collect the request decoded inside (none if the message was refused before)."""
    seen: list[NodeRequest] = []
    token = _received.set(seen)
    try:
        yield seen
    finally:
        _received.reset(token)


def action_of(message: Message) -> str:
    category, _, action = message.metadata.message_type.partition(".")
    return action if category == "query" else message.metadata.message_type


def decode_request(message: Message, node: str) -> NodeRequest:
    """The message as a request of an installed task, or a typed refusal."""
    action = action_of(message)
    task = task_for_action(action)
    if task is None:
        raise UnknownTask(
            f"task {action!r} is not installed on this node",
            rule="node.task_installed",
            node=node,
            fix=f"use an installed task type: {', '.join(sorted(TASKS))}",
        )
    try:
        text = params_json(message)
    except KeyError:
        raise QueryError(
            "the message carries no task parameters",
            rule="task.params",
            node=node,
            fix="submit tasks through the oncofed coordinator",
        ) from None
    try:
        params: TaskParams = task.params.model_validate_json(text)
    except ValidationError as exc:
        raise QueryError(
            f"invalid parameters for {action!r}: {format_validation_error(exc)}",
            rule="task.params",
            node=node,
            fix="correct the request's parameters",
        ) from None
    except (RecursionError, ValueError):
        raise QueryError(
            f"the parameters for {action!r} are nested too deeply to read",
            rule="task.params",
            node=node,
            fix="write the filter or formula with fewer nested parts",
        ) from None
    return NodeRequest(
        action=action,
        task=task,
        params=params,
        params_json=text,
        participants=participants_of(message),
        message_id=message.metadata.message_id,
        run_id=message.metadata.run_id,
    )


__all__ = [
    "NodeRequest",
    "action_of",
    "current_request",
    "decode_request",
    "handling",
    "receiving",
]
