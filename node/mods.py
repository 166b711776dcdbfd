"""Flower mods the node wraps around every task handler.

Order (outermost first): audit, request, validation, secure aggregation,
privacy. The audit mod records every message and its outcome, refusals
included; the request mod decodes the message once into a ``NodeRequest``
(``request.py``) -- an installed task, valid parameters, a dataset this node
offers -- and, on a real node, has the permit checker (``permits.py``)
verify that a permit covers it; the validation mod refuses columns the node
does not declare or uses them in the wrong role, before a handler reads a
single row; the privacy mod applies the rules that hold for every task --
minimum sites, DP required, budget -- and charges the ledger before a DP
release leaves. Every mod inside the request mod reads the request it
decoded; none decodes the message again or writes into it."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import replace

from flwr.app import Context, Message

from oncofed.governance.audit import AuditTrail
from oncofed.kernel.errors import (
    ApprovalPending,
    NodeRefusal,
    OncofedError,
    QueryError,
    TaskFailed,
)
from oncofed.kernel.flower import (
    ClientAppCallable,
    Mod,
    authorisation_json,
    content_from_bytes,
    content_to_bytes,
    error_reply,
    params_json,
    reply_error,
    to_bytes,
)
from oncofed.kernel.schema import DatasetSchema
from oncofed.node.permits import PermitChecker
from oncofed.node.request import (
    NodeRequest,
    action_of,
    current_request,
    decode_request,
    handling,
    receiving,
)
from oncofed.privacy.accounting import PRIVACY_RECORD, loss_of
from oncofed.privacy.disclosure import check_factor_levels, check_participants
from oncofed.privacy.ledger import (
    TaskBudget,
    budget_exhausted,
    lifetime_exhausted,
    task_budget_exhausted,
)
from oncofed.privacy.policy import DatasetPrivacy, NodePolicy
from oncofed.tasks import TASKS
from oncofed.tasks.base import LocalDatasets, TaskParams

log = logging.getLogger(__name__)

CatalogueFor = Callable[[Context], LocalDatasets]


def request_mod(catalogue_for: CatalogueFor, checker: PermitChecker | None = None) -> Mod:
    """Decode the message once and, where the node checks permits, verify it once.

    ``checker`` is None only on Flower's simulation runtime, which has no
    coordinator to defend against.
    """

    def mod(message: Message, context: Context, call_next: ClientAppCallable) -> Message:
        datasets = catalogue_for(context)
        try:
            request = decode_request(message, datasets.node_name)
            offered_schema(request.params.dataset, datasets)
            if checker is not None:
                request = replace(request, grant=checker.authorise(message, request))
        except OncofedError as exc:
            return error_reply(message, exc)
        with handling(request):
            return call_next(message, context)

    return mod


def offered_schema(dataset: str, datasets: LocalDatasets) -> DatasetSchema:
    schema = datasets.schema(dataset)
    if schema is None:
        raise QueryError(
            f"dataset {dataset!r} is not offered by this node",
            rule="node.dataset_offered",
            node=datasets.node_name,
            fix="ask the network operator which datasets each node offers",
        )
    return schema


def check_against_schema(params: TaskParams, datasets: LocalDatasets) -> None:
    node = datasets.node_name
    schema = offered_schema(params.dataset, datasets)
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
    declared = params.declared_levels()
    for column, role in params.required_columns().items():
        if role in ("group", "factor"):
            levels = declared.get(column) or schema.columns[column].categories or ()
            check_factor_levels(column, levels, datasets.policy, node)
    params.check_schema(schema, node)


def validation_mod(catalogue_for: CatalogueFor) -> Mod:
    def mod(message: Message, context: Context, call_next: ClientAppCallable) -> Message:
        datasets = catalogue_for(context)
        try:
            check_against_schema(current_request().params, datasets)
        except OncofedError as exc:
            return error_reply(message, exc)
        return call_next(message, context)

    return mod


FAILPOINT = "ONCOFED_FAILPOINT"
"""Crash tests: ``before-ledger-charge`` makes the node exit once a DP reply is computed
but not yet charged (a node dying mid-round), ``after-ledger-charge`` between the
durable charge and the reply."""


def _failpoint(name: str) -> None:
    if os.environ.get(FAILPOINT) == name:
        os._exit(137)


def privacy_mod(catalogue_for: CatalogueFor) -> Mod:
    """Rules for every task, and the charge of every DP release before it leaves.

    Runs after validation, so the parameters are known to be valid. A step
    the ledger has already charged (the same signed task, action and parameters,
    under any message id: ``NodeRequest.release_key``) gets its stored reply back
    without running the handler: the same release again, never a fresh sample.
    All the steps of one signed task together cost at most the ``dp`` it signed
    (``task_budget_of``).
    """

    def mod(message: Message, context: Context, call_next: ClientAppCallable) -> Message:
        datasets = catalogue_for(context)
        node, ledger = datasets.node_name, datasets.ledger
        request = current_request()
        params, action, release_key = request.params, request.action, request.release_key
        stored = ledger.stored_reply(release_key)
        if stored is not None:
            return Message(content_from_bytes(stored), reply_to=message)
        privacy = privacy_under_permit(datasets.policy, request)
        exact = privacy.allow_exact and request.exact_granted
        task_budget = task_budget_of(request)
        try:
            check_participants(request.participants, datasets.policy, node)
            if params.dp is None and not exact:
                raise _dp_required(params.dataset, node)
            asked = params.release_loss()
            if asked is not None:
                _check_release_size(params, asked.epsilon(privacy.delta), privacy, node)
                budget = ledger.budget(params.study, params.dataset, privacy)
                if not budget.allows(asked):
                    raise budget_exhausted(
                        budget, asked, study=params.study, dataset=params.dataset, node=node
                    )
                if request.researcher:
                    lifetime = ledger.lifetime(request.researcher, params.dataset, privacy)
                    if not lifetime.allows(asked):
                        raise lifetime_exhausted(
                            lifetime,
                            asked,
                            researcher=request.researcher,
                            dataset=params.dataset,
                            node=node,
                        )
                if task_budget is not None:
                    spent = ledger.task_spent(task_budget.key)
                    if not task_budget.allows(spent, asked):
                        raise task_budget_exhausted(task_budget, spent, asked, node=node)
        except OncofedError as exc:
            return error_reply(message, exc)
        reply = call_next(message, context)
        if reply.has_error():
            return reply  # refused or failed: nothing left the node, nothing is charged
        loss = loss_of(reply.content)
        try:
            if loss is None:
                if (params.dp is not None or not exact) and params.reads_rows(action):
                    raise _no_dp_mechanism(action, params.dataset, node)
                return reply
            _check_release_size(params, loss.epsilon(privacy.delta), privacy, node)
            _failpoint("before-ledger-charge")
            record = reply.content.config_records[PRIVACY_RECORD]
            on_record = ledger.charge(
                message_id=release_key,
                study=params.study,
                dataset=params.dataset,
                task=action,
                mechanism=str(record["mechanism"]),
                loss=loss,
                privacy=privacy,
                reply=content_to_bytes(reply.content),
                researcher=request.researcher,
                task_budget=task_budget,
            )
        except OncofedError as exc:
            return error_reply(message, exc)
        _failpoint("after-ledger-charge")
        return Message(content_from_bytes(on_record), reply_to=message)

    return mod


def task_budget_of(request: NodeRequest) -> TaskBudget | None:
    """What all the steps of the request's signed task may cost together at this node.

    The ``dp`` the researcher signed is the loss of the whole task at each node
    (a GLM or Cox fit splits it over its Newton steps, DP-SGD over its rounds), and
    the permit check has made sure the message's ``dp`` is the signed one. None
    without a signed task (Flower's simulation) or without ``dp`` (nothing is
    charged then).
    """
    key, dp = request.signed_task, request.params.dp
    if key is None or dp is None:
        return None
    return TaskBudget(key=key, epsilon=dp.epsilon, delta=dp.delta)


def privacy_under_permit(policy: NodePolicy, request: NodeRequest) -> DatasetPrivacy:
    """The node's DP settings for the request's dataset, the budget capped by the permit's grant."""
    privacy = policy.privacy_for(request.params.dataset)
    cap = request.epsilon_cap
    if cap is None or cap >= privacy.epsilon:
        return privacy
    return privacy.model_copy(
        update={
            "epsilon": cap,
            "max_epsilon_per_release": min(privacy.max_epsilon_per_release, cap),
        }
    )


