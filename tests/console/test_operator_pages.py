"""The node operator's console against real node processes: status, data, approvals,
privacy budget and audit trail, as the node's own state folder holds them.

One sandbox (a coordinator and three nodes whose dataset needs the operator's
approval) serves the whole module; each node has its own operator console.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
import tomllib
from collections.abc import Iterator
from contextlib import ExitStack
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest
import tomli_w
from starlette.testclient import TestClient

from oncofed.client.console import ConsoleKeys
from oncofed.client.console.launch import console_settings
from oncofed.client.sandbox import Sandbox
from oncofed.kernel.errors import PermitRefused
from oncofed.node.config import load_node_config
from oncofed.node.governance_state import GovernanceState
from oncofed.privacy.ledger import LEDGER_FILE, PrivacyLedger
from oncofed.tasks.describe import DescribeResult
from oncofed.tasks.tables import number
from tests.console.conftest import console_client
from tests.oracle import manual_three_centres

PERMIT = "console-study"
WAIT = 120.0


class _Tables(HTMLParser):
    """Each table of a page by its caption: its rows, each a list of cell texts."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self._caption: str | None = None
        self._rows: list[list[str]] = []
        self._cell: list[str] | None = None
        self._in_caption = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self._caption, self._rows = "", []
        elif tag == "caption":
            self._in_caption = True
        elif tag == "tr":
            self._rows.append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "caption":
            self._in_caption = False
        elif tag in ("td", "th") and self._cell is not None:
            self._rows[-1].append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "table" and self._caption is not None:
            self.tables[" ".join(self._caption.split())] = self._rows[1:]  # without the header
            self._caption = None

    def handle_data(self, data: str) -> None:
        if self._in_caption and self._caption is not None:
            self._caption += data
        elif self._cell is not None:
            self._cell.append(data)


def tables(html: str) -> dict[str, list[list[str]]]:
    parser = _Tables()
    parser.feed(html)
    return parser.tables


def text(html: str) -> str:
    """The page's words, whitespace folded, tags dropped."""
    return " ".join(re.sub(r"<[^>]+>", " ", html).split())


Console = tuple[TestClient, ConsoleKeys]


@pytest.fixture(scope="module")
def net(lung: pd.DataFrame) -> Iterator[Sandbox]:
    with manual_three_centres(lung) as net:
        yield net


@pytest.fixture(scope="module")
def consoles(net: Sandbox) -> Iterator[dict[str, Console]]:
    """Each node's operator console, opened as `oncofed console --node CONFIG` opens it."""
    with ExitStack() as stack:
        yield {
            name: stack.enter_context(
                console_client(console_settings(Path(), net.address, net.node_config(name)))
            )
            for name in net.node_names
        }


def _state(net: Sandbox, node: str) -> GovernanceState:
    return GovernanceState.at(load_node_config(net.node_config(node)).state_dir)


def _pending_everywhere(net: Sandbox) -> dict[str, int]:
    """The run waiting at each node, once every node has it (one task at a time here)."""
    pending: dict[str, list[int]] = {}
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        pending = {
            node: [a.run_id for a in _state(net, node).approvals("pending")]
            for node in net.node_names
        }
        if all(pending.values()):
            assert all(len(runs) == 1 for runs in pending.values()), pending
            return {node: runs[0] for node, runs in pending.items()}
        time.sleep(0.25)
    pytest.fail(f"not every node has a pending approval: {pending}")


def _decide(console: Console, run_id: int, verb: str, reason: str | None = None) -> str:
    """POST the page's form for ``verb`` (approve, reject); the page the redirect shows."""
    client, keys = console
    form = {"csrf": keys.csrf()}
    if reason is not None:
        form["reason"] = reason
    posted = client.post(f"/approvals/{run_id}/{verb}", data=form, follow_redirects=False)
    assert posted.status_code == 303, posted.text
    assert posted.headers["location"].startswith(f"{keys.root}/approvals?notice=")
    shown = client.get(posted.headers["location"].removeprefix(keys.root))
    assert shown.status_code == 200
    return shown.text


