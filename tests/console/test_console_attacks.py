"""Attacks on `oncofed console`: each one tried, then tried again without its defence.

Four attackers, as a security review sees them:

(a) a web page the console's user opens in the same browser: forms posted from another
    site, the console framed under a decoy ("clickjacking" an Approve button), DNS
    rebinding;
(b) another local user or program, without the printed one-time link;
(c) a malicious researcher, whose words (application, parameters, ids) the body's and
    the operator's consoles show;
(d) a compromised coordinator answering the body's and the researcher's consoles.

A test of an attack the console stops asserts that the attack fails and, where the
defence can be taken away alone (monkeypatched), that the attack then works: the
defence, not luck, is what stops it. Six holes this review found first (the token on
the browser's command line, the session cookie sent to other local ports, a review
bound to no particular version of the application, permits listed as the coordinator
relays them, the coordinator's task id in a download's name, a 500 on a non-ASCII
token) are closed, and their tests are among these.

One sandbox (a coordinator and one node) serves the body's and the researcher's
consoles; the operator's console reads a node config of its own (no node process);
headless Chromium plays the user's browser where only a browser shows the attack.
"""

from __future__ import annotations

import datetime
import functools
import hmac
import html
import http.server
import itertools
import json
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import pandas as pd
import pytest
import uvicorn
from markupsafe import escape
from sqlalchemy import create_engine, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session as DbSession
from starlette.responses import RedirectResponse
from starlette.testclient import TestClient

from oncofed.client.access import DataAccessClient, draft_permit
from oncofed.client.console import ConsoleKeys, ConsoleSettings, create_app, security, server
from oncofed.client.console import body as body_pages
from oncofed.client.console import pages as console_pages
from oncofed.client.console.launch import console_settings
from oncofed.client.console.task_log import RESULTS_FOLDER, SubmittedTask, TaskLog
from oncofed.client.sandbox import HDAB, Sandbox, node_config_toml
from oncofed.coordinator.db import ApplicationRow, NodeRow, PermitRow
from oncofed.governance.permits import (
    DataAccessApplication,
    DatasetRequest,
    Permit,
    Purpose,
    SignedPermit,
)
from oncofed.kernel.schema import infer_schema
from oncofed.node.config import load_node_config
from oncofed.node.governance_state import GovernanceState
from oncofed.node.identity import load_or_create_identity, public_key_text
from oncofed.privacy.policy import NodePolicy
from oncofed.tasks.histogram import HistogramResult
from tests.console.browser import chromium_path
from tests.console.conftest import console_client

LOCAL = "http://127.0.0.1:8000"
SCRIPT = '<script>alert("oncofed-xss")</script>'
"""Markup an attacker writes where the console shows text."""
IMAGE = '"><img src=x onerror=alert(1)>'
"""Markup that first leaves an attribute; no "/", so it also fits one segment of a path."""
RAW = (SCRIPT, "<img src=x onerror")
"""Either of these in a page means the attacker's markup reached the browser unescaped."""
ESCAPED = ("&lt;script&gt;", "&lt;img src=x onerror")

Console = tuple[TestClient, ConsoleKeys]
_runs = itertools.count(900_001)


# ---- the operator's console: a node config of its own, approvals written into its state --


@pytest.fixture(scope="module")
def node_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A node whose dataset waits for the operator's approval (no node process runs)."""
    folder = tmp_path_factory.mktemp("attacked-node")
    frame = pd.DataFrame({"age": [61.0, 72.0, 55.0]})
    frame.to_parquet(folder / "lung.parquet", index=False)
    body_key = public_key_text(load_or_create_identity(folder / "body").public_key())
    path = folder / "node.toml"
    path.write_text(
        node_config_toml(
            "centre-x",
            "127.0.0.1:1",
            "lung",
            folder / "lung.parquet",
            infer_schema(frame),
            1.0,
            NodePolicy(),
            credentials=folder / "credentials",
            trusted_bodies={"body": body_key},
            approval="manual",
        )
    )
    load_node_config(path).state_dir.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def operator_settings(node_config: Path) -> ConsoleSettings:
    return console_settings(Path(), "", node_config)


@pytest.fixture(scope="module")
def operator(operator_settings: ConsoleSettings) -> Iterator[Console]:
    with console_client(operator_settings) as console:
        yield console


@functools.cache
def governance(node_config: Path) -> GovernanceState:
    return GovernanceState.at(load_node_config(node_config).state_dir)


def pending(node_config: Path, text: str = "lung") -> int:
    """A task waiting for the operator, as a node records one (``text`` in every field)."""
    run_id = next(_runs)
    governance(node_config).request_approval(
        run_id=run_id,
        permit_id=text,
        researcher=text,
        task_type=text,
        dataset=text,
        params_json=json.dumps({"column": text}),
    )
    return run_id


def state_of(node_config: Path, run_id: int) -> str:
    approval = governance(node_config).approval(run_id)
    assert approval is not None
    return approval.state


# ---- the body's and the researcher's consoles: one sandbox, and its database -------------


