"""The whole story through the `oncofed` command, each actor with its own key.

A researcher files an application; the data-access body asks for a change,
approves the amended one and signs the permit offline; the researcher runs
an analysis under it; the result is sealed in the coordinator's database;
the node's audit trail exports the permit's record, and an edited row in it
is named by `oncofed audit verify`.
"""

from __future__ import annotations

import datetime
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import select

from oncofed.client.sandbox import HDAB, Sandbox
from oncofed.coordinator.db import TaskRow, open_database
from oncofed.governance.sealing import HYBRID_SUITE, open_sealed
from oncofed.kernel.errors import AccessDenied, ExitCode, PermitRefused
from tests.oracle import manual_three_centres

PERMIT = "lung-outcomes-2026"


@pytest.fixture(scope="module")
def net(lung: pd.DataFrame) -> Iterator[Sandbox]:
    with Sandbox.from_frame(lung, split_by="centre", dataset="lung", release="exact") as sandbox:
        sandbox.enrol("mallory", "researcher")
        yield sandbox


WIDE = {**os.environ, "COLUMNS": "250"}  # tables unfolded, ids whole


def cli(net: Sandbox, who: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "oncofed",
            *args,
            "-c",
            net.address,
            "--credentials",
            str(net.credentials(who)),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        env=WIDE,
    )


def offline(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "oncofed", *args],
        capture_output=True,
        text=True,
        timeout=180,
        env=WIDE,
    )


def _application(net: Sandbox, description: str) -> dict[str, object]:
    card = json.loads((net.credentials(net.researcher) / "card.json").read_text())
    today = datetime.date.today()
    return {
        "applicant": card,
        "organisation": "Example University Hospital",
        "persons": [card],
        "purposes": ["e-scientific-research"],
        "description": description,
        "datasets": [
            {"dataset": "lung", "variables": ["age", "sex", "time", "status"], "release": "exact"}
        ],
        "task_types": ["describe", "kaplan_meier"],
        "access": "anonymised",
        "period_start": str(today - datetime.timedelta(days=1)),
        "period_end": str(today + datetime.timedelta(days=365)),
    }


def test_application_to_permit_to_sealed_result(net: Sandbox, tmp_path: Path) -> None:
    application = tmp_path / "application.json"
    application.write_text(json.dumps(_application(net, "Survival of lung cancer by sex.")))
    filed = cli(net, net.researcher, "application", "submit", str(application))
    assert filed.returncode == 0, filed.stderr
    application_id = filed.stdout.split()[1]

    listing = cli(net, HDAB, "application", "list")
    assert application_id in listing.stdout and "submitted" in listing.stdout
    asked = cli(
        net,
        HDAB,
        "application",
        "request-changes",
        application_id,
        "--note",
        "state the analysis plan",
    )
    assert "changes-requested" in asked.stdout, asked.stderr
    # A researcher cannot decide applications, not even their own.
    self_approval = cli(net, net.researcher, "application", "approve", application_id)
    assert self_approval.returncode == ExitCode.DENIED
    assert "auth.role" in self_approval.stderr

    application.write_text(
        json.dumps(
            _application(
                net,
                "Survival of lung cancer by sex: Kaplan-Meier on a 30-day grid, ages described.",
            )
        )
    )
    amended = cli(
        net, net.researcher, "application", "submit", str(application), "--amends", application_id
    )
    assert amended.returncode == 0, amended.stderr
    shown = cli(net, HDAB, "application", "show", application_id)
    document = tmp_path / "reviewed.json"
    document.write_text(shown.stdout)  # stdout is the application alone; history on stderr

    draft, signed = tmp_path / "permit.json", tmp_path / "permit.signed.json"
    body = str(net.credentials(HDAB))
    made = offline(
        "permit",
        "draft",
        str(document),
        "--permit-id",
        PERMIT,
        "--application-id",
        application_id,
        "--credentials",
        body,
        "--out",
        str(draft),
    )
    assert made.returncode == 0, made.stderr
    assert (
        offline(
            "permit", "sign", str(draft), "--credentials", body, "--out", str(signed)
        ).returncode
        == 0
    )
    published = cli(net, HDAB, "permit", "publish", str(signed))
    assert published.returncode == 0, published.stderr
    record = cli(net, HDAB, "application", "show", application_id)
    assert "approved" in record.stderr and PERMIT in record.stderr

    ran = cli(
        net,
        net.researcher,
        "query",
        "describe",
        "--permit",
        PERMIT,
        "--dataset",
        "lung",
        "age",
        "--min-nodes",
        "4",
    )
    assert ran.returncode == 0, ran.stderr
    assert "228" in ran.stdout
    outside = cli(
        net, net.researcher, "query", "describe", "--permit", PERMIT, "--dataset", "lung", "wt.loss"
    )
    assert outside.returncode == ExitCode.REFUSED and "permit.variables" in outside.stderr
    stranger = cli(
        net, "mallory", "query", "describe", "--permit", PERMIT, "--dataset", "lung", "age"
    )
    assert stranger.returncode == ExitCode.REFUSED and "permit.person" in stranger.stderr

    engine = open_database(net.database_url)
    with engine.connect() as db:
        row = db.execute(
            select(TaskRow.task_id, TaskRow.result).where(
                TaskRow.permit_id == PERMIT, TaskRow.state == "succeeded"
            )
        ).one()
    # A dump of the coordinator's database shows ciphertext only (searched outside the
    # base64 blobs, which spell any three letters now and then) ...
    sealed = json.loads(row.result)
    assert set(sealed) == {"scheme", "content", "context", "recipients", "nonce", "ciphertext"}
    readable = json.dumps({k: sealed[k] for k in ("scheme", "content", "context")})
    assert '"count"' not in readable and "age" not in readable
    # ... sealed with hybrid post-quantum HPKE to the cards in the signed permit ...
    suites = {r["suite"] for r in json.loads(row.result)["recipients"].values()}
    assert suites == {HYBRID_SUITE}
    # ... that the researcher and the body that issued the permit can open, and no one else.
    for reader in (net.researcher, HDAB):
        identity = net.identity(reader)
        opened = json.loads(open_sealed(row.result, identity))
        assert opened["rows"][0]["count"] == 228
    mallory = net.identity("mallory")
    with pytest.raises(AccessDenied):
        open_sealed(row.result, mallory)