@pytest.fixture(scope="module")
def approved(net: Sandbox, consoles: dict[str, Console]) -> tuple[dict[str, str], DescribeResult]:
    """A describe the researcher submits, every operator approves on their page; the
    pending page as each operator saw it, and the result."""
    with net.session(permit=PERMIT, progress=False) as session:
        task_id = session.submit("describe", columns=["age", "wt.loss"], min_nodes=3)
        runs = _pending_everywhere(net)
        seen: dict[str, str] = {}
        for node, run_id in runs.items():
            client, _keys = consoles[node]
            seen[node] = client.get("/approvals").text
            after = _decide(consoles[node], run_id, "approve")
            assert f"run {run_id} approved" in text(after)
        result = session.result(task_id)
    assert isinstance(result, DescribeResult)
    return seen, result


def test_the_approvals_page_lists_a_waiting_task_and_approving_it_lets_it_run(
    net: Sandbox,
    lung: pd.DataFrame,
    consoles: dict[str, Console],
    approved: tuple[dict[str, str], DescribeResult],
) -> None:
    seen, result = approved
    for node, page in seen.items():
        words = text(page)
        (approval,) = [a for a in _state(net, node).approvals() if a.permit_id == PERMIT]
        assert approval.state == "approved"
        assert f"Run {approval.run_id}: describe on lung" in words
        for fact in (f"Researcher {net.researcher}", f"Permit {PERMIT}", "Dataset lung"):
            assert fact in words
        # The parameters as signed, and both forms, each carrying the CSRF field.
        assert "&#34;wt.loss&#34;" in page or '"wt.loss"' in page
        _client, keys = consoles[node]
        assert f'action="{keys.root}/approvals/{approval.run_id}/approve"' in page
        assert f'action="{keys.root}/approvals/{approval.run_id}/reject"' in page
        assert page.count(f'name="csrf" value="{keys.csrf()}"') == 2
        assert re.search(r'<label for="reason-\d+">', page) and "required" in page
    pooled = lung[lung["centre"] != "centre-D"]
    frame = result.to_frame()
    for column in ("age", "wt.loss"):
        values = pooled[column].astype(float).dropna()
        assert frame.loc[column, "count"] == len(values)
        assert frame.loc[column, "mean"] == pytest.approx(values.mean(), rel=1e-9)
    # Decided, it is listed below with its decision.
    client, _keys = consoles[net.node_names[0]]
    decided = tables(client.get("/approvals").text)
    rows = next(rows for caption, rows in decided.items() if caption.startswith("Decided"))
    assert any(row[1] == "approved" and row[5] == PERMIT for row in rows)


def test_rejecting_with_a_reason_fails_the_researchers_task_with_that_reason(
    net: Sandbox, consoles: dict[str, Console]
) -> None:
    reason = "not before the ethics review of 3 June"
    with net.session(permit=PERMIT, progress=False) as session:
        task_id = session.submit("describe", columns=["age"], min_nodes=3)
        runs = _pending_everywhere(net)
        rejecter = net.node_names[0]
        client, keys = consoles[rejecter]
        run_id = runs[rejecter]

        # Refused forms leave the task waiting: no reason, no CSRF token, no such run.
        no_reason = client.post(
            f"/approvals/{run_id}/reject", data={"csrf": keys.csrf(), "reason": "  "}
        )
        assert no_reason.status_code == 400
        assert "needs a reason" in no_reason.text and "node.approval" in no_reason.text
        forged = client.post(f"/approvals/{run_id}/reject", data={"reason": reason})
        assert forged.status_code == 403
        unknown = client.post("/approvals/12345/approve", data={"csrf": keys.csrf()})
        assert unknown.status_code == 400
        assert "no task of run 12345 waits for approval" in text(unknown.text)
        assert _state(net, rejecter).approval(run_id).state == "pending"  # type: ignore[union-attr]

        after = _decide(consoles[rejecter], run_id, "reject", reason)
        assert f"run {run_id} rejected" in text(after)
        decided = next(
            rows for caption, rows in tables(after).items() if caption.startswith("Decided")
        )
        assert [str(run_id), "rejected"] == decided[0][:2] and decided[0][3] == reason
        twice = client.post(f"/approvals/{run_id}/approve", data={"csrf": keys.csrf()})
        assert twice.status_code == 400 and f"run {run_id} was already rejected" in twice.text
        for node in net.node_names[1:]:
            _decide(consoles[node], runs[node], "approve")
        with pytest.raises(PermitRefused) as refused:
            session.result(task_id)
    assert (refused.value.rule, refused.value.node) == ("node.approval", rejecter)
    assert reason in refused.value.detail