@pytest.fixture(scope="module")
def sandbox(lung: pd.DataFrame) -> Iterator[Sandbox]:
    one_centre = lung[lung["centre"] == "centre-A"]
    with Sandbox.from_frame(one_centre, split_by="centre", dataset="lung", release="exact") as net:
        yield net


@pytest.fixture(scope="module")
def database(sandbox: Sandbox) -> Iterator[Engine]:
    """The coordinator's own database: what a compromised coordinator answers from."""
    engine = create_engine(sandbox.database_url)
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def body(sandbox: Sandbox) -> Iterator[Console]:
    with console_client(console_settings(sandbox.credentials(HDAB), sandbox.address, None)) as c:
        yield c


@pytest.fixture(scope="module")
def researcher_settings(sandbox: Sandbox) -> ConsoleSettings:
    return console_settings(sandbox.credentials(sandbox.researcher), sandbox.address, None)


@pytest.fixture(scope="module")
def researcher(researcher_settings: ConsoleSettings) -> Iterator[Console]:
    with console_client(researcher_settings) as console:
        yield console


def file_application(sandbox: Sandbox, **fields: Any) -> str:
    """An application the sandbox's researcher files: age and sex of lung, anonymised."""
    today = datetime.date.today()
    with DataAccessClient(sandbox.address, sandbox.credentials(sandbox.researcher)) as client:
        card = client.identity.card
        document = {
            "applicant": card,
            "organisation": "Lung Survival Group",
            "persons": (card,),
            "purposes": (Purpose.SCIENTIFIC_RESEARCH,),
            "description": "Survival by sex in lung cancer, from age and sex only.",
            "datasets": (
                DatasetRequest(dataset="lung", variables=("age", "sex"), release="exact"),
            ),
            "task_types": ("kaplan_meier",),
            "period_start": today,
            "period_end": today + datetime.timedelta(days=365),
        }
        application = DataAccessApplication(**{**document, **fields})
        return str(client.submit_application(application).application_id)


def widen(document: dict[str, Any]) -> None:
    """What a compromised coordinator changes: every column, pseudonymised rows."""
    document["access"] = "pseudonymised"
    document["datasets"][0]["variables"] = None


def tamper_application(
    database: Engine, application_id: str, change: Callable[[dict[str, Any]], None]
) -> None:
    with DbSession(database) as db, db.begin():
        row = db.get(ApplicationRow, application_id)
        assert row is not None
        document = json.loads(row.document)
        change(document)
        row.document = json.dumps(document)


def reviewed(body: Console, application_id: str) -> str:
    """What the review page's form says the body read (the application's fingerprint)."""
    page = body[0].get(f"/applications/{application_id}").text
    found = re.search(r'name="reviewed" value="([^"]+)"', page)
    assert found is not None, page
    return found.group(1)


def draft(
    body: Console, application_id: str, permit_id: str, read: str | None = None
) -> httpx.Response:
    """The review page's "Preview the permit" form, as the body sends it having read the
    application (``read``: the fingerprint of an earlier reading)."""
    client, keys = body
    form = {
        "csrf": keys.csrf(),
        "permit_id": permit_id,
        "reviewed": read if read is not None else reviewed(body, application_id),
    }
    return client.post(f"/applications/{application_id}/draft", data=form)


def previewed(page: str) -> str:
    """The permit JSON the preview page's "Sign and publish" form carries."""
    found = re.search(r'name="permit_json" value="([^"]*)"', page)
    assert found is not None, page
    return html.unescape(found.group(1))


def publish(body: Console, application_id: str, permit_json: str) -> httpx.Response:
    client, keys = body
    return client.post(
        f"/applications/{application_id}/publish",
        data={"csrf": keys.csrf(), "permit_json": permit_json, "valid_hours": "24"},
        follow_redirects=False,
    )


def published(sandbox: Sandbox, permit_id: str) -> Permit:
    with DataAccessClient(sandbox.address, sandbox.credentials(HDAB)) as client:
        return client.permit(permit_id).permit


# ---- a real browser, real consoles on real ports, and a page on another local port ------


@contextmanager
def served(settings: ConsoleSettings) -> Iterator[tuple[str, ConsoleKeys]]:
    """A console served by uvicorn on 127.0.0.1 in this process (so a defence can be patched
    away), with its address and keys."""
    keys = ConsoleKeys()
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    config = uvicorn.Config(create_app(settings, keys), log_level="warning", access_log=False)
    running = uvicorn.Server(config)
    thread = threading.Thread(target=running.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not running.started:
        assert time.monotonic() < deadline, "the console did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}{keys.root}", keys
    finally:
        running.should_exit = True
        thread.join(10)
        listener.close()


class Attacker:
    """Another local user's web server on another port of 127.0.0.1: pages set by the test,
    and the Cookie header of every request the browser sends it."""

    def __init__(self) -> None:
        self.pages: dict[str, str] = {}
        self.cookies: list[str] = []
        attacker = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *_args: Any) -> None:
                pass

            def do_GET(self) -> None:
                attacker.cookies.append(self.headers.get("Cookie") or "")
                path, _, query = self.path.partition("?")
                if path == "/redirect":
                    self.send_response(302)
                    self.send_header("Location", parse_qs(query)["to"][0])
                    self.end_headers()
                    return
                page = attacker.pages.get(path)
                self.send_response(200 if page is not None else 404)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.end_headers()
                self.wfile.write((page or "").encode())

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, host: str, path: str) -> str:
        """``host`` 127.0.0.1: the console's own site (another port); localhost: another site."""
        return f"http://{host}:{self.port}{path}"


