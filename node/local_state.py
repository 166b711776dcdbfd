"""What a node's operator reads of the node's data and state folder, from its config.

The ``oncofed node`` and ``oncofed audit`` commands and the operator's console
show the same facts, so both get them here: each dataset's columns as read,
the privacy budgets in the ledger, the audit trail with the key its
checkpoints are signed with, and the operator's decisions on tasks waiting
for approval. None of it needs the node process to run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from oncofed.kernel.errors import ConfigError
from oncofed.node.config import DatasetConfig, NodeConfig
from oncofed.node.data import read_dataset
from oncofed.node.governance_state import Approval, GovernanceState

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from oncofed.governance.audit import AuditTrail
    from oncofed.privacy.ledger import BudgetRow

BudgetBy = Literal["permit", "researcher"]


@dataclass(frozen=True)
class ColumnFacts:
    name: str
    type: str
    missing: int
    categories: tuple[str, ...]


@dataclass(frozen=True)
class DatasetFacts:
    """One dataset as the node reads it: its file, its rows, and each declared column."""

    name: str
    path: Path
    rows: int
    columns: tuple[ColumnFacts, ...]


def dataset_facts(name: str, dataset: DatasetConfig, node: str) -> DatasetFacts:
    """Read the dataset as the node does (a DataError says what is wrong with it)."""
    frame = read_dataset(name, dataset, node)
    return DatasetFacts(
        name=name,
        path=dataset.path,
        rows=len(frame),
        columns=tuple(
            ColumnFacts(
                name=column,
                type=spec.type,
                missing=int(frame[column].isna().sum()),
                categories=spec.categories or (),
            )
            for column, spec in dataset.columns.items()
        ),
    )


def budget_rows(config: NodeConfig, by: BudgetBy) -> list[BudgetRow] | None:
    """Privacy spent and remaining per permit (or researcher) and dataset; None before the
    node's first differentially private release (no ledger, and none is created here)."""
    from oncofed.privacy.ledger import LEDGER_FILE, PrivacyLedger

    if not (config.state_dir / LEDGER_FILE).exists():
        return None
    ledger = PrivacyLedger.at(config.state_dir, config.name)
    try:
        privacy = {name: config.policy.privacy_for(name) for name in config.datasets}
        return ledger.summary(privacy) if by == "permit" else ledger.lifetimes(privacy)
    finally:
        ledger.close()


def node_audit_trail(config: NodeConfig) -> tuple[AuditTrail, Ed25519PublicKey]:
    """The node's audit trail (read only) and the public key of its signed checkpoints."""
    from oncofed.governance.audit import AuditTrail
    from oncofed.node.identity import load_or_create_identity
    from oncofed.node.runner import AUDIT_FILE

    path = config.state_dir / AUDIT_FILE
    if not path.exists():
        raise ConfigError(
            f"node {config.name} has no audit trail at {path}",
            rule="audit.file",
            node=config.name,
            fix="the node starts its trail when it starts; check state_dir in the config",
        )
    key = load_or_create_identity(config.state_dir).public_key()
    return AuditTrail.open_sqlite(path, create=False), key


def decide_approval(
    state: GovernanceState,
    node: str,
    run_id: int,
    decision: Literal["approved", "rejected"],
    reason: str,
    *,
    listing: str,
) -> Approval:
    """Record the operator's decision on a waiting task; ``listing`` says where the
    operator sees the waiting ones (in the fix of a refusal)."""
    if decision == "rejected" and not reason.strip():
        raise ConfigError(
            f"rejecting run {run_id} needs a reason",
            rule="node.approval",
            node=node,
            fix="give the reason the researcher will read, e.g. 'not before the ethics review'",
        )
    if not state.decide(run_id, decision, reason.strip()):
        known = state.approval(run_id)
        detail = (
            f"no task of run {run_id} waits for approval at this node"
            if known is None
            else f"run {run_id} was already {known.state}"
        )
        raise ConfigError(detail, rule="node.approval", node=node, fix=f"see {listing}")
    decided = state.approval(run_id)
    assert decided is not None, "a decided approval stays in the state file"
    return decided


__all__ = [
    "BudgetBy",
    "ColumnFacts",
    "DatasetFacts",
    "budget_rows",
    "dataset_facts",
    "decide_approval",
    "node_audit_trail",
]