def test_the_node_page_shows_the_node_its_credentials_policy_and_connection(
    net: Sandbox, consoles: dict[str, Console]
) -> None:
    node = net.node_names[0]
    client, _keys = consoles[node]
    page = client.get("/")
    assert page.status_code == 200
    words = text(page.text)
    assert f"Node name {node}" in words and f"Coordinator {net.address}" in words
    assert "Running, connected" in words and "Node process running" in words
    assert re.search(r"process \d+ is connected to the coordinator at " + net.address, words)
    assert f"Holder node {node}" in words and "Issued by oncofed-sandbox" in words
    assert re.search(r"Valid until \d{4}-\d\d-\d\d \d\d:\d\d UTC", words)
    assert "writable" in words
    policy = tables(page.text)["Release and approval per dataset"]
    assert policy[0][:2] == ["lung", "exact where a permit grants it, else DP"]
    assert policy[0][6] == "each task waits for the operator"
    rules = {
        row[0]: row[1] for row in tables(page.text)["Disclosure rules (the config's [policy])"]
    }
    assert rules["min_nodes"] == "3" and rules["exact_complete_records"] == "off"


def test_the_datasets_page_shows_what_node_check_reads(
    net: Sandbox, consoles: dict[str, Console]
) -> None:
    for node in net.node_names:
        client, _keys = consoles[node]
        page = client.get("/datasets").text
        part = net.partitions[node]
        assert f"{len(part)} rows" in text(page)
        columns = {row[0]: row for row in tables(page)["Columns of lung"]}
        assert list(columns) == list(net.schema.columns)
        for column, spec in net.schema.columns.items():
            assert columns[column][1] == spec.type
            assert columns[column][2] == str(int(part[column].isna().sum()))
            assert columns[column][3] == ", ".join(spec.categories or ())


def test_the_budget_page_shows_the_ledger(
    net: Sandbox, consoles: dict[str, Console], tmp_path: Path
) -> None:
    # A node that has made no differentially private release has no ledger, and the page
    # says so without making one.
    config = tomllib.loads(net.node_config(net.node_names[0]).read_text())
    fresh = tmp_path / "node.toml"
    fresh.write_text(tomli_w.dumps({**config, "state_dir": str(tmp_path / "state")}))
    with console_client(console_settings(Path(), net.address, fresh)) as (client, _keys):
        empty = client.get("/budget")
    assert "has made no differentially private release yet" in text(empty.text)
    assert not (tmp_path / "state" / LEDGER_FILE).exists()

    with net.session(permit=PERMIT, progress=False) as session:
        task_id = session.submit(
            "describe", columns=["age"], dp={"epsilon": 0.5}, bounds={"age": (0, 100)}
        )
        for node, run_id in _pending_everywhere(net).items():
            _decide(consoles[node], run_id, "approve")
        session.result(task_id)
    for node in net.node_names:
        cfg = load_node_config(net.node_config(node))
        privacy = {name: cfg.policy.privacy_for(name) for name in cfg.datasets}
        ledger = PrivacyLedger.at(cfg.state_dir, node)
        try:
            expected = {"permit": ledger.summary(privacy), "researcher": ledger.lifetimes(privacy)}
        finally:
            ledger.close()
        client, _keys = consoles[node]
        shown = tables(client.get("/budget").text)
        for by, caption in (
            ("permit", "Spent and remaining per permit and dataset"),
            ("researcher", "Spent and remaining per researcher and dataset, over every permit"),
        ):
            rows = expected[by]
            assert rows and rows[0].spent_epsilon > 0
            assert shown[caption] == [
                [
                    row.holder,
                    row.dataset,
                    str(row.releases),
                    number(row.spent_epsilon),
                    number(row.epsilon),
                    number(row.remaining_epsilon),
                    number(row.delta),
                ]
                for row in rows
            ]


