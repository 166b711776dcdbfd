"""How training replies are laid out, and their summed form for secure aggregation.

FedAvg's update is a weighted mean, sum(n_k w_k) / sum(n_k): a node that
sends n_k w_k and n_k lets the coordinator learn only the two totals, and
one summed reply with weight N is all the strategy needs (the weighted mean
of one reply is itself; FedProx and FedAdam start from the same mean). The
metrics already add up, except the training loss, which is sent as a sum too.
Each node's privacy record stays in the clear -- it states the mechanism and
the loss charged, not patients' values -- so the ε per node is still known.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from oncofed.privacy.accounting import PRIVACY_RECORD

ARRAYS = "arrays"
"""The model's weights, in messages both ways (Flower's strategies' ``arrayrecord_key``)."""
METRICS = "metrics"
SUMS = "sums"
EXAMPLES = "num-examples"
MEANS = frozenset({"train-loss"})
"""Metrics a node reports as its own mean: sent multiplied by its rows, divided back by N."""
NODE_PRIVACY = f"{PRIVACY_RECORD}/"
"""Prefix of the per-node privacy records in a summed reply (the node's name follows)."""


def to_sums(content: RecordDict, weights: bool) -> RecordDict:
    """A node's reply with every number a sum: weights and mean metrics times its rows."""
    metrics = content.metric_records[METRICS]
    rows = int(str(metrics[EXAMPLES]))
    out = RecordDict()
    if weights:
        out[ARRAYS] = ArrayRecord(
            {k: Array(v.numpy() * rows) for k, v in content.array_records[ARRAYS].items()}
        )
    sums: dict[str, Array] = {}
    for key, value in metrics.items():
        if key == EXAMPLES:
            continue
        values = np.atleast_1d(np.asarray(value))
        sums[key] = Array(values * rows if key in MEANS else values)
    out[SUMS] = ArrayRecord(sums)
    out["meta"] = ConfigRecord({**dict(content.config_records["meta"]), EXAMPLES: rows})
    if PRIVACY_RECORD in content.config_records:
        out[PRIVACY_RECORD] = content.config_records[PRIVACY_RECORD]
    return out


def from_total(total: RecordDict, weights: bool, privacy: Mapping[str, ConfigRecord]) -> RecordDict:
    """The reply a strategy expects, from the masked total of every node's ``to_sums``."""
    meta = total.config_records["meta"]
    rows = int(str(meta[EXAMPLES]))
    out = RecordDict()
    if weights:
        out[ARRAYS] = ArrayRecord(
            {k: Array(v.numpy() / max(rows, 1)) for k, v in total.array_records[ARRAYS].items()}
        )
    metrics: dict[str, int | float | list[int] | list[float]] = {EXAMPLES: rows}
    for key, array in total.array_records[SUMS].items():
        values = array.numpy()
        if key in MEANS:
            values = values / max(rows, 1)
        as_list = values.tolist()
        metrics[key] = as_list[0] if len(as_list) == 1 else as_list
    out[METRICS] = MetricRecord(metrics)  # type: ignore[arg-type]
    out["meta"] = ConfigRecord({"node": str(meta["node"])})
    for name, record in privacy.items():
        out[f"{NODE_PRIVACY}{name}"] = record
    return out


def reply_nodes(content: RecordDict) -> list[str]:
    """The nodes a reply speaks for: one, or every survivor of a secure sum."""
    return str(content.config_records["meta"]["node"]).split(", ")


def charges(content: RecordDict) -> dict[str, ConfigRecord]:
    """Each node's privacy record in a reply: a plain one, or a summed one."""
    if PRIVACY_RECORD in content.config_records:
        return {str(content.config_records["meta"]["node"]): content.config_records[PRIVACY_RECORD]}
    return {
        key.removeprefix(NODE_PRIVACY): record
        for key, record in content.config_records.items()
        if key.startswith(NODE_PRIVACY)
    }


__all__ = ["ARRAYS", "METRICS", "SUMS", "charges", "from_total", "reply_nodes", "to_sums"]