@pytest.fixture(scope="module")
def attacker() -> Iterator[Attacker]:
    page = Attacker()
    yield page
    page.server.shutdown()
    page.server.server_close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="the browser tests need Playwright"
    )
    executable = chromium_path()
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, headless=True)
        yield launched
        launched.close()


@contextmanager
def signed_in(browser: Any, base: str, keys: ConsoleKeys) -> Iterator[Any]:
    """A tab of the console's user, signed in with the printed link."""
    context = browser.new_context()
    context.set_default_timeout(10_000)
    try:
        page = context.new_page()
        page.goto(f"{base}/?token={keys.token}")
        assert "Skip to content" in page.content(), "the link did not sign in"
        yield page
    finally:
        context.close()


def auto_submit(action: str) -> str:
    """An attacker's page that posts a form to ``action`` as soon as it opens."""
    return (
        f'<form id="f" method="post" action="{action}"><input name="csrf" value="guessed">'
        '</form><script>document.getElementById("f").submit()</script>'
    )


def landed(page: Any, base: str) -> str:
    """The console's answer the tab lands on after the attacker's page posted to it."""
    page.wait_for_url(re.compile("^" + re.escape(base) + "/"))
    page.wait_for_load_state("load")
    return str(page.text_content("body") or "")


NO_SESSION = "open the console with the link"
NO_CSRF = "CSRF token missing or wrong"


class _NoSameSite(RedirectResponse):
    """The token's redirect setting a cookie any site's requests carry (SameSite=None)."""

    def set_cookie(self, key: str, value: str = "", **options: Any) -> None:
        super().set_cookie(key, value, **{**options, "samesite": "none", "secure": True})


class _EveryPath(RedirectResponse):
    """The token's redirect setting a cookie for every path of the host."""

    def set_cookie(self, key: str, value: str = "", **options: Any) -> None:
        super().set_cookie(key, value, **{**options, "path": "/"})


def _any_form(self: ConsoleKeys, value: str) -> bool:
    return True


# ---- (a) a web page in the same browser ---------------------------------------------------


def _approve_from(
    browser: Any, attacker: Attacker, settings: ConsoleSettings, node_config: Path, host: str
) -> tuple[str, str]:
    """The attacker's page at ``host`` posts "approve" to a signed-in console: the page the
    browser lands on, and the task's state."""
    run_id = pending(node_config)
    with served(settings) as (base, keys), signed_in(browser, base, keys) as page:
        attacker.pages["/approve"] = auto_submit(f"{base}/approvals/{run_id}/approve")
        page.goto(attacker.url(host, "/approve"))
        answer = landed(page, base)
    return answer, state_of(node_config, run_id)


def test_a_form_on_another_site_cannot_approve_a_task(
    browser: Any,
    attacker: Attacker,
    operator_settings: ConsoleSettings,
    node_config: Path,
    monkeypatch,
) -> None:
    """A page of another site posts "approve run N" to the operator's console: the session
    cookie (SameSite=Strict) is not sent, and the form has no CSRF token. Either alone stops
    it; without both, the page approves a task the operator never saw."""

    def attack() -> tuple[str, str]:
        return _approve_from(browser, attacker, operator_settings, node_config, "localhost")

    answer, state = attack()
    assert NO_SESSION in answer and state == "pending"

    with monkeypatch.context() as patch:  # no CSRF check: Strict keeps the cookie home
        patch.setattr(ConsoleKeys, "csrf_ok", _any_form)
        answer, state = attack()
        assert NO_SESSION in answer and state == "pending"

    with monkeypatch.context() as patch:  # no SameSite: the cookie goes, CSRF refuses
        patch.setattr(security, "RedirectResponse", _NoSameSite)
        answer, state = attack()
        assert NO_CSRF in answer and state == "pending"

    with monkeypatch.context() as patch:  # both gone: the other site approves the task
        patch.setattr(security, "RedirectResponse", _NoSameSite)
        patch.setattr(ConsoleKeys, "csrf_ok", _any_form)
        answer, state = attack()
        assert state == "approved", answer


