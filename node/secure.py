"""The node side of secure aggregation: a Flower mod that runs the four stages.

A task message that carries the ``oncofed.secagg`` record is one stage of a
masked sum (the ``oncofed.privacy.secagg`` docstring walks through them).
Only the ``mask`` stage runs the task's handler -- through the privacy mod, so
disclosure control, DP noise and the ledger charge happen exactly as for a
plain reply -- and then sends the reply's numbers masked. The other stages exchange keys and shares.
Session state lives in memory: a node that restarts mid-session has dropped
out of it, which the protocol tolerates.

One session per signed step. Under a signed task each step (the task's nonce,
the action and the parameters, ``NodeRequest.signed_step``) takes part in at
most one session, and the node's state file remembers it across restarts: a
second session for the same step is refused (``secagg.session_reused``), and
the ``mask`` stage must ask for the very step its session was started for
(``secagg.step_changed``). Otherwise a coordinator could run one step twice,
once with every node and once with a node's mask message withheld (a dropout
to the protocol), and subtract the two totals to get that node's own numbers.
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
from oncofed.node.governance_state import GovernanceState
from oncofed.node.request import current_request
from oncofed.privacy.disclosure import check_participants
from oncofed.privacy.secagg import SecAggError, SecAggNode
from oncofed.privacy.secagg.records import MASKED_RECORD, SECAGG_RECORD, flatten
from oncofed.tasks.base import LocalDatasets


class _Sessions:
    """Live sessions in this process; a copy (Flower simulation pickles apps) starts empty."""

    def __init__(self) -> None:
        self.by_id: dict[str, SecAggNode] = {}
        self.steps: dict[str, str | None] = {}
        """The signed step each live session was started for (None: no signed task)."""
        self.lock = threading.Lock()

    def __reduce__(self) -> tuple[type[_Sessions], tuple[()]]:
        return (_Sessions, ())


@dataclass(frozen=True)
class SecureKeys:
    """The node's identity key and its peers' pinned public keys."""

    identity: Ed25519PrivateKey
    peers: Mapping[str, Ed25519PublicKey]


def secure_mod(
    catalogue_for: Callable[[Context], LocalDatasets],
    keys: SecureKeys | None,
    governance: GovernanceState | None = None,
) -> Mod:
    """``keys`` is None when the node has no [secure_aggregation] section; ``governance``
    (where a real node remembers its signed steps' sessions) None only on Flower's
    simulation runtime, which has no signed tasks."""
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
                    step = current_request().signed_step
                    _claim_step(governance, step, session, message.metadata.run_id, node_name)
                    state.by_id[session] = node
                    state.steps[session] = step
                return _reply(message, {"advert": node.advertise()})
            node = _session(state, session, node_name)
            if stage == "share":
                sealed = node.share(_prefixed(record, "advert."))
                # Signed adverts are the count a coordinator cannot inflate.
                check_participants(len(node.participants), datasets.policy, node_name)
                return _reply(message, {f"share.{peer}": box for peer, box in sealed.items()})
            if stage == "mask":
                with state.lock:
                    started_for = state.steps.get(session)
                if current_request().signed_step != started_for:
                    raise SecAggError(
                        "the mask stage asks for another step than the one this session "
                        "was started for",
                        rule="secagg.step_changed",
                        node=node_name,
                        fix="the coordinator must send one step through all four stages",
                    )
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
                    state.steps.pop(session, None)
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


def _claim_step(
    governance: GovernanceState | None, step: str | None, session: str, run_id: int, node: str
) -> None:
    """Bind the signed step to this session, or refuse: one session per step, ever."""
    if governance is None or step is None:
        return  # Flower's simulation: no signed task, no coordinator to defend against
    if not governance.claim_secagg_step(step, session, run_id):
        raise SecAggError(
            "this step of the signed task already took part in a secure-aggregation "
            "session at this node; a second session could subtract this node's numbers "
            "from the first one's total",
            rule="secagg.session_reused",
            node=node,
            fix="the researcher submits a new task to run the step again",
        )


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
