"""The node side of secure aggregation: a Flower mod that runs the four stages.

A task message that carries the ``oncofed.secagg`` record is one stage of a
masked sum (the ``oncofed.privacy.secagg`` docstring walks through them).
Only the ``mask`` stage runs the task's handler -- through the privacy mod, so
disclosure control, DP noise and the ledger charge happen exactly as for a
plain reply -- and then sends the reply's numbers masked. The other stages exchange keys and shares.
Session state lives in memory: a node that restarts mid-session has dropped
out of it, which the protocol tolerates.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict

from oncofed.kernel.errors import OncofedError
from oncofed.kernel.flower import ClientAppCallable, Mod, error_reply
from oncofed.node.request import current_request
from oncofed.privacy.disclosure import check_participants
from oncofed.privacy.secagg import SecAggError, SecAggNode
from oncofed.privacy.secagg.records import MASKED_RECORD, SECAGG_RECORD, flatten
from oncofed.tasks.base import LocalDatasets


class _Sessions:
    """Live sessions in this process; a copy (Flower simulation pickles apps) starts empty."""

    def __init__(self) -> None:
        self.by_id: dict[str, SecAggNode] = {}
        self.lock = threading.Lock()

    def __reduce__(self) -> tuple[type[_Sessions], tuple[()]]:
        return (_Sessions, ())


@dataclass(frozen=True)
class SecureKeys:
    """The node's identity key and its peers' pinned public keys."""

    identity: Ed25519PrivateKey
    peers: Mapping[str, Ed25519PublicKey]


def secure_mod(catalogue_for: Callable[[Context], LocalDatasets], keys: SecureKeys | None) -> Mod:
    """``keys`` is None when the node has no [secure_aggregation] section."""
    state = _Sessions()

    def mod(message: Message, context: Context, call_next: ClientAppCallable) -> Message:
        record = message.content.config_records.get(SECAGG_RECORD)
        datasets = catalogue_for(context)
        node_name = datasets.node_name
        if record is None:
            # A coordinator must not strip the masking a researcher signed for: a request
            # with secure_aggregation reads rows only inside the mask stage.
            request = current_request()
            if request.params.secure_aggregation and request.params.reads_rows(request.action):
                return error_reply(
                    message,
                    SecAggError(
                        "the request asks for secure aggregation but this message is not a "
                        "masking stage",
                        rule="secagg.required",
                        node=node_name,
                        fix="the coordinator must run the secure-aggregation stages",
                    ),
                )
            return call_next(message, context)
        try:
            if keys is None:
                raise SecAggError(
                    "this node is not configured for secure aggregation",
                    rule="secagg.not_configured",
                    node=node_name,
                    fix="the node operator adds a [secure_aggregation] section with peer keys",
                )
            stage = str(record["stage"])
            session = str(record["session"])
            if stage == "advertise":
                with state.lock:
                    if session in state.by_id:
                        raise SecAggError(
                            "this session already started",
                            rule="secagg.replay",
                            node=node_name,
                            fix="start a new session",
                        )
                    threshold = int(str(record["threshold"]))
                    node = SecAggNode(node_name, keys.identity, keys.peers, session, threshold)
                    state.by_id[session] = node
                return _reply(message, {"advert": node.advertise()})
            node = _session(state, session, node_name)
            if stage == "share":
                sealed = node.share(_prefixed(record, "advert."))
                # Signed adverts are the count a coordinator cannot inflate.
                check_participants(len(node.participants), datasets.policy, node_name)
                return _reply(message, {f"share.{peer}": box for peer, box in sealed.items()})
            if stage == "mask":
                reply = call_next(message, context)
                if reply.has_error():
                    return reply
                vector, layout, clear = flatten(reply.content, len(node.participants))
                masked = node.mask(_prefixed(record, "inbox."), vector)
                clear[MASKED_RECORD] = ArrayRecord({"vector": Array(masked)})
                clear[SECAGG_RECORD] = ConfigRecord({"layout": layout})
                return Message(clear, reply_to=message)
            if stage == "unmask":
                survivors = json.loads(str(record["survivors"]))
                with state.lock:
                    state.by_id.pop(session, None)
                return _reply(message, {"reveal": node.unmask(survivors)})
            raise SecAggError(
                f"unknown secure-aggregation stage {stage!r}",
                rule="secagg.stage",
                node=node_name,
                fix="submit tasks through the oncofed coordinator",
            )
        except OncofedError as exc:
            return error_reply(message, exc)

    return mod


def _session(state: _Sessions, session: str, node: str) -> SecAggNode:
    with state.lock:
        found = state.by_id.get(session)
    if found is None:
        raise SecAggError(
            "no such secure-aggregation session at this node (it may have restarted)",
            rule="secagg.session",
            node=node,
            fix="run the task again",
        )
    return found


def _prefixed(record: ConfigRecord, prefix: str) -> dict[str, bytes]:
    return {
        key.removeprefix(prefix): value
        for key, value in record.items()
        if key.startswith(prefix) and isinstance(value, bytes)
    }


def _reply(message: Message, values: Mapping[str, bytes]) -> Message:
    return Message(RecordDict({SECAGG_RECORD: ConfigRecord(dict(values))}), reply_to=message)


__all__ = ["SecureKeys", "secure_mod"]
