"""The server side of secure aggregation: four rounds, and only the total is ever decoded.

Used by ``broadcast`` when a request sets ``secure_aggregation``: it returns
the nodes' summed reply as a single entry, so a task's server function that
adds up replies needs no change. ``secure_sum`` runs the stages over any
``Exchange``; training uses it to mask the messages a Flower strategy sends.
Per-node numbers never reach the coordinator's database: only keys, sealed
shares, masked vectors and, at the end, the shares that remove the masks
from the total.

Nodes that stop answering after they shared their secrets are dropouts: the
sum is over the nodes whose masked vectors arrived, as long as more than half
of the nodes are left (the threshold). A refusal at any stage fails the task.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Callable, Mapping
from typing import NamedTuple

import numpy as np
from flwr.app import ConfigRecord, RecordDict
from flwr.serverapp import Grid

from oncofed.kernel.errors import FederatedErrors, NodeUnavailable, OncofedError, TaskFailed
from oncofed.privacy.accounting import PRIVACY_RECORD
from oncofed.privacy.secagg import Advert, SecAggServer
from oncofed.privacy.secagg.records import MASKED_RECORD, META, SECAGG_RECORD, unflatten
from oncofed.tasks.base import TaskParams
from oncofed.tasks.messaging import exchange

Value = int | str | bytes
SECURE_NODE_ID = 0
"""Key of the single summed reply (no real node has id 0)."""


Exchange = Callable[
    [list[int], Mapping[int, Mapping[str, ConfigRecord]]],
    tuple[dict[int, RecordDict], list[OncofedError]],
]
"""Sends one stage's message to each node, with the records added to it; replies and errors."""


def secure_broadcast(
    grid: Grid, action: str, params: TaskParams, node_ids: list[int], group_id: str = ""
) -> dict[int, RecordDict]:
    def send(
        ids: list[int], extra: Mapping[int, Mapping[str, ConfigRecord]]
    ) -> tuple[dict[int, RecordDict], list[OncofedError]]:
        return exchange(grid, action, params, ids, group_id, extra)

    return {SECURE_NODE_ID: secure_sum(send, node_ids).total}


class SecureSum(NamedTuple):
    total: RecordDict
    """The summed reply: text every node sent alike, the combined privacy loss."""
    privacy: dict[str, ConfigRecord]
    """Each survivor's own privacy record, by node name (it states no patient's value)."""


def secure_sum(send: Exchange, node_ids: list[int]) -> SecureSum:
    """Run the four stages through ``send``; the task's handler runs at the ``mask`` stage."""
    session = uuid.uuid4().hex
    threshold = len(node_ids) // 2 + 1
    base: dict[str, Value] = {"session": session, "threshold": threshold}

    def stage(
        name: str, ids: list[int], payload: Mapping[int, Mapping[str, Value]]
    ) -> dict[int, RecordDict]:
        extra = {
            node_id: {
                SECAGG_RECORD: ConfigRecord({"stage": name, **base, **payload.get(node_id, {})})
            }
            for node_id in ids
        }
        replies, errors = send(ids, extra)
        _raise_refusals(errors, tolerate_timeouts=name != "advertise")
        return replies

    server = SecAggServer(None, threshold, session=session)
    first = stage("advertise", node_ids, {})
    name_of = {node_id: Advert.from_bytes(_field(r, "advert")).name for node_id, r in first.items()}
    for node_id, reply in first.items():
        server.receive_advert(name_of[node_id], _field(reply, "advert"))
    relayed = {f"advert.{name}": raw for name, raw in server.adverts().items()}
    shared = stage("share", node_ids, dict.fromkeys(node_ids, relayed))
    for node_id, reply in shared.items():
        server.receive_shares(
            name_of[node_id],
            {
                key.removeprefix("share."): value
                for key, value in reply.config_records[SECAGG_RECORD].items()
                if key.startswith("share.") and isinstance(value, bytes)
            },
        )
    maskers = sorted(shared)
    inboxes: dict[int, dict[str, Value]] = {
        node_id: {
            f"inbox.{sender}": sealed for sender, sealed in server.inbox(name_of[node_id]).items()
        }
        for node_id in maskers
    }
    masked_replies = stage("mask", maskers, inboxes)
    survivors = sorted(masked_replies)
    if len(survivors) < threshold:
        raise TaskFailed(
            f"only {len(survivors)} of {len(node_ids)} nodes sent masked values; the secure sum "
            f"needs {threshold}",
            rule="secagg.too_few",
            fix="run again when more nodes are online",
        )
    for node_id in survivors:
        vector = masked_replies[node_id].array_records[MASKED_RECORD]["vector"].numpy()
        server.receive_masked(name_of[node_id], vector)
    names, _dropped = server.unmask_request()
    listed: dict[str, Value] = {"survivors": json.dumps(names)}
    reveals = stage("unmask", survivors, {node_id: listed for node_id in survivors})
    for node_id, reply in reveals.items():
        server.receive_unmask(name_of[node_id], _field(reply, "reveal"))
    summed = server.result()
    layouts = {str(masked_replies[n].config_records[SECAGG_RECORD]["layout"]) for n in survivors}
    if len(layouts) != 1:
        raise TaskFailed(
            "nodes sent replies of different shapes, which cannot be added",
            rule="secagg.layout",
            fix="make sure every node runs the same oncofed version",
        )
    clear = _clear_parts(masked_replies, survivors, names)
    total = unflatten(summed.astype(np.uint64), layouts.pop(), clear)
    privacy = {
        name_of[n]: masked_replies[n].config_records[PRIVACY_RECORD]
        for n in survivors
        if PRIVACY_RECORD in masked_replies[n].config_records
    }
    return SecureSum(total, privacy)


def _clear_parts(
    replies: Mapping[int, RecordDict], survivors: list[int], names: list[str]
) -> RecordDict:
    """The text every node sent in the clear (which must agree), and the combined privacy loss."""
    first = replies[survivors[0]]
    meta = dict(first.config_records.get(META, ConfigRecord()))
    meta["node"] = ", ".join(names)
    clear = RecordDict({META: ConfigRecord(meta)})
    records = [
        replies[n].config_records[PRIVACY_RECORD]
        for n in survivors
        if PRIVACY_RECORD in replies[n].config_records
    ]
    if records:
        # Independent noise adds: the total's noise variance is the sum of the nodes'.
        combined = dict(records[0])
        combined["epsilon"] = max(float(str(r["epsilon"])) for r in records)
        for key in combined:
            if key.startswith("scale."):
                combined[key] = math.sqrt(sum(float(str(r[key])) ** 2 for r in records))
        clear[PRIVACY_RECORD] = ConfigRecord(combined)
    return clear


def _field(reply: RecordDict, key: str) -> bytes:
    value = reply.config_records[SECAGG_RECORD][key]
    if not isinstance(value, bytes):
        raise TaskFailed(
            f"a node's {key!r} is not bytes",
            rule="secagg.reply",
            fix="make sure every node runs the same oncofed version",
        )
    return value


def _raise_refusals(errors: list[OncofedError], tolerate_timeouts: bool) -> None:
    fatal = [e for e in errors if not (tolerate_timeouts and isinstance(e, NodeUnavailable))]
    if fatal:
        raise FederatedErrors.combine(fatal)


__all__ = ["SECURE_NODE_ID", "Exchange", "SecureSum", "secure_broadcast", "secure_sum"]