def test_a_form_on_another_local_port_is_stopped_by_the_csrf_token(
    browser: Any,
    attacker: Attacker,
    operator_settings: ConsoleSettings,
    node_config: Path,
    monkeypatch,
) -> None:
    """A page served from another port of 127.0.0.1 (a notebook, a dev server, another
    user's program) is the console's own *site*: SameSite=Strict lets the cookie go with its
    form. Only the CSRF token stops it; without it the page approves the task."""

    def attack() -> tuple[str, str]:
        return _approve_from(browser, attacker, operator_settings, node_config, "127.0.0.1")

    answer, state = attack()
    assert NO_CSRF in answer and state == "pending"

    monkeypatch.setattr(ConsoleKeys, "csrf_ok", _any_form)
    answer, state = attack()
    assert state == "approved", answer


def test_the_console_cannot_be_framed_under_a_decoy(
    browser: Any,
    attacker: Attacker,
    operator_settings: ConsoleSettings,
    node_config: Path,
    monkeypatch,
) -> None:
    """Clickjacking: a page on another local port (same site, so the cookie goes) frames
    the Approvals page under a decoy and has the operator click "Approve run N". The
    frame-ancestors / X-Frame-Options headers keep the console out of any frame; without
    them the click approves the task. From another site the Strict cookie alone stops it."""

    def attack(host: str) -> tuple[bool, str]:
        run_id = pending(node_config)
        with served(operator_settings) as (base, keys), signed_in(browser, base, keys) as page:
            attacker.pages["/prize"] = (
                "<p>Click the button to claim your prize</p>"
                f'<iframe src="{base}/approvals" width="1200" height="2000"></iframe>'
            )
            page.goto(attacker.url(host, "/prize"))
            page.wait_for_load_state("load")
            button = page.frame_locator("iframe").get_by_role(
                "button", name=f"Approve run {run_id}"
            )
            try:
                button.wait_for(timeout=1_500)
            except Exception:  # the frame shows no console page: nothing to click
                return False, state_of(node_config, run_id)
            button.click()
            landed_in_frame = page.frame_locator("iframe").get_by_text(f"run {run_id} approved")
            landed_in_frame.wait_for()
        return True, state_of(node_config, run_id)

    assert attack("127.0.0.1") == (False, "pending")

    monkeypatch.setattr(security, "SECURITY_HEADERS", [])
    assert attack("localhost") == (False, "pending")  # another site: the cookie stays home
    assert attack("127.0.0.1") == (True, "approved")  # same site, no headers: clickjacked


def test_every_answer_forbids_framing_sniffing_caching_and_referrers(
    operator: Console, operator_settings: ConsoleSettings
) -> None:
    """The headers that keep pages out of frames and out of other sites' hands, on every
    answer: pages, refusals before any session, redirects, missing pages."""
    client, keys = operator
    stranger = TestClient(client.app, base_url=LOCAL + client.app.keys.root)
    fresh = ConsoleKeys()
    newcomer = TestClient(create_app(operator_settings, fresh), base_url=LOCAL + fresh.root)
    answers = {
        "sign-in": newcomer.get(f"/?token={fresh.token}", follow_redirects=False),
        "page": client.get("/approvals"),
        "missing": client.get("/no-such-page"),
        "no session": stranger.get("/approvals"),
        "other host": stranger.get("/", headers={"host": "evil.example"}),
        "decision": client.post(
            "/approvals/1/approve", data={"csrf": keys.csrf()}, follow_redirects=False
        ),
    }
    for what, answer in answers.items():
        headers = answer.headers
        assert "frame-ancestors 'none'" in headers.get("content-security-policy", ""), what
        assert headers.get("x-frame-options") == "DENY", what
        assert headers.get("referrer-policy") == "no-referrer", what
        assert headers.get("x-content-type-options") == "nosniff", what
        assert headers.get("cache-control") == "no-store", what


def test_dns_rebinding_reads_nothing(operator: Console, node_config: Path, monkeypatch) -> None:
    """A page of evil.example whose name the attacker re-points to 127.0.0.1 is the same
    origin as its own address: its requests reach the console with Host: evil.example (and
    without the 127.0.0.1 cookie). The host check refuses them first; the session check
    would too; without both, the page reads the console and approves a task."""
    client, _ = operator
    rebound = TestClient(client.app, base_url="http://evil.example:8000" + client.app.keys.root)
    run_id = pending(node_config)

    answer = rebound.get("/approvals")
    assert answer.status_code == 421 and "evil.example" in answer.text

    monkeypatch.setattr(
        security, "LOCAL_HOSTS", frozenset({"127.0.0.1", "localhost", "evil.example"})
    )
    assert rebound.get("/approvals").status_code == 403  # the session check holds too

    monkeypatch.setattr(ConsoleKeys, "session_ok", lambda self, cookie: True)
    page = rebound.get("/approvals")
    assert page.status_code == 200 and f"Approve run {run_id}" in page.text
    csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', page.text)
    assert csrf is not None
    rebound.post(f"/approvals/{run_id}/approve", data={"csrf": csrf.group(1)})
    assert state_of(node_config, run_id) == "approved"


