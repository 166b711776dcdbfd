"""The one place that touches Flower internals.

Flower's public Message API (``Message``, ``RecordDict``, ``Grid``,
``ClientApp``, ``ServerApp``) is the task contract and is used directly by
tasks. What Flower keeps internal and changes between releases -- protobuf
serde, how message ids and run ids are stamped, the process-global task
identity, the ``Run`` record -- is wrapped here so that a Flower upgrade
touches one module, guarded by ``tests/contract/test_flower_adapter.py``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

from flwr.app import ConfigRecord, Context, Error, Message, RecordDict
from flwr.clientapp.typing import ClientAppCallable, Mod
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.common.serde import (
    message_from_proto,
    message_to_proto,
    recorddict_from_proto,
    recorddict_to_proto,
)
from flwr.proto.message_pb2 import Message as ProtoMessage
from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from oncofed.kernel.errors import OncofedError

COORDINATOR_NODE_ID: int = SUPERLINK_NODE_ID
PARAMS_RECORD = "oncofed.params"
AUTHORISATION_RECORD = "oncofed.authorisation"  # signed task, permit, revocations (coordinator)
ERROR_CODE = 4711  # Flower error code for an oncofed typed error in `Error.reason`


def install_process_identity() -> None:
    """Give Flower's process-global task identity a neutral value.

    Flower stamps run and node ids from a process global when a ``Message``
    is constructed; the coordinator runs many tasks in one process, so the
    governed Grid re-stamps each message with its own task's run id on push.
    """
    TaskIdentity.run_id = 0
    TaskIdentity.node_id = COORDINATOR_NODE_ID
    TaskIdentity.task_id = 0


def stamp(message: Message, *, run_id: int, message_id: str) -> None:
    """Set the run and message ids that a SuperLink would set on push."""
    message.metadata.__dict__["_run_id"] = run_id
    message.metadata.__dict__["_message_id"] = message_id


def content_digest(message: Message) -> str:
    """SHA-256 of a message's content, stable across processes."""
    proto = recorddict_to_proto(message.content)
    return hashlib.sha256(proto.SerializeToString(deterministic=True)).hexdigest()


def to_bytes(message: Message) -> bytes:
    return bytes(message_to_proto(message).SerializeToString())


def from_bytes(payload: bytes) -> Message:
    return message_from_proto(ProtoMessage.FromString(payload))


def content_to_bytes(content: RecordDict) -> bytes:
    return bytes(recorddict_to_proto(content).SerializeToString(deterministic=True))


def content_from_bytes(payload: bytes) -> RecordDict:
    return recorddict_from_proto(ProtoRecordDict.FromString(payload))


def params_content(params_json: str, participants: int) -> RecordDict:
    """Message content carrying a task's validated parameters as JSON.

    ``participants`` is how many nodes the server sends this step to; each
    node's minimum-sites rule reads it.
    """
    return RecordDict(
        {PARAMS_RECORD: ConfigRecord({"json": params_json, "participants": participants})}
    )


def params_json(message: Message) -> str:
    record = message.content.get(PARAMS_RECORD)
    if not isinstance(record, ConfigRecord) or "json" not in record:
        raise KeyError(PARAMS_RECORD)
    return str(record["json"])


def attach_authorisation(message: Message, authorisation_json: str) -> None:
    message.content[AUTHORISATION_RECORD] = ConfigRecord({"json": authorisation_json})


def authorisation_json(message: Message) -> str | None:
    record = message.content.get(AUTHORISATION_RECORD)
    if not isinstance(record, ConfigRecord) or "json" not in record:
        return None
    return str(record["json"])


def participants_of(message: Message) -> int:
    """The number of nodes the server says it sent this step to (0 if unstated)."""
    record = message.content.get(PARAMS_RECORD)
    if not isinstance(record, ConfigRecord):
        return 0
    value = record.get("participants", 0)
    return value if isinstance(value, int) else 0


def error_reply(message: Message, error: OncofedError) -> Message:
    """A reply that carries a typed error instead of content."""
    return Message(Error(code=ERROR_CODE, reason=error.to_json()), reply_to=message)


def reply_error(reply: Message) -> OncofedError:
    """The typed error inside an error reply (foreign Flower errors included)."""
    err = reply.error
    if err.code == ERROR_CODE and err.reason:
        return OncofedError.from_json(err.reason)
    return OncofedError(f"node failed with Flower error {err.code}: {err.reason}")


def node_context(node_id: int, run_id: int, node_config: dict[str, Any]) -> Context:
    return Context(
        run_id=run_id,
        node_id=node_id,
        node_config=node_config,
        state=RecordDict(),
        run_config={},
    )


def empty_run(run_id: int) -> Run:
    return Run.create_empty(run_id)


def server_app(main: Callable[[Grid], None]) -> ServerApp:
    """A ``ServerApp`` whose main function drives the grid."""
    app = ServerApp()

    @app.main()
    def _main(grid: Grid, context: Context) -> None:
        main(grid)

    return app


def server_context(run_id: int, params: dict[str, Any] | None = None) -> Context:
    return Context(
        run_id=run_id,
        node_id=COORDINATOR_NODE_ID,
        node_config={},
        state=RecordDict(),
        run_config={"oncofed.params": json.dumps(params or {})},
    )


__all__ = [
    "AUTHORISATION_RECORD",
    "COORDINATOR_NODE_ID",
    "ERROR_CODE",
    "ClientAppCallable",
    "Mod",
    "Run",
    "attach_authorisation",
    "authorisation_json",
    "content_digest",
    "content_from_bytes",
    "content_to_bytes",
    "empty_run",
    "error_reply",
    "from_bytes",
    "install_process_identity",
    "node_context",
    "params_content",
    "params_json",
    "participants_of",
    "reply_error",
    "server_app",
    "server_context",
    "stamp",
    "to_bytes",
]