def _claimed(message: Message) -> dict[str, str]:
    """Who asked, under which permit and of which dataset, as the message claims it.

    Only for a message refused before it was decoded and verified: the audit
    trail records it too, reading the claim without trusting it.
    """
    fields: dict[str, str] = {"actor": "", "permit_id": "", "dataset": ""}
    text = authorisation_json(message)
    if text is not None:
        try:
            task = json.loads(text)["task"]["task"]
            fields["actor"] = str(task["researcher"])[:256]
            fields["permit_id"] = str(task["permit_id"])[:128]
        except (ValueError, KeyError, TypeError):
            pass
    try:
        request = json.loads(params_json(message))
        fields["dataset"] = str(request.get("dataset", ""))[:128]
    except (KeyError, ValueError, AttributeError):
        pass
    return fields


def _check_release_size(
    params: TaskParams, epsilon: float, privacy: DatasetPrivacy, node: str
) -> None:
    if epsilon > privacy.max_epsilon_per_release * (1 + 1e-9):
        # The request knows how its dp maps to one release's loss, so it says what fits.
        raise params.release_too_large(epsilon, privacy, node)


def _dp_required(dataset: str, node: str) -> NodeRefusal:
    return NodeRefusal(
        f"dataset {dataset!r} is released only with differential privacy at this node "
        "(its policy does not allow exact answers)",
        rule="privacy.dp_required",
        node=node,
        fix='ask with dp={"epsilon": 0.5} (Python) or --dp epsilon=0.5 (oncofed query); '
        "exact answers need the operator's allow_exact for the dataset",
    )