def test_decisions_need_this_sessions_csrf_token_and_a_post(
    operator: Console, operator_settings: ConsoleSettings, node_config: Path, monkeypatch
) -> None:
    """Approve and reject, sent with the session cookie (a same-site page's form) but without
    the page's CSRF token, or with another console session's token, or as a GET (a link, an
    image): none is recorded. Without the CSRF check both forms are."""
    client, _ = operator
    other = ConsoleKeys()
    other.redeem(other.token)
    approve, reject = pending(node_config), pending(node_config)
    tries = [
        (f"/approvals/{approve}/approve", {}),
        (f"/approvals/{approve}/approve", {"csrf": other.csrf()}),
        (f"/approvals/{reject}/reject", {"reason": "not now"}),
        (f"/approvals/{reject}/reject", {"csrf": other.csrf(), "reason": "not now"}),
    ]
    for path, form in tries:
        assert client.post(path, data=form).status_code == 403, path
    assert client.get(f"/approvals/{approve}/approve").status_code == 405
    assert state_of(node_config, approve) == state_of(node_config, reject) == "pending"

    monkeypatch.setattr(ConsoleKeys, "csrf_ok", _any_form)
    for path, form in tries[::2]:
        client.post(path, data=form)
    assert state_of(node_config, approve) == "approved"
    assert state_of(node_config, reject) == "rejected"


# ---- (b) another local user or program, without the link ----------------------------------


def test_without_the_link_nothing_is_read_or_decided(
    operator: Console, node_config: Path, monkeypatch
) -> None:
    """Any local program can reach 127.0.0.1: without the session cookie it reads no page
    and decides nothing. Without the session check it reads the Approvals page, takes the
    CSRF token from it, and approves."""
    client, keys = operator
    local = TestClient(client.app, base_url=LOCAL + client.app.keys.root)
    run_id = pending(node_config)

    assert local.get("/approvals").status_code == 403
    assert local.get("/static/console.js").status_code == 403
    refused = local.post(f"/approvals/{run_id}/approve", data={"csrf": keys.csrf()})
    assert refused.status_code == 403 and state_of(node_config, run_id) == "pending"

    monkeypatch.setattr(ConsoleKeys, "session_ok", lambda self, cookie: True)
    page = local.get("/approvals")
    csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', page.text)
    assert csrf is not None
    local.post(f"/approvals/{run_id}/approve", data={"csrf": csrf.group(1)})
    assert state_of(node_config, run_id) == "approved"


def test_the_link_works_once_and_its_cookie_is_locked_down(
    operator_settings: ConsoleSettings, monkeypatch
) -> None:
    """The printed link signs in one browser, once: a second visit with it (shell history, a
    screen share, browser history) is refused, and so are wrong tokens (without using the
    token up). The cookie is HttpOnly and SameSite=Strict, and the redirect drops the token
    from the address. Without the once-only check, the second visitor is in."""
    keys = ConsoleKeys()
    app = create_app(operator_settings, keys)
    link = f"/?token={keys.token}"
    base = LOCAL + keys.root

    guess = TestClient(app, base_url=base).get("/?token=" + secrets.token_urlsafe(32))
    assert guess.status_code == 403

    first = TestClient(app, base_url=base)
    signed = first.get(link, follow_redirects=False)
    assert signed.status_code == 307 and "token" not in signed.headers["location"]
    cookie = signed.headers["set-cookie"].lower()
    assert (
        "httponly" in cookie
        and "samesite=strict" in cookie
        and f"path={keys.root.lower()}" in cookie
    )
    assert first.get("/approvals").status_code == 200

    second = TestClient(app, base_url=base)
    assert second.get(link).status_code == 403
    assert second.get("/approvals").status_code == 403

    def every_time(self: ConsoleKeys, token: str) -> str | None:
        if not hmac.compare_digest(token, self.token):
            return None
        self._session = self._session or secrets.token_urlsafe(32)
        return self._session

    monkeypatch.setattr(ConsoleKeys, "redeem", every_time)
    third = TestClient(app, base_url=base)
    third.get(link)
    assert third.get("/approvals").status_code == 200


def test_a_session_ends_with_its_console(operator_settings: ConsoleSettings) -> None:
    """A restarted console makes a new token and session: the old cookie opens nothing.
    (Kept keys, as a console that saved its session would, let the old cookie in.)"""
    keys = ConsoleKeys()
    before = TestClient(create_app(operator_settings, keys), base_url=LOCAL + keys.root)
    before.get(f"/?token={keys.token}")
    cookie = before.cookies[security.SESSION_COOKIE]

    restarted = TestClient(
        create_app(operator_settings, fresh_keys := ConsoleKeys()), base_url=LOCAL + fresh_keys.root
    )
    restarted.cookies.set(security.SESSION_COOKIE, cookie, domain="127.0.0.1")
    assert restarted.get("/approvals").status_code == 403

    kept = TestClient(create_app(operator_settings, keys), base_url=LOCAL + keys.root)
    kept.cookies.set(security.SESSION_COOKIE, cookie, domain="127.0.0.1")
    assert kept.get("/approvals").status_code == 200


