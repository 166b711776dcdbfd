"""One request per task message: decoded once, verified once, then read by every mod and handler.

The request mod (``mods.py``) turns a message into a frozen ``NodeRequest`` --
the installed task, its validated parameters, how many nodes the step went
to, and the permit's grant -- and hands it inward through a context
variable. Mods and handlers read it; none decodes the message again or
writes into it, so what one mod checked is exactly what the next one uses.
The audit mod, outside the request mod, learns the request the same way.

A request also names the *step* it asks for (``step``): the action, the
parameters as validated (not as the text arrived) and whatever else the
message carries for the handler (a model's weights), but not the message id
and not the transport's own records. Under a signed task the step, with the
task's nonce, is what a release is filed under (``release_key``) and what a
secure-aggregation session is bound to: the same step sent again under any
message id is the same step, and gets the same release or a refusal, never a
fresh computation (``docs/decisions/0024-one-release-per-signed-step.md``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Message, RecordDict
from pydantic import ValidationError

from oncofed.governance.permit_check import Grant
from oncofed.kernel.errors import QueryError, UnknownTask, format_validation_error
from oncofed.kernel.flower import (
    AUTHORISATION_RECORD,
    PARAMS_RECORD,
    params_json,
    participants_of,
)
from oncofed.kernel.schema import DatasetSchema
from oncofed.privacy.secagg.records import SECAGG_RECORD
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
    step: str = ""
    """Digest of the step asked for: the action, the validated parameters and the rest of
    the content the handler reads -- never the message id (``step_digest``)."""

    @property
    def researcher(self) -> str:
        """Who asked, as the permit check verified it ("" without permits: a simulation)."""
        return self.grant.task.researcher if self.grant is not None else ""

    @property
    def signed_step(self) -> str | None:
        """The signed task's nonce and this step: one release, one secure-aggregation
        session each (None without permits: Flower's simulation has no signed tasks)."""
        if self.grant is None:
            return None
        return f"{self.grant.task.nonce}:{self.step}"

    @property
    def signed_task(self) -> str | None:
        """The signed task's nonce and the task this message is a step of: what the ledger
        adds up to hold the task to the ``dp`` its researcher signed (None without permits)."""
        if self.grant is None:
            return None
        return f"{self.grant.task.nonce}/{self.task.name}"

    @property
    def release_key(self) -> str:
        """What the ledger files this message's release under.

        Under a signed task: the task's nonce and the step, so the same step sent
        again under a new message id gets the stored release, not a fresh one. Without
        permits (Flower's simulation): the message and what it asks, so another task
        sent under the same message id never gets this reply back.
        """
        step = self.signed_step
        if step is not None:
            return step
        asked = hashlib.sha256(f"{self.action}\n{self.params_json}".encode()).hexdigest()
        return f"{self.message_id}:{asked[:32]}"

    @property
    def exact_granted(self) -> bool:
        """Whether the permit grants exact answers on the dataset (a simulation has no
        permit: the node's policy alone decides there)."""
        return self.grant is None or self.grant.dataset.release == "exact"

    def granted_variables(self, schema: DatasetSchema) -> tuple[str, ...]:
        """The columns the permit grants on the dataset: its list, or every declared one."""
        if self.grant is not None and self.grant.dataset.variables is not None:
            return self.grant.dataset.variables
        return tuple(schema.columns)

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


TRANSPORT_RECORDS = frozenset({PARAMS_RECORD, AUTHORISATION_RECORD, SECAGG_RECORD})
"""Records that carry how a step travels, not what it asks: the parameters (taken as
validated instead; Flower's strategies add the round number there), the authorisation,
and a secure-aggregation stage's keys and shares."""


def step_digest(action: str, params: TaskParams, content: RecordDict) -> str:
    """SHA-256 over what a step asks, independent of how the message spells it.

    The parameters count as validated and re-serialised (so spacing, key order or
    an explicit default in the JSON text make no new step); a model step's weights
    count by record, key, dtype, shape and values (so re-encoding the same array
    makes no new step either). ``check_content`` has refused anything else.
    """
    digest = hashlib.sha256()

    def part(*fields: str | bytes) -> None:
        for field in fields:
            data = field.encode() if isinstance(field, str) else field
            digest.update(len(data).to_bytes(8, "big"))
            digest.update(data)

    part("action", action, "params", params.model_dump_json())
    for name in sorted(content.array_records.keys()):
        record = content.array_records[name]
        part("arrays", name)
        for key in sorted(record.keys()):
            array = np.ascontiguousarray(record[key].numpy())
            part(key, array.dtype.str, repr(array.shape), array.tobytes())
    return digest.hexdigest()


def check_content(action: str, task: TaskType[Any, Any], content: RecordDict, node: str) -> None:
    """Refuse records no handler reads: a step is its parameters and, for a model step,
    one record of weights. Anything else could only make the same step look new."""
    extra = sorted(name for name in content if name not in TRANSPORT_RECORDS)
    model = action in task.model_handlers
    unread = [name for name in extra if not (model and isinstance(content[name], ArrayRecord))]
    if unread or (model and len(extra) > 1):
        raise QueryError(
            f"the message carries records this node does not read ({', '.join(extra)})",
            rule="task.content",
            node=node,
            fix="submit tasks through the oncofed coordinator",
        )


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
    check_content(action, task, message.content, node)
    return NodeRequest(
        action=action,
        task=task,
        params=params,
        params_json=text,
        participants=participants_of(message),
        message_id=message.metadata.message_id,
        run_id=message.metadata.run_id,
        step=step_digest(action, params, message.content),
    )


__all__ = [
    "TRANSPORT_RECORDS",
    "NodeRequest",
    "action_of",
    "check_content",
    "current_request",
    "decode_request",
    "handling",
    "receiving",
    "step_digest",
]
