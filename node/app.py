"""The node's ClientApp: installed task handlers behind the node's mods.

A handler returns a typed ``Release``; only what passes the release gate
(``privacy/gate.py``) becomes the reply, so no task can send a number the
gate has not seen.

The same builder serves a real node (one catalogue read from its config) and
Flower's simulation runtime (a catalogue per simulated partition), so a task's
node side is exactly the same code in both.
"""

from __future__ import annotations

import logging
from typing import Any

from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp

from oncofed.governance.audit import AuditTrail
from oncofed.kernel.errors import OncofedError, TaskFailed
from oncofed.kernel.flower import error_reply
from oncofed.node.mods import (
    CatalogueFor,
    audit_mod,
    privacy_mod,
    request_mod,
    validation_mod,
)
from oncofed.node.permits import PermitChecker
from oncofed.node.request import current_request
from oncofed.node.secure import SecureKeys, secure_mod
from oncofed.privacy.gate import check_release
from oncofed.privacy.release import Release
from oncofed.tasks import TASKS
from oncofed.tasks.base import LocalDataset, ModelHandler, NodeHandler, TaskType

log = logging.getLogger(__name__)


def build_client_app(
    catalogue_for: CatalogueFor,
    audit: AuditTrail | None = None,
    secure: SecureKeys | None = None,
    permits: PermitChecker | None = None,
) -> ClientApp:
    """The node's ClientApp. A real node passes all of audit, secure and permits;
    Flower's simulation runtime, which has no coordinator to defend against, none."""
    mods = [
        request_mod(catalogue_for, permits),
        validation_mod(catalogue_for),
        secure_mod(catalogue_for, secure, permits.state if permits is not None else None),
        privacy_mod(catalogue_for),
    ]
    if audit is not None:
        mods.insert(0, audit_mod(audit, catalogue_for))
    app = ClientApp(mods=mods)
    for task in TASKS.values():
        for action, handler in task.node_handlers.items():
            app.query(action)(_guarded(task, _ignoring_content(handler), catalogue_for))
        # Flower's strategies send "train" and "evaluate"; one installed task owns each.
        for kind, model_handler in task.model_handlers.items():
            register = app.train() if kind == "train" else app.evaluate()
            register(_guarded(task, model_handler, catalogue_for))
    return app


def _ignoring_content(handler: NodeHandler[Any]) -> ModelHandler[Any]:
    def with_content(params: Any, local: LocalDataset, _content: RecordDict) -> Release:
        return handler(params, local)

    return with_content


def _guarded(
    task: TaskType[Any, Any], handler: ModelHandler[Any], catalogue_for: CatalogueFor
) -> Any:
    def handle(message: Message, context: Context) -> Message:
        datasets = catalogue_for(context)
        request = current_request()
        params = request.params
        try:
            local = datasets.load(params.dataset)
            if params.dp is None and datasets.policy.exact_complete_records:
                local = local.complete_on(request.granted_variables(local.schema))
            release = check_release(
                handler(params, local, message.content),
                task.releases,
                task=task.name,
                node=datasets.node_name,
            )
            content = release.to_content(datasets.node_name)
        except OncofedError as exc:
            return error_reply(message, exc)
        except Exception as exc:
            # Details stay in the node's own log: an exception text can quote data.
            log.exception("task %s failed on this node", task.name)
            return error_reply(
                message,
                TaskFailed(
                    f"task {task.name!r} failed on this node ({type(exc).__name__})",
                    rule="node.handler",
                    node=datasets.node_name,
                    fix="the node operator's log has the details",
                ),
            )
        return Message(content, reply_to=message)

    return handle


__all__ = ["build_client_app"]
