"""What a training node releases, and the reply a Flower strategy expects, made from it.

A node answers each of the task's messages with a typed release
(``oncofed.privacy.release``), which the node's release gate checks number
by number before it leaves:

- ``TrainingDesign`` (``query.design``): the encoded columns, the agreed
  factor levels and the declared bounds of the numeric features -- text
  from the node's schema, no row read.
- ``ModelUpdate`` (``train``, exact runs): the node's weights *times its
  training rows* (``Weights``), its rows (``Count``) and its mean training
  loss times its rows (``ModelStatistic``).
- ``NoisyModelUpdate`` (``train`` under DP): the node's DP-SGD weights and a
  node count of 1 (``AgreedValues``), nothing else. Its row count, its loss
  and weights scaled by its rows would all be exact functions of the rows
  (with ``where=`` on one patient's quasi-identifiers, her membership and
  values), outside the DP-SGD mechanism the privacy record accounts for; so
  under DP FedAvg weighs nodes equally and the run reports no training loss.
- ``BinaryEvaluation`` / ``SurvivalEvaluation`` (``evaluate``): held-out
  sums and counts that add up across nodes.

Why an update is released as sums, with or without secure aggregation:
FedAvg's update is a weighted mean, sum(n_k w_k) / sum(n_k). A node that
sends n_k w_k and n_k lets a secure sum reveal only the two totals, and one
summed reply with weight N is all the strategy needs (the weighted mean of
one reply is itself; FedProx and FedAdam start from the same mean). Sending
sums in a plain run too keeps one release per message and one path at the
coordinator: ``for_strategy`` divides by the rows, whether the reply is one
node's or the masked total of several, so a plain and a masked run differ
only in whether the coordinator adds the sums itself (the strategy does) or
receives them added. The information is the same as a node's weights, rows
and mean loss, which it used to send in the clear: n w and n give w back.

Each node's privacy record stays in the clear -- it states the mechanism and
the loss charged, not patients' values -- so the ε per node is still known;
the strategy's reply carries it as ``oncofed.privacy/<node>``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from oncofed.kernel.errors import TaskFailed
from oncofed.privacy.accounting import PRIVACY_RECORD
from oncofed.privacy.release import (
    META,
    RELEASE_RECORD,
    AgreedValues,
    Count,
    Counts,
    ModelStatistic,
    Release,
    Weights,
    node_of,
)

ARRAYS = "arrays"
"""The model's weights, in messages both ways (Flower's strategies' ``arrayrecord_key``)."""
METRICS = "metrics"
"""The MetricRecord of the reply a strategy reads."""
EXAMPLES = "num-examples"
"""The strategy's weight key: a node's rows."""
NODE_PRIVACY = f"{PRIVACY_RECORD}/"
"""Prefix of the per-node privacy records in a strategy's reply (the node's name follows)."""


# ---- releases -------------------------------------------------------------


class TrainingDesign(Release):
    """How a node encodes the features, from its schema alone (no row is read).

    Every part is text: the levels are the agreed category labels, the bounds
    the public ranges the schema declares. They stay text (JSON) because a
    request with ``secure_aggregation`` sends this step through the secure
    sum too, where numbers would be added across nodes.
    """

    columns: tuple[str, ...]
    """The encoded design columns, in order."""
    levels: str
    """JSON: each categorical factor's agreed levels, by column."""
    bounds: str
    """JSON: each numeric feature's declared [lo, hi] (``scaling="bounds"`` only)."""

    def agreed_levels(self) -> dict[str, tuple[str, ...]]:
        return {str(k): tuple(v) for k, v in json.loads(self.levels).items()}

    def declared_bounds(self) -> dict[str, tuple[float, ...]]:
        return {str(k): tuple(float(b) for b in v) for k, v in json.loads(self.bounds).items()}


class ModelUpdate(Release):
    """One round's local training as sums: what FedAvg's weighted mean adds up."""

    weights: Weights
    """Each layer's weights after the round, times ``rows``."""
    rows: Count
    """The node's training rows (FedAvg's weight)."""
    loss: ModelStatistic
    """The round's mean batch loss, times ``rows``."""


class NoisyModelUpdate(Release):
    """One round of DP-SGD: the weights, which depend on the rows only through DP-SGD.

    ``nodes`` is 1 (a masked total of several is their number): FedAvg's weight,
    the same for every node, so the strategy's mean is unweighted under DP.
    """

    weights: Weights
    """Each layer's weights after the round (not scaled by anything the data holds)."""
    nodes: AgreedValues
    """1, fixed by the protocol: what FedAvg weighs this update by."""


class BinaryEvaluation(Release):
    """A classifier's held-out metrics as sums and counts."""

    rows: Count
    """Held-out rows."""
    loss_sum: ModelStatistic
    """Log-loss summed over the held-out rows."""
    correct: Count
    """Correct predictions at 0.5."""
    positives: Counts
    """Positives by bin of P(label = 1) (``AUC_BINS`` bins), for the pooled AUC."""
    negatives: Counts
    """Negatives by the same bins."""