def test_the_node_audit_trail_exports_a_permits_record_and_names_an_edited_row(
    net: Sandbox, tmp_path: Path
) -> None:
    with net.session(permit="audited", progress=False) as session:
        session.describe(["age"])
    config = net.node_config("centre-A")
    exported = offline("audit", "export", "--permit", "audited", "--node", str(config))
    assert exported.returncode == 0, exported.stderr
    record = json.loads(exported.stdout)
    assert record["chain"]["verified"] is True
    entries = record["entries"]
    assert entries and {e["permit_id"] for e in entries} == {"audited"}
    assert {e["actor"] for e in entries} == {net.researcher}
    assert any(e["outcome"] == "released" and e["released_bytes"] > 0 for e in entries)

    assert offline("audit", "verify", "--node", str(config)).returncode == 0
    victim = entries[0]["seq"]
    with sqlite3.connect(net.workdir / "centre-A" / "state" / "audit.sqlite") as db:
        db.execute("UPDATE audit_trail SET outcome = 'refused' WHERE seq = ?", (victim,))
    verdict = offline("audit", "verify", "--node", str(config))
    assert verdict.returncode == ExitCode.CONFIG
    assert f"entry {victim}:" in verdict.stdout
    assert "rule: audit.verify" in verdict.stderr


@pytest.fixture(scope="module")
def manual_net(lung: pd.DataFrame) -> Iterator[Sandbox]:
    with manual_three_centres(lung) as net:
        yield net


def _pending(net: Sandbox, node: str) -> list[str]:
    listing = offline("node", "approvals", "list", str(net.node_config(node)), "--json")
    return [str(json.loads(line)["run_id"]) for line in listing.stdout.splitlines()]


def _pending_at_every_node(net: Sandbox, count: int) -> dict[str, list[str]]:
    """Each node's pending run ids, once every node lists ``count`` of them (120 s at most)."""
    pending: dict[str, list[str]] = {}
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        pending = {node: _pending(net, node) for node in net.node_names}
        if all(len(runs) >= count for runs in pending.values()):
            break
        time.sleep(0.5)
    return pending


def test_a_dataset_under_manual_approval_waits_for_each_operator(
    manual_net: Sandbox, lung: pd.DataFrame
) -> None:
    # Three tasks wait at once, one more than a node has workers (max_workers = 2): a
    # waiting task is stored, not held in a thread, so every node takes all three in.
    with manual_net.session(permit="approved-run", progress=False) as session:
        request = {"dataset": "lung", "columns": ["age"], "min_nodes": 3}
        task_ids = [session.submit("describe", **request) for _ in "abc"]
        pending = _pending_at_every_node(manual_net, 3)
        if not all(len(runs) == 3 for runs in pending.values()):
            logs = {node: manual_net.log_tail(node, 40) for node in manual_net.node_names}
            pytest.fail(
                f"pending: {pending}\nstatus: {[session.status(t) for t in task_ids]}\n"
                f"nodes: {logs}\ncoordinator: {manual_net.log_tail('coordinator', 60)}"
            )
        status = session.status(task_ids[0])
        assert status.state == "running", status
        assert "waiting for the approval of" in status.detail
        assert status.replies == 0  # nothing ran before the operators said so
        for node, runs in pending.items():
            config = str(manual_net.node_config(node))
            for run_id in runs:
                assert offline("node", "approvals", "approve", config, run_id).returncode == 0
        # The coordinator's next try of each message goes ahead.
        results = [session.result(task_id) for task_id in task_ids]
    pooled = (lung["centre"] != "centre-D").sum()
    assert [r.rows[0].count for r in results] == [pooled] * 3  # type: ignore[attr-defined]

    outcome: dict[str, object] = {}

    def run(permit: str) -> None:
        with manual_net.session(permit=permit, progress=False) as session:
            try:
                outcome[permit] = session.describe(["age"], min_nodes=3)
            except PermitRefused as exc:
                outcome[permit] = exc

    worker = threading.Thread(target=run, args=("rejected-run",))
    worker.start()
    rejected = {node: runs[-1] for node, runs in _pending_at_every_node(manual_net, 1).items()}
    for node, run_id in rejected.items():
        verb = ["reject", "--reason", "not on weekends"] if node == "centre-A" else ["approve"]
        config = str(manual_net.node_config(node))
        args = [verb[0], config, run_id, *verb[1:]]
        assert offline("node", "approvals", *args).returncode == 0
    worker.join(120)
    refusal = outcome["rejected-run"]
    assert isinstance(refusal, PermitRefused)
    assert (refusal.rule, refusal.node) == ("node.approval", "centre-A")
    assert "not on weekends" in refusal.detail