def test_the_browser_is_not_handed_the_token_on_its_command_line(
    operator_settings: ConsoleSettings, monkeypatch
) -> None:
    opened: list[str] = []
    printed: list[str] = []
    monkeypatch.setattr(server.webbrowser, "open", lambda url, *a, **k: opened.append(url))
    monkeypatch.setattr(server.uvicorn.Server, "run", lambda self, sockets=None: None)
    server.serve(operator_settings, open_browser=True, announce=printed.append)
    token = parse_qs(urlsplit(printed[0]).query)["token"][0]
    assert len(opened) == 1
    assert token not in opened[0], f"the browser's command line holds the token: {opened[0]}"


def test_a_page_on_another_local_port_cannot_take_the_session(
    browser: Any,
    attacker: Attacker,
    operator_settings: ConsoleSettings,
    node_config: Path,
    monkeypatch,
) -> None:
    """Another local user's web server, on another port of 127.0.0.1, gets the console's
    user to open one of its pages. Cookies are not kept apart by port, but the session
    cookie is limited to the console's random root path, so the browser does not send it
    there. With the cookie on every path, the server takes the session and approves."""

    def attack() -> tuple[str, str]:
        run_id = pending(node_config)
        with served(operator_settings) as (base, keys), signed_in(browser, base, keys) as page:
            attacker.pages["/"] = '<p>Nothing to see</p><img src="/pixel.png" alt="">'
            attacker.cookies.clear()
            local_page = attacker.url("127.0.0.1", "/")
            page.goto(attacker.url("localhost", "/redirect?to=" + quote(local_page, safe="")))
            page.wait_for_load_state("load")
            taken = "; ".join(c for c in attacker.cookies if c)
            with httpx.Client(base_url=base, headers={"Cookie": taken} if taken else {}) as thief:
                csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', thief.get("/approvals").text)
                if csrf is not None:
                    thief.post(f"/approvals/{run_id}/approve", data={"csrf": csrf.group(1)})
        return taken, state_of(node_config, run_id)

    taken, state = attack()
    assert state == "pending", f"approved with the cookie {taken!r}"

    monkeypatch.setattr(security, "RedirectResponse", _EveryPath)
    taken, state = attack()
    assert security.SESSION_COOKIE in taken and state == "approved"


def test_a_malformed_token_is_refused_not_a_server_error(
    operator_settings: ConsoleSettings,
) -> None:
    keys = ConsoleKeys()
    client = TestClient(
        create_app(operator_settings, keys),
        base_url=LOCAL + keys.root,
        raise_server_exceptions=False,
    )
    assert client.get("/?token=%C3%A9").status_code == 403
    client.get(f"/?token={keys.token}")
    assert client.post("/approvals/1/approve", data={"csrf": "\u00e9"}).status_code == 403


# ---- (c) a malicious researcher's words, (d) a compromised coordinator's answers ----------


def assert_escaped(page: httpx.Response, what: str) -> None:
    """The attacker's markup reached the page (escaped), and not as markup."""
    assert not any(raw in page.text for raw in RAW), f"{what}: markup reached the page"
    assert any(escaped in page.text for escaped in ESCAPED), f"{what}: the vector did not arrive"


def assert_injected(page: httpx.Response, what: str) -> None:
    assert any(raw in page.text for raw in RAW), f"{what}: no markup reached the page"


@pytest.fixture
def unescaped(monkeypatch) -> Callable[[ConsoleSettings], Any]:
    """A console whose templates do not escape (the defence taken away)."""
    monkeypatch.setattr(console_pages, "select_autoescape", lambda *a, **k: False)
    return console_client


def test_operator_pages_show_a_researchers_markup_as_text(
    operator: Console, operator_settings: ConsoleSettings, node_config: Path, unescaped
) -> None:
    """Task type, dataset, permit, researcher and parameters of a waiting task come from
    the researcher's signed task; a rejection's reason and a notice in the address too."""
    waiting = pending(node_config, SCRIPT)
    rejected = pending(node_config, "lung")
    governance(node_config).decide(rejected, "rejected", SCRIPT)
    client, _ = operator
    for path in ("/approvals", "/approvals?notice=" + quote(SCRIPT)):
        assert_escaped(client.get(path), path)
    assert f"Run {waiting}" in client.get("/approvals").text

    with unescaped(operator_settings) as (bare, _):
        assert_injected(bare.get("/approvals"), "/approvals without escaping")