class SurvivalEvaluation(Release):
    """A survival model's held-out partial-likelihood loss and Harrell's pair counts."""

    rows: Count
    """Held-out rows."""
    loss_sum: ModelStatistic
    """Negative log partial likelihood, summed over the held-out events."""
    events: Count
    # Pair counts are statistics of the model's ranking, not counts of people: one patient
    # takes part in many pairs, so a cell rule on counts would misread them.
    concordant: ModelStatistic
    """Comparable pairs whose earlier event had the higher risk."""
    tied: ModelStatistic
    """Comparable pairs with equal risks."""
    comparable: ModelStatistic
    """Pairs of an event and a patient whose time is later (or censored at it)."""


RELEASES: tuple[type[Release], ...] = (
    TrainingDesign,
    ModelUpdate,
    NoisyModelUpdate,
    BinaryEvaluation,
    SurvivalEvaluation,
)
"""Everything the training task's node side may release."""

Evaluation = BinaryEvaluation | SurvivalEvaluation
Update = ModelUpdate | NoisyModelUpdate
_MODEL_RELEASES: dict[str, type[Update | Evaluation]] = {
    cls.wire_name(): cls
    for cls in (ModelUpdate, NoisyModelUpdate, BinaryEvaluation, SurvivalEvaluation)
}


# ---- the strategy's format -------------------------------------------------


def evaluation_metrics(release: Evaluation) -> MetricRecord:
    """Held-out sums and counts as the MetricRecord ``pooled_metrics`` reads."""
    metrics: dict[str, Any] = {EXAMPLES: int(release.rows), "loss-sum": float(release.loss_sum)}
    if isinstance(release, BinaryEvaluation):
        metrics["correct"] = int(release.correct)
        metrics["positives"] = [int(v) for v in release.positives]
        metrics["negatives"] = [int(v) for v in release.negatives]
    else:
        metrics["events"] = int(release.events)
        for key in ("concordant", "tied", "comparable"):
            # Whole numbers, sent as statistics: a masked sum of them decodes to within 1e-9.
            metrics[key] = round(float(getattr(release, key)))
    return MetricRecord(metrics)


def for_strategy(content: RecordDict, privacy: Mapping[str, ConfigRecord]) -> RecordDict:
    """The reply a strategy expects, from one node's release or the masked total of several.

    ``train``: ``arrays`` (the weights, divided by the rows) and ``metrics``
    with ``num-examples`` and the mean ``train-loss`` -- under DP the weights
    divided by the number of nodes, ``num-examples`` that number and no
    loss; ``evaluate``:
    ``metrics`` with the held-out sums. ``privacy`` is each node's own
    privacy record, by node name.
    """
    node = node_of(content)
    name = str(content.config_records[META].get("release", ""))
    kind = _MODEL_RELEASES.get(name)
    if kind is None or RELEASE_RECORD not in content.array_records:
        raise TaskFailed(
            f"a reply from {node} to a training message holds {name or 'no release'!r}, "
            "not a model update or evaluation",
            rule="training.reply",
            node=node,
            fix="make sure the coordinator and the nodes run the same oncofed version",
        )
    release = kind.from_content(content)
    out = RecordDict()
    if isinstance(release, ModelUpdate):
        rows = max(release.rows, 1)
        out[ARRAYS] = ArrayRecord(
            {key: Array(np.asarray(value) / rows) for key, value in release.weights.items()}
        )
        out[METRICS] = MetricRecord({EXAMPLES: release.rows, "train-loss": release.loss / rows})
    elif isinstance(release, NoisyModelUpdate):
        nodes = round(float(np.sum(release.nodes)))
        out[ARRAYS] = ArrayRecord(
            {
                key: Array(np.asarray(value) / max(nodes, 1))
                for key, value in release.weights.items()
            }
        )
        out[METRICS] = MetricRecord({EXAMPLES: nodes})
    else:
        out[METRICS] = evaluation_metrics(release)
    out[META] = ConfigRecord({"node": node})
    for owner, record in privacy.items():
        out[f"{NODE_PRIVACY}{owner}"] = record
    return out


def own_privacy(content: RecordDict) -> dict[str, ConfigRecord]:
    """A single node's reply's privacy record, by its node (none without DP)."""
    record = content.config_records.get(PRIVACY_RECORD)
    return {} if record is None else {node_of(content): record}


def reply_nodes(content: RecordDict) -> list[str]:
    """The nodes a reply speaks for: one, or every survivor of a secure sum."""
    return node_of(content).split(", ")


def charges(content: RecordDict) -> dict[str, ConfigRecord]:
    """Each node's privacy record in a strategy's reply (``for_strategy``), by node."""
    return {
        key.removeprefix(NODE_PRIVACY): record
        for key, record in content.config_records.items()
        if key.startswith(NODE_PRIVACY)
    }


__all__ = [
    "ARRAYS",
    "EXAMPLES",
    "METRICS",
    "RELEASES",
    "BinaryEvaluation",
    "Evaluation",
    "ModelUpdate",
    "NoisyModelUpdate",
    "SurvivalEvaluation",
    "TrainingDesign",
    "Update",
    "charges",
    "evaluation_metrics",
    "for_strategy",
    "own_privacy",
    "reply_nodes",
]
