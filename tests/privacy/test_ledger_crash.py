"""A node killed between writing its ledger charge and sending the reply.

The node exits right after the charge is durable (the failpoint), so the
reply never leaves. Restarted, it receives the same message again and must
send the release it already paid for -- not a fresh noisy sample, and not a
second charge.
"""

from __future__ import annotations

import pandas as pd
import pytest

from oncofed.client.sandbox import Sandbox
from oncofed.kernel.flower import content_from_bytes
from oncofed.node.mods import FAILPOINT
from oncofed.privacy.ledger import PrivacyLedger
from oncofed.tasks.histogram import HistogramRelease
from tests.privacy.conftest import DP_POLICY

pytestmark = pytest.mark.slow


def test_kill_between_charge_and_reply_neither_loses_nor_repeats_the_charge(
    lung_with_target: pd.DataFrame,
) -> None:
    victim = "centre-B"
    with Sandbox.from_frame(
        lung_with_target, split_by="centre", dataset="lung", policy=DP_POLICY
    ) as net:
        net.stop_node(victim)
        net.start_node(victim, env={FAILPOINT: "after-ledger-charge"})
        net.wait_for_nodes(net.node_names)
        with net.session(dataset="lung", progress=False, permit="crash") as session:
            task_id = session.submit(
                "histogram",
                dataset="lung",
                column="age",
                bins=[30, 60, 90],
                dp={"epsilon": 0.5},
            )
            assert net.wait_node_exit(victim, 60) == 137, "the node should die after its charge"

            state = net.workdir / victim / "state"
            ledger = PrivacyLedger.at(state, victim)
            (row,) = ledger.summary({"lung": DP_POLICY.privacy_for("lung")})
            assert (row.holder, row.releases) == ("crash", 1)

            net.start_node(victim)  # no failpoint: the coordinator re-sends the message
            result = session.result(task_id)

        (row,) = ledger.summary({"lung": DP_POLICY.privacy_for("lung")})
        assert row.releases == 1, "the re-sent message must not be charged again"
        # What the coordinator received from the victim is the reply stored with the charge.
        with ledger._engine.connect() as connection:
            stored = connection.exec_driver_sql("SELECT reply FROM charges").scalar_one()
        victim_counts = HistogramRelease.from_content(content_from_bytes(stored)).counts
        others = 0
        for name in net.node_names:
            if name != victim:
                other = PrivacyLedger.at(net.workdir / name / "state", name)
                with other._engine.connect() as connection:
                    reply = connection.exec_driver_sql("SELECT reply FROM charges").scalar_one()
                others = others + HistogramRelease.from_content(content_from_bytes(reply)).counts
        assert list(victim_counts + others) == result.counts