@pytest.fixture(scope="module")
def hostile_application(sandbox: Sandbox, database: Engine) -> Iterator[tuple[str, str]]:
    """A researcher's application with markup in its words, and one a compromised
    coordinator made up (markup in its id, state, applicant, history and document); while
    it is used, the node's dataset in the catalogue has a column named with markup."""
    filed = file_application(
        sandbox,
        organisation=SCRIPT,
        description=f"Survival by sex in lung cancer {SCRIPT}",
        datasets=(DatasetRequest(dataset="lung", cohorts={"old": SCRIPT}, release="exact"),),
    )
    with DbSession(database) as db, db.begin():
        real = db.get(ApplicationRow, filed)
        assert real is not None
        document = json.loads(real.document)
        document["datasets"][0]["dataset"] = SCRIPT
        document["datasets"][0]["variables"] = [SCRIPT]
        now = time.time()
        db.add(
            ApplicationRow(
                application_id=IMAGE,
                applicant=SCRIPT,
                state=SCRIPT,
                document=json.dumps(document),
                history=json.dumps([{"at": now, "by": SCRIPT, "state": SCRIPT, "note": SCRIPT}]),
                permit_id=None,
                created_at=now,
                updated_at=now,
            )
        )
        node = db.scalars(select(NodeRow)).one()
        node_id, declared = node.node_id, node.datasets
        schema = json.loads(declared)
        schema["lung"]["columns"][SCRIPT] = {"type": SCRIPT, "categories": [SCRIPT]}
        node.datasets = json.dumps(schema)
    yield filed, IMAGE
    with DbSession(database) as db, db.begin():
        restored = db.get(NodeRow, node_id)
        assert restored is not None
        restored.datasets = declared


def test_body_pages_show_researcher_and_coordinator_markup_as_text(
    sandbox: Sandbox, body: Console, hostile_application: tuple[str, str], unescaped
) -> None:
    """The inbox, both review pages (the catalogue beside them included), and an error the
    coordinator words with the id asked for: every one escapes the markup."""
    filed, made_up = hostile_application
    client, _ = body
    pages = {
        "inbox": "/",
        "researcher's application": f"/applications/{filed}",
        "coordinator's application": "/applications/" + quote(made_up, safe=""),
        "coordinator's error": "/applications/" + quote(IMAGE + "x", safe=""),
    }
    for what, path in pages.items():
        assert_escaped(client.get(path), what)
    review = client.get(pages["researcher's application"]).text
    assert f'<th scope="row">{escape(SCRIPT)}</th>' in review  # the catalogue's column
    assert f"old: <code>{escape(SCRIPT)}</code>" in review  # the researcher's cohort rule

    settings = console_settings(sandbox.credentials(HDAB), sandbox.address, None)
    with unescaped(settings) as (bare, _):
        for what, path in pages.items():
            assert_injected(bare.get(path), f"{what} without escaping")


@pytest.fixture(scope="module")
def hostile_task(researcher_settings: ConsoleSettings) -> str:
    """A task whose id (the coordinator chose it), permit and parameters carry markup, with
    its result kept, as the researcher's console keeps one."""
    log = TaskLog(researcher_settings.state_dir)
    log.add(SubmittedTask(IMAGE, "histogram", SCRIPT, {"column": SCRIPT}, time.time()))
    result = HistogramResult(
        dataset="lung",
        column=SCRIPT,
        edges=[40.0, 55.0, 70.0, 85.0],
        counts=[50, 120, 55],
        below=2,
        above=0,
        missing=1,
        n=228,
        rows_missing_by_node={"centre-a": 1},
        nodes=["centre-a"],
    )
    log.keep_result(IMAGE, result.model_dump_json())
    return IMAGE


def test_researcher_pages_show_coordinator_ids_and_parameters_as_text(
    researcher: Console, researcher_settings: ConsoleSettings, hostile_task: str, unescaped
) -> None:
    client, _ = researcher
    pages = {"tasks": "/tasks", "task": "/tasks/" + quote(hostile_task, safe="")}
    for what, path in pages.items():
        assert_escaped(client.get(path), what)

    with unescaped(researcher_settings) as (bare, _):
        for what, path in pages.items():
            assert_injected(bare.get(path), f"{what} without escaping")


def test_task_ids_cannot_name_a_file_outside_the_results_folder(
    tmp_path: Path, monkeypatch
) -> None:
    """Task ids come from the coordinator; the console keeps each result in a file named
    after it. A ``../`` id stays in the results folder; without the cleaning it escapes."""
    log = TaskLog(tmp_path / "console")
    log.keep_result("../../escaped", "{}")
    assert not (tmp_path / "escaped.json").exists()
    assert log.result("../../escaped") == "{}"

    def naive(self: TaskLog, task_id: str) -> Path:
        return self.folder / RESULTS_FOLDER / f"{task_id}.json"

    monkeypatch.setattr(TaskLog, "_result_path", naive)
    log.keep_result("../../escaped", "{}")
    assert (tmp_path / "escaped.json").exists()


