"""A node's ClientApp built in-process as a real node builds it, for tests that play the
coordinator: real permit checker, ledger, audit trail and policy, a body and a researcher
with their own keys, and a permit the body signed."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from flwr.clientapp import ClientApp

from oncofed.client.access import revoke
from oncofed.governance.audit import AuditTrail
from oncofed.governance.keys import Identity
from oncofed.governance.permits import ReleaseMode, SignedPermit, SignedRevocations
from oncofed.kernel.flower import install_process_identity
from oncofed.node.app import build_client_app
from oncofed.node.config import DatasetConfig, GovernanceConfig
from oncofed.node.data import Catalogue
from oncofed.node.governance_state import GovernanceState
from oncofed.node.permits import PermitChecker
from oncofed.privacy.ledger import PrivacyLedger
from oncofed.privacy.policy import NodePolicy
from tests.pki import day_permit


@dataclass
class RealNode:
    app: ClientApp
    body: Identity
    researcher: Identity
    permit: SignedPermit
    revocations: tuple[SignedRevocations, ...]
    state: GovernanceState
    ledger: PrivacyLedger
    audit: AuditTrail


def real_node(
    work: Path,
    name: str,
    datasets: Mapping[str, DatasetConfig],
    policy: NodePolicy,
    *,
    permit_id: str,
    task_types: tuple[str, ...],
    release: ReleaseMode = "dp",
    cohorts: dict[str, str] | None = None,
    models_may_leave: bool = False,
) -> RealNode:
    """The node ``name`` offering ``datasets`` under ``policy``; the permit grants the first."""
    install_process_identity()
    body, researcher = Identity.generate("hdab", "hdab"), Identity.generate("ada", "researcher")
    permit = day_permit(
        body,
        researcher,
        permit_id=permit_id,
        dataset=next(iter(datasets)),
        task_types=task_types,
        release=release,
        cohorts=cohorts,
        models_may_leave=models_may_leave,
    )
    state = GovernanceState.at(work / "state")
    checker = PermitChecker(
        name,
        GovernanceConfig(trusted_bodies={"hdab": body.card.signing_key}),
        dict(datasets),
        state,
    )
    ledger = PrivacyLedger.at(work / "state", name)
    catalogue = Catalogue(name, dict(datasets), policy, ledger=ledger)
    audit = AuditTrail.open_sqlite(work / "state" / "audit.sqlite", body.signing)
    return RealNode(
        app=build_client_app(lambda _c: catalogue, audit, None, checker),
        body=body,
        researcher=researcher,
        permit=permit,
        revocations=(revoke(body, work),),
        state=state,
        ledger=ledger,
        audit=audit,
    )


__all__ = ["RealNode", "real_node"]
