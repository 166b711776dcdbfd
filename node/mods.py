"""Flower mods the node wraps around every task handler.

Order (outermost first): audit, then validation. The audit mod records every
message and its outcome, refusals included; the validation mod refuses any
request that is not an installed task, or that names a dataset or column the
node does not offer, before a handler reads a single row. The permit and
privacy mods slot in between them in the same way.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable

from flwr.app import Context, Message
from flwr.clientapp.typing import ClientAppCallable, Mod
from pydantic import ValidationError

from oncofed.errors import OncofedError, QueryError, UnknownTask
from oncofed.flower import error_reply, params_json, reply_error, to_bytes
from oncofed.node.audit import AuditLog
from oncofed.node.config import format_validation_error
from oncofed.tasks import TASKS, task_for_action
from oncofed.tasks.base import LocalDatasets, TaskParams

log = logging.getLogger(__name__)

CatalogueFor = Callable[[Context], LocalDatasets]


def action_of(message: Message) -> str:
    category, _, action = message.metadata.message_type.partition(".")
    return action if category == "query" else message.metadata.message_type


def decode_params(message: Message, node: str) -> TaskParams:
    """The validated parameters of a task message, or a typed refusal."""
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
        params: TaskParams = task.params.model_validate_json(params_json(message))
    except KeyError:
        raise QueryError(
            "the message carries no task parameters",
            rule="task.params",
            node=node,
            fix="submit tasks through the oncofed coordinator",
        ) from None
    except ValidationError as exc:
        raise QueryError(
            f"invalid parameters for {action!r}: {format_validation_error(exc)}",
            rule="task.params",
            node=node,
            fix="correct the request's parameters",
        ) from None
    return params


def check_against_schema(params: TaskParams, datasets: LocalDatasets) -> None:
    node = datasets.node_name
    schema = datasets.schema(params.dataset)
    if schema is None:
        raise QueryError(
            f"dataset {params.dataset!r} is not offered by this node",
            rule="node.dataset_offered",
            node=node,
            fix="ask the network operator which datasets each node offers",
        )
    for column, role in params.required_columns().items():
        spec = schema.columns.get(column)
        if spec is None:
            raise QueryError(
                f"column {column!r} is not in dataset {params.dataset!r}",
                rule="schema.unknown_column",
                node=node,
                fix=f"use one of the declared columns: {schema.describe_types()}",
                column=column,
            )
        if role == "numeric" and not spec.numeric:
            raise QueryError(
                f"column {column!r} is {spec.type}, but the request uses it as a number",
                rule="schema.column_role",
                node=node,
                fix="choose a float, integer or boolean column",
                column=column,
            )
        if role == "group" and not spec.groupable:
            raise QueryError(
                f"column {column!r} is {spec.type} and cannot define groups",
                rule="schema.column_role",
                node=node,
                fix="group by a category, integer, boolean or string column, "
                "or declare categories for this column in the node schema",
                column=column,
            )
    params.check_schema(schema, node)


def validation_mod(catalogue_for: CatalogueFor) -> Mod:
    def mod(message: Message, context: Context, call_next: ClientAppCallable) -> Message:
        datasets = catalogue_for(context)
        try:
            check_against_schema(decode_params(message, datasets.node_name), datasets)
        except OncofedError as exc:
            return error_reply(message, exc)
        return call_next(message, context)

    return mod


def audit_mod(audit: AuditLog) -> Mod:
    def mod(message: Message, context: Context, call_next: ClientAppCallable) -> Message:
        reply = call_next(message, context)
        try:
            request = params_json(message)
        except KeyError:
            request = ""
        outcome, rule, size = "released", "", 0
        if reply.has_error():
            error = reply_error(reply)
            outcome, rule = type(error).__name__, error.rule
        else:
            size = len(to_bytes(reply))
        audit.append(
            task_run=message.metadata.run_id,
            message_id=message.metadata.message_id,
            action=action_of(message),
            params_sha256=hashlib.sha256(request.encode()).hexdigest(),
            params=request,
            outcome=outcome,
            rule=rule,
            released_bytes=size,
        )
        return reply

    return mod


__all__ = ["CatalogueFor", "audit_mod", "check_against_schema", "decode_params", "validation_mod"]
