"""The console's whole story in a real browser, over the real protocol.

A coordinator and four lung cancer centres run as processes (a sandbox); the
data-access body, the researcher and one centre's operator each start their own
`oncofed console` process with their own credentials, and headless Chromium
drives them as people would: an application filed, sent back for changes,
amended, approved; a permit drafted, read, signed and published; a
Kaplan-Meier analysis run, held at one centre until its operator approves it,
its plot shown and its CSV downloaded (checked against pandas on the pooled
data); the centre's audit record exported and verified by the body. axe-core
checks every page for serious accessibility violations on the way.

The tests run in file order and share the network and the browser.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from oncofed.client.demo import lung_centres
from oncofed.client.sandbox import HDAB, Sandbox
from tests.console.browser import assert_accessible, chromium_path, screenshot
from tests.console.conftest import ConsoleProcess

pytestmark = pytest.mark.slow

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="the browser tests need Playwright (the test extra has it)"
)
expect = sync_api.expect

PERMIT = "lung-survival-2026"
GATED = "centre-B"  # the centre whose operator approves each task by hand
TIMEOUT_MS = 120_000  # a task waits for the nodes
ACTION_MS = 20_000


@pytest.fixture(scope="module")
def pooled() -> pd.DataFrame:
    return lung_centres(4)


@pytest.fixture(scope="module")
def network(pooled: pd.DataFrame) -> Iterator[Sandbox]:
    with Sandbox.from_frame(pooled, split_by="centre", dataset="lung", release="exact") as net:
        # One centre asks its operator about every task: restart it with manual approval.
        net.stop_node(GATED)
        net.approval = "manual"
        net.start_node(GATED)
        net.approval = "automatic"
        net.wait_for_nodes(net.node_names)
        yield net


@pytest.fixture(scope="module")
def consoles(network: Sandbox) -> Iterator[dict[str, ConsoleProcess]]:
    started = {
        "body": ConsoleProcess(
            "--credentials", str(network.credentials(HDAB)), "--coordinator", network.address
        ),
        "researcher": ConsoleProcess(
            "--credentials",
            str(network.credentials(network.researcher)),
            "--coordinator",
            network.address,
        ),
        "operator": ConsoleProcess("--node", str(network.node_config(GATED))),
    }
    yield started
    for process in started.values():
        process.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = chromium_path()
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, headless=True)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def pages(browser: Any, consoles: dict[str, ConsoleProcess]) -> Iterator[dict[str, Any]]:
    """One signed-in tab per person, each in its own browser context (its own cookies)."""
    opened: dict[str, Any] = {}
    for role, process in consoles.items():
        context = browser.new_context(
            viewport={"width": 1280, "height": 900}, accept_downloads=True
        )
        context.set_default_timeout(ACTION_MS)
        page = context.new_page()
        page.goto(process.url)  # the one-time link; the console trades it for a cookie
        opened[role] = page
    yield opened
    for page in opened.values():
        page.context.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("screenshots")


@pytest.fixture(scope="module")
def story() -> dict[str, str]:
    """What one step learns and a later one needs (the application's id, the task's)."""
    return {}


def _go(page: Any, link: str) -> None:
    """Follow a navigation link, and wait for its page (axe must not run mid-navigation)."""
    target = page.get_by_role("navigation").get_by_role("link", name=link)
    target.click()
    expect(target).to_have_attribute("aria-current", "page")


def test_researcher_files_an_application(pages, consoles, story, shots) -> None:
    page = pages["researcher"]
    expect(page.get_by_role("heading", name="Applications")).to_be_visible()
    assert "token" not in page.url, "the token is dropped from the address once used"
    page.get_by_role("link", name="File a new application").click()
    page.get_by_label("Organisation").fill("Institut Curie, Biostatistics")
    page.get_by_label("e-scientific-research").check()
    page.get_by_label("Description").fill(
        "Overall survival after advanced lung cancer by sex and age across four centres."
    )
    page.get_by_label("Dataset").select_option("lung")
    page.get_by_label("Variables").fill("time, status, sex, age")
    page.get_by_label("Release").select_option("exact")
    page.get_by_label(re.compile("kaplan_meier:")).check()
    page.get_by_label(re.compile("describe:")).check()
    assert_accessible(page, "new application form")
    screenshot(page, "researcher-application", shots)
    page.get_by_role("button", name="File the application").click()
    expect(page.get_by_role("status")).to_contain_text("filed")
    expect(page.locator("dd.state")).to_have_text("submitted")
    story["application"] = page.url.split("/applications/")[1].split("?")[0]


def test_body_reviews_beside_the_catalogue_and_asks_for_changes(pages, story, shots) -> None:
    page = pages["body"]
    page.reload()
    assert_accessible(page, "applications inbox")
    screenshot(page, "body-inbox", shots)
    page.get_by_role("link", name=story["application"][:12]).click()
    catalogue = page.get_by_role("table", name="Columns of lung")
    expect(catalogue).to_contain_text("wt.loss")  # offered, not asked for
    expect(page.get_by_text("Offered by 4 node(s)")).to_be_visible()
    assert_accessible(page, "application review")
    screenshot(page, "body-review", shots)
    page.get_by_label("Note to the applicant").fill("Age is not needed for this purpose; drop it.")
    page.get_by_role("button", name="Request changes").click()
    expect(page.get_by_role("status")).to_contain_text("changes requested")


def test_researcher_amends(pages, story) -> None:
    page = pages["researcher"]
    page.goto(page.url.split("/applications")[0] + f"/applications/{story['application']}")
    expect(page.get_by_role("status")).to_contain_text("Age is not needed")
    page.get_by_role("link", name="Amend the application").click()
    expect(page.get_by_label("Variables")).to_have_value("time, status, sex, age")
    page.get_by_label("Variables").fill("time, status, sex")
    page.get_by_role("button", name="File the amended application").click()
    expect(page.locator("dd.state")).to_have_text("submitted")
    story["application"] = page.url.split("/applications/")[1].split("?")[0]


def test_body_approves_signs_and_publishes_the_permit(pages, story, shots) -> None:
    page = pages["body"]
    page.goto(page.url.split("/applications")[0] + f"/applications/{story['application']}")
    page.get_by_role("button", name="Record approval").click()
    expect(page.get_by_role("status")).to_contain_text("approved")
    page.get_by_label("Permit id").fill(PERMIT)
    page.get_by_role("button", name="Preview the permit").click()
    expect(page.get_by_role("heading", name=f"Permit {PERMIT}: preview")).to_be_visible()
    expect(page.get_by_text("lung (exact, ε node cap): time, status, sex")).to_be_visible()
    assert_accessible(page, "permit preview")
    screenshot(page, "body-permit-preview", shots)
    page.get_by_role("button", name="Sign and publish").click()
    expect(page.get_by_role("status")).to_contain_text(f"permit {PERMIT} signed and published")
    expect(page.get_by_role("table", name="Published permits")).to_contain_text("in force")
    assert_accessible(page, "permits")
    screenshot(page, "body-permits", shots)


def test_researcher_runs_kaplan_meier(pages, story, shots) -> None:
    page = pages["researcher"]
    _go(page, "Run an analysis")
    page.get_by_role("link", name="kaplan_meier").click()
    expect(page.get_by_label("Permit")).to_have_value(PERMIT)
    page.get_by_label("dataset").fill("lung")
    page.get_by_label("duration (required)").fill("time")
    page.get_by_label("event (required)").fill("status")
    page.get_by_label("by", exact=True).fill("sex")
    page.get_by_label("categories").fill("1,2")
    page.get_by_label("grid").fill("20")
    assert_accessible(page, "analysis form")
    screenshot(page, "researcher-analysis-form", shots)
    page.get_by_role("button", name="Sign and run").click()
    expect(page.get_by_label("Node replies")).to_be_visible()
    expect(page.locator("progress")).to_be_visible()
    assert_accessible(page, "running task")
    screenshot(page, "researcher-task-running", shots)


def _approve_the_waiting_run(page: Any) -> None:
    _go(page, "Approvals")
    approve = page.get_by_role("button", name=re.compile("^Approve run"))
    for _ in range(60):  # the task reaches this centre within seconds
        if approve.count() == 1:
            break
        page.wait_for_timeout(1000)
        page.reload()
    expect(approve).to_have_count(1)
    expect(page.locator("main")).to_contain_text("kaplan_meier")
    approve.click()
    expect(page.get_by_role("status")).to_contain_text("approved")


def test_operator_approves_the_waiting_task(pages, shots) -> None:
    page = pages["operator"]
    _go(page, "Approvals")
    assert_accessible(page, "operator approvals")
    _approve_the_waiting_run(page)
    screenshot(page, "operator-approvals", shots)


def test_a_refusal_names_the_field_to_change(pages, story, shots) -> None:
    page = pages["researcher"]
    # The nodes refuse a grid finer than their policy's; the fix names this form's field.
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text("\u201cgrid\u201d: 30", timeout=TIMEOUT_MS)
    expect(alert).to_contain_text("privacy.min_grid_width")
    screenshot(page, "researcher-refusal", shots)
    page.get_by_role("link", name="Edit the parameters and run again").click()
    expect(page.get_by_label("categories")).to_have_value("1,2")
    page.get_by_label("grid").fill("30")
    page.get_by_role("button", name="Sign and run").click()
    expect(page.get_by_label("Node replies")).to_be_visible()
    story["task"] = page.url.rsplit("/", 1)[1]
    _approve_the_waiting_run(pages["operator"])


def test_researcher_sees_the_curve_and_downloads_the_numbers(pages, story, pooled, shots) -> None:
    page = pages["researcher"]
    # The page reloads itself once the task ends (the progress script).
    plot = page.get_by_role("img", name=re.compile("Kaplan"))
    expect(plot).to_be_visible(timeout=TIMEOUT_MS)
    # The console's policy forbids eval, which wait_for_function needs: poll from here.
    expect(plot).to_have_js_property("complete", True)
    assert page.evaluate("document.querySelector('img.plot').naturalWidth") > 300
    assert_accessible(page, "Kaplan-Meier result")
    screenshot(page, "researcher-kaplan-meier", shots)
    with page.expect_download() as download:
        page.get_by_role("link", name="Download CSV").click()
    table = pd.read_csv(download.value.path())
    # Exact answers (the permit grants them): every group starts with all its patients
    # at risk, and its events add up to the pooled data's deaths (status 1).
    for sex, group in pooled.groupby("sex"):
        rows = table[table["sex"] == sex]
        assert rows["at_risk"].iloc[0] == len(group)
        assert rows["events"].sum() == int(group["status"].sum())
    with page.expect_download() as png:
        page.get_by_role("link", name="Download PNG").click()
    assert Path(png.value.path()).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    _go(page, "Privacy budget")
    expect(page.get_by_role("table", name="Privacy budget")).to_contain_text(PERMIT)
    assert_accessible(page, "researcher budget")


def test_body_verifies_the_centres_audit_record(pages, network, tmp_path, shots) -> None:
    record = tmp_path / "record.json"
    exported = subprocess.run(
        [
            sys.executable,
            "-m",
            "oncofed",
            "audit",
            "export",
            "--permit",
            PERMIT,
            "--node",
            str(network.node_config(GATED)),
            "--out",
            str(record),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert exported.returncode == 0, exported.stderr
    page = pages["body"]
    _go(page, "Audit records")
    page.get_by_label("Audit record (JSON)").set_input_files(str(record))
    page.get_by_role("button", name="Verify").click()
    expect(page.get_by_role("status")).to_contain_text("Verified")
    expect(page.get_by_role("table", name=f"Entries under {PERMIT}")).to_contain_text(
        "kaplan_meier"
    )
    assert_accessible(page, "audit record")
    screenshot(page, "body-audit", shots)
    # An entry edited after the export no longer matches its hash.
    tampered = json.loads(record.read_text())
    tampered["entries"][-1]["actor"] = "someone-else"
    record.write_text(json.dumps(tampered))
    page.get_by_label("Audit record (JSON)").set_input_files(str(record))
    page.get_by_role("button", name="Verify").click()
    expect(page.get_by_role("alert")).to_contain_text("does not match its hash")


def test_operator_pages_are_accessible(pages, shots) -> None:
    page = pages["operator"]
    for link, name in (
        ("Node", "operator-node"),
        ("Datasets", "operator-datasets"),
        ("Privacy budget", "operator-budget"),
        ("Audit trail", "operator-audit"),
    ):
        _go(page, link)
        assert_accessible(page, f"operator {link}")
        screenshot(page, name, shots)
    _go(page, "Node")
    expect(page.locator("main")).to_contain_text("connected")


def test_every_page_works_from_the_keyboard(pages) -> None:
    page = pages["researcher"]
    _go(page, "Applications")
    page.keyboard.press("Tab")
    focused = page.evaluate("document.activeElement.textContent")
    assert focused == "Skip to content", "the first Tab reaches the skip link"
    page.keyboard.press("Enter")
    # Then the navigation: Tab to "Run an analysis" and follow it with Enter.
    page.goto(page.url.split("#")[0])
    for _ in range(10):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.textContent") == "Run an analysis":
            break
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Run an analysis")).to_be_visible()
    page.keyboard.press("Tab")
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline not in ("", "none"), "focus is visible"