def _no_dp_mechanism(task: str, dataset: str, node: str) -> NodeRefusal:
    return NodeRefusal(
        f"task {task!r} has no differentially private release, and dataset {dataset!r} "
        "needs one here (or the request asked for dp)",
        rule="privacy.dp_unsupported",
        node=node,
        fix="use a task with a DP mechanism ("
        + ", ".join(name for name, kind in TASKS.items() if kind.params.DP)
        + "), or drop dp= where the permit and the node allow exact answers",
    )


def audit_mod(audit: AuditTrail, catalogue_for: CatalogueFor) -> Mod:
    """Record every message and its outcome before the reply leaves, refusals included.

    A failure inside the other mods is recorded too, and answered as the
    node's own failure without its details (they stay in the node's log).
    """

    def mod(message: Message, context: Context, call_next: ClientAppCallable) -> Message:
        with receiving() as decoded:
            try:
                reply = call_next(message, context)
            except Exception as exc:
                log.exception("%s failed at this node", message.metadata.message_type)
                reply = error_reply(
                    message,
                    TaskFailed(
                        f"the node could not handle the message ({type(exc).__name__})",
                        rule="node.client_app",
                        node=catalogue_for(context).node_name,
                        fix="the node operator's log has the details",
                    ),
                )
        request = decoded[0] if decoded else None
        if request is None:
            # Refused before it was understood: the message's own claim is all there is.
            fields, text, action = _claimed(message), _raw_params(message), action_of(message)
        else:
            fields, text, action = _verified(request), request.params_json, request.action
        outcome, rule, size, epsilon = "released", "", 0, 0.0
        if reply.has_error():
            error = reply_error(reply)
            if isinstance(error, ApprovalPending) and not error.context.get("first"):
                # The coordinator asks again until the operator decides; the first ask
                # is recorded, the repeats release nothing and would only fill the trail.
                return reply
            outcome, rule = type(error).__name__, error.rule
        else:
            size = len(to_bytes(reply))
            privacy = reply.content.config_records.get(PRIVACY_RECORD)
            epsilon = float(str(privacy["epsilon"])) if privacy is not None else 0.0
        audit.append(
            **fields,
            action=action,
            params_sha256=hashlib.sha256(text.encode()).hexdigest(),
            outcome=outcome,
            rule=rule,
            released_bytes=size,
            epsilon=epsilon,
            run_id=message.metadata.run_id,
            message_id=message.metadata.message_id,
            params=text,
        )
        return reply

    return mod


def _verified(request: NodeRequest) -> dict[str, str]:
    """Who asked, under which permit and of which dataset, as the permit check found it."""
    grant = request.grant
    return {
        "actor": grant.task.researcher if grant is not None else "",
        "permit_id": grant.permit.permit_id if grant is not None else "",
        "dataset": request.params.dataset,
    }


def _raw_params(message: Message) -> str:
    try:
        return params_json(message)
    except KeyError:
        return ""


__all__ = [
    "FAILPOINT",
    "CatalogueFor",
    "audit_mod",
    "check_against_schema",
    "offered_schema",
    "privacy_mod",
    "privacy_under_permit",
    "request_mod",
    "task_budget_of",
    "validation_mod",
]