def test_publish_signs_the_previewed_permit_not_the_coordinators_new_copy(
    sandbox: Sandbox, body: Console, database: Engine, monkeypatch
) -> None:
    """The body previews a permit for age and sex, anonymised; the coordinator then widens
    the application it holds (every column, pseudonymised). "Sign and publish" signs the
    permit the preview showed. Signing a new draft of the coordinator's copy instead (as
    the console first did) signs the widened permit."""

    def attack(permit_id: str) -> Permit:
        application_id = file_application(sandbox)
        preview = draft(body, application_id, permit_id)
        assert preview.status_code == 200, preview.text
        tamper_application(database, application_id, widen)
        answer = publish(body, application_id, previewed(preview.text))
        assert answer.status_code == 303, answer.text
        return published(sandbox, permit_id)

    signed = attack("held-to-the-preview")
    assert signed.access == "anonymised" and signed.datasets[0].variables == ("age", "sex")

    def redrafted(permit_json: str, issuer: Any) -> Permit:
        shown = Permit.model_validate_json(permit_json)
        with DataAccessClient(sandbox.address, sandbox.credentials(HDAB)) as client:
            record = client.application(shown.application_id)
            identity = client.identity
        application = DataAccessApplication.model_validate_json(record.application_json)
        return draft_permit(
            application,
            identity,
            permit_id=shown.permit_id,
            application_id=record.application_id,
        )

    monkeypatch.setattr(body_pages, "_previewed", redrafted)
    signed = attack("redrafted-at-publish")
    assert signed.access == "pseudonymised" and signed.datasets[0].variables is None


def test_the_preview_drafts_the_application_the_body_reviewed(
    sandbox: Sandbox, body: Console, database: Engine, monkeypatch
) -> None:
    """The body reads an application (age and sex, anonymised) on its review page; the
    coordinator widens it (every column, pseudonymised); the body presses "Preview the
    permit". The preview is refused as of another application. Without the fingerprint of
    what the body read, it drafts the widened permit."""

    def attack(permit_id: str) -> httpx.Response:
        application_id = file_application(sandbox)
        review = body[0].get(f"/applications/{application_id}")
        assert "age, sex" in review.text and "anonymised" in review.text
        read = reviewed(body, application_id)
        tamper_application(database, application_id, widen)
        return draft(body, application_id, permit_id, read)

    refused = attack("swapped-before-preview")
    assert refused.status_code == 400 and "application.changed" in refused.text

    monkeypatch.setattr(body_pages, "_fingerprint", lambda _json: "the same")
    widened = Permit.model_validate_json(previewed(attack("swapped-unnoticed").text))
    assert widened.access == "pseudonymised" and widened.datasets[0].variables is None


@pytest.fixture(scope="module")
def forged_permits_page(sandbox: Sandbox, body: Console, database: Engine) -> str:
    """A permit the body signed and published through its console, then changed in the
    coordinator's database (another holder, valid for decades), without a new signature."""
    application_id = file_application(sandbox)
    preview = draft(body, application_id, "forged-in-the-database")
    assert publish(body, application_id, previewed(preview.text)).status_code == 303
    with DbSession(database) as db, db.begin():
        row = db.get(PermitRow, "forged-in-the-database")
        assert row is not None
        signed = json.loads(row.signed_json)
        signed["permit"]["holder"] = "Forged Holder Ltd"
        signed["permit"]["valid_until"] = "2099-01-01T00:00:00Z"
        row.signed_json = json.dumps(signed)
    page = body[0].get("/permits")
    assert page.status_code == 200, page.text
    assert "Forged Holder Ltd" in page.text
    return page.text


def _forged_rows(page: str) -> list[str]:
    rows = re.findall(r"<tr>(.*?)</tr>", page, flags=re.S)
    words = [" ".join(re.sub(r"<[^>]+>", " ", row).split()) for row in rows]
    return [row for row in words if "Forged Holder Ltd" in row]


def test_the_permits_page_shows_only_what_the_body_signed(
    forged_permits_page: str, body: Console, monkeypatch
) -> None:
    """The changed permit is flagged, not shown in force; without the signature check
    (the coordinator's copies taken as they come) it is in force."""
    forged = _forged_rows(forged_permits_page)
    assert forged and all("not as signed" in row for row in forged), forged

    monkeypatch.setattr(SignedPermit, "verified", lambda self, *a, **k: self.permit)
    trusting = _forged_rows(body[0].get("/permits").text)
    assert trusting and all(row.endswith("in force") for row in trusting), trusting


@pytest.fixture(scope="module")
def smuggled_download(researcher: Console, researcher_settings: ConsoleSettings) -> httpx.Response:
    """A result whose task id, as the coordinator chose it, closes the file name's quotes."""
    task_id = "x\"; filename*=UTF-8''pwned.html; y=\""
    log = TaskLog(researcher_settings.state_dir)
    log.add(SubmittedTask(task_id, "histogram", "p", {"column": "age"}, time.time()))
    result = HistogramResult(
        dataset="lung",
        column="age",
        edges=[40.0, 70.0],
        counts=[10],
        below=0,
        above=0,
        missing=0,
        n=10,
        rows_missing_by_node={"centre-a": 0},
        nodes=["centre-a"],
    )
    log.keep_result(task_id, result.model_dump_json())
    answer = researcher[0].get("/tasks/" + quote(task_id, safe="") + "/result.csv")
    assert answer.status_code == 200, answer.text
    return answer


def test_a_task_id_cannot_name_the_download(smuggled_download: httpx.Response) -> None:
    disposition = smuggled_download.headers["content-disposition"]
    assert re.fullmatch(r'attachment; filename="[A-Za-z0-9._-]+\.csv"', disposition), disposition
