"""What the permit check costs a node per message, against the same node without it.

Run: python bench/bench_permits.py [--rows 10000] [--repeat 200]

One node's ClientApp in this process (no network), asked the same
`describe` message again and again: once built as a real node is (audit
trail, permit check, validation, privacy), once without the permit check.
The difference is the node's own cost of zero trust: parsing the
authorisation, two Ed25519 verifications, the revocation list and the nonce
lookup in SQLite. It also prints the authorisation's size on the wire.
"""

from __future__ import annotations

import argparse
import datetime
import json
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from flwr.app import Message
from timing import median_seconds

from oncofed.client.access import revoke
from oncofed.governance.audit import AuditTrail
from oncofed.governance.envelope import Authorisation, SignedTask
from oncofed.governance.keys import Identity
from oncofed.governance.permits import DatasetGrant, Permit, Purpose, utcnow
from oncofed.kernel.flower import (
    attach_authorisation,
    install_process_identity,
    node_context,
    params_content,
    stamp,
)
from oncofed.kernel.schema import ColumnSpec
from oncofed.node.app import build_client_app
from oncofed.node.config import DatasetConfig, GovernanceConfig
from oncofed.node.data import Catalogue
from oncofed.node.governance_state import GovernanceState
from oncofed.node.permits import PermitChecker
from oncofed.privacy.ledger import PrivacyLedger
from oncofed.tasks import TASKS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=200)
    args = parser.parse_args()
    install_process_identity()
    work = Path(tempfile.mkdtemp(prefix="oncofed-bench-permits-"))
    rng = np.random.default_rng(1)
    pd.DataFrame({"age": rng.normal(60, 10, args.rows)}).to_parquet(work / "d.parquet")
    datasets = {
        "d": DatasetConfig(path=work / "d.parquet", columns={"age": ColumnSpec(type="float")})
    }

    body, ada = Identity.generate("hdab", "hdab"), Identity.generate("ada", "researcher")
    now = utcnow()
    permit = Permit(
        permit_id="bench",
        issuer=body.card,
        holder="bench",
        purposes=(Purpose.STATISTICS,),
        persons=(ada.card,),
        datasets=(DatasetGrant(dataset="d"),),
        task_types=tuple(sorted(TASKS)),
        valid_from=now - datetime.timedelta(hours=1),
        valid_until=now + datetime.timedelta(days=1),
    ).sign(body.signing)
    params = json.dumps({"dataset": "d", "columns": ["age"], "study": "bench"})
    authorisation = Authorisation(
        task=SignedTask.create(ada, "describe", params, "bench"),
        permit=permit,
        revocations=(revoke(body, work),),
    ).model_dump_json()

    governance = GovernanceConfig(trusted_bodies={"hdab": body.card.signing_key})
    checker = PermitChecker("n1", governance, datasets, GovernanceState.at(work / "state"))
    catalogue = Catalogue("n1", datasets, ledger=PrivacyLedger.at(work / "state", "n1"))
    audit = AuditTrail.open_sqlite(work / "state" / "audit.sqlite", body.signing)
    apps = {
        "with permit check": build_client_app(lambda _c: catalogue, audit, None, checker),
        "without": build_client_app(lambda _c: catalogue, audit, None, None),
    }
    context = node_context(7, 99, {})

    def ask(app: object) -> None:
        message = Message(params_content(params, participants=3), 7, "query.describe")
        stamp(message, run_id=99, message_id="m")
        attach_authorisation(message, authorisation)
        reply = app(message, context)  # type: ignore[operator]
        assert not reply.has_error(), reply.error

    seconds = {
        name: median_seconds(lambda a=app: ask(a), args.repeat, warm_up=True)
        for name, app in apps.items()
    }
    base = seconds["without"]
    print(f"describe on {args.rows} rows, median of {args.repeat} messages, same process:")
    for name, value in seconds.items():
        print(f"  {name:18s} {value * 1e3:8.2f} ms   {value / base:5.2f}x")
    print(f"  permit check adds {(seconds['with permit check'] - base) * 1e3:.2f} ms per message")
    print(f"  authorisation on every message: {len(authorisation.encode())} bytes")


if __name__ == "__main__":
    main()