def test_the_audit_page_verifies_the_trail_and_names_an_edited_entry(
    net: Sandbox, consoles: dict[str, Console], approved: tuple[dict[str, str], DescribeResult]
) -> None:
    node = net.node_names[-1]
    client, _keys = consoles[node]
    intact = client.get("/audit").text
    words = text(intact)
    assert "Intact:" in words and "Not intact" not in words
    count = int(re.search(r"\((\d+) entries\)", words).group(1))  # type: ignore[union-attr]
    latest = next(rows for caption, rows in tables(intact).items() if caption.startswith("The"))
    assert 0 < len(latest) <= min(count, 50)
    assert [int(row[0]) for row in latest] == sorted((int(row[0]) for row in latest), reverse=True)
    released = [row for row in latest if row[6] == "released" and row[4] == PERMIT]
    assert released and released[0][2] == net.researcher and released[0][3] == "describe"
    assert all(row[-1] == "ok" for row in latest)

    victim = int(released[0][0])
    trail = load_node_config(net.node_config(node)).state_dir / "audit.sqlite"
    with sqlite3.connect(trail) as db:
        db.execute("UPDATE audit_trail SET outcome = 'refused' WHERE seq = ?", (victim,))
    try:
        tampered = client.get("/audit").text
        assert "Not intact" in text(tampered) and f"entry {victim}:" in text(tampered)
        rows = next(rows for caption, rows in tables(tampered).items() if caption.startswith("The"))
        flagged = [row for row in rows if row[-1] == "problem"]
        assert [int(row[0]) for row in flagged] == [victim]
    finally:
        with sqlite3.connect(trail) as db:
            db.execute("UPDATE audit_trail SET outcome = 'released' WHERE seq = ?", (victim,))
    assert "Intact:" in text(client.get("/audit").text)


def _status_line(client: TestClient) -> str:
    return text(client.get("/").text)


def _wait_for(client: TestClient, words: str) -> str:
    deadline = time.monotonic() + 30
    while True:
        page = _status_line(client)
        if words in page or time.monotonic() > deadline:
            return page
        time.sleep(0.2)


def test_the_node_page_tells_a_running_node_from_a_stopped_or_crashed_one(
    net: Sandbox, consoles: dict[str, Console]
) -> None:
    node = net.node_names[1]
    client, _keys = consoles[node]
    assert "Running, connected" in _wait_for(client, "Running, connected")
    try:
        net.stop_node(node)
        stopped = _status_line(client)
        assert "Not running : the node stopped" in stopped and "Running, connected" not in stopped
        assert "Node process not running" in stopped

        net.start_node(node)
        net.wait_for_nodes([node])
        assert "Running, connected" in _wait_for(client, "Running, connected")
        net.stop_node(node, kill=True)  # no chance to write that it stops
        crashed = _status_line(client)
        assert "Not running : process" in crashed and "ended without stopping" in crashed
    finally:
        net.start_node(node)
        net.wait_for_nodes([node])
    assert "Running, connected" in _wait_for(client, "Running, connected")


def test_the_status_file_says_what_the_node_process_does(net: Sandbox) -> None:
    raw = json.loads((net.workdir / net.node_names[0] / "state" / "status.json").read_text())
    assert raw["state"] == "connected" and raw["coordinator"] == net.address
    assert raw["last_heartbeat"] is not None and raw["heartbeat_seconds"] == net.heartbeat_seconds
