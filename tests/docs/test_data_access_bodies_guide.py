"""docs/data-access-bodies.md runs as a data-access body's and a researcher's first hour.

The network is new: a coordinator and four lung cancer centres as real processes on
loopback, whose body (``hdab-fi``) has published nothing yet. The body makes its own keys
with the guide's first command (`oncofed pki request`) in its ``~/.oncofed/hdab-fi``; the
network then starts, and its CA issues the body's certificate from that request, as an
operator would (docs/operators.md). Everyone's ``HOME`` is one temporary folder, whose
``.oncofed`` holds the body's and the researchers' credentials folders.

What the guide describes but its readers do not type happens in hooks: the application
file the researcher writes, the body asking for changes before the amendment, another
researcher's application in the body's list, and which person's terminal a command is
typed in.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import select

from oncofed.client.access import REVOCATIONS_FILE, DataAccessClient
from oncofed.client.session import Session
from oncofed.coordinator.access_store import AccessStore
from oncofed.coordinator.db import TaskRow, open_database
from oncofed.governance.keys import Role
from oncofed.governance.permits import DataAccessApplication, Permit
from oncofed.governance.pki import issue
from oncofed.governance.sealing import open_sealed
from oncofed.kernel.errors import OncofedError
from oncofed.node.config import load_node_config
from tests.docs.conftest import ROOT, UPDATE
from tests.docs.markdown import Guide, blocks
from tests.integration.test_first_hour import NewNetwork

pytestmark = pytest.mark.slow  # a network of five processes, and some fifteen `oncofed` runs

GUIDE = "docs/data-access-bodies.md"
BODY = "hdab-fi"  # the guide's data-access body
PERMIT = "lung-outcomes-2026"
OFED = str(Path(sys.executable).parent / "oncofed")  # the installed command
# Ids as the guide shows them, learnt from what the commands print.
ADA_APPLICATION = "5cbb4dab76d34e8e96fe2fbf4f49ee1e"  # as `application submit` prints it
BOB_APPLICATION = "9e07c1f3a4b84d0c8a5f2d6e1b3c7a90"  # a row of the body's `application list`


class GuideNetwork(NewNetwork):
    """A new network whose people keep their credentials in ``~/.oncofed``.

    A folder that already holds a certificate request (the body's, from the guide's
    `oncofed pki request`) keeps its keys: the network's CA issues its certificate.
    """

    def __init__(self, *args: object, home: Path, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.home = home

    def credentials(self, name: str) -> Path:
        if name in (BODY, self.researcher, "bob"):
            return self.home / ".oncofed" / name
        return super().credentials(name)

    def enrol(self, name: str, role: Role, hosts: tuple[str, ...] = ()) -> Path:
        folder = self.credentials(name)
        if (folder / "tls.csr").exists():
            issue(self.pki / "ca", folder / "tls.csr")
            return folder
        return super().enrol(name, role, hosts)


@pytest.fixture
def home() -> Iterator[Path]:
    """Everyone's home: a short temporary folder, so that printed paths are one length."""
    root = Path(tempfile.mkdtemp(prefix="hdab-", dir="/tmp"))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def application(card: dict[str, object], **changes: object) -> dict[str, object]:
    """The guide's example application, with the applicant's card and a period from today."""
    (shown,) = [b for b in blocks(ROOT / GUIDE) if b.lang == "json" and '"applicant"' in b.text]
    document = json.loads(shown.text)
    today = datetime.date.today()
    document.update(
        applicant=card,
        persons=[card],
        period_start=str(today - datetime.timedelta(days=1)),
        period_end=str(today + datetime.timedelta(days=364)),
        **changes,
    )
    return document


def test_data_access_bodies_guide(
    home: Path, tmp_path: Path, lung: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("oncofed.client.sandbox.HDAB", BODY)  # the guide's body
    monkeypatch.setenv("HOME", str(home))  # for the guide's Python blocks too (`~`)
    net = GuideNetwork.from_frame(lung, split_by="centre", dataset="lung", home=home)
    made: dict[str, object] = {}  # the body's card, as the guide's `pki request` made it
    amended: dict[str, object] = {}  # ada's application, corrected as the body asked
    guide: Guide

    def card(name: str) -> dict[str, object]:
        return dict(json.loads((net.credentials(name) / "card.json").read_text()))

    def network_starts() -> None:
        """Once the body has its keys: the network, and ada's application file."""
        made.update(card(BODY))
        net.start()
        net.enrol("bob", "researcher")
        guide.values["coord.example.org:7100"] = net.address
        (tmp_path / "application.json").write_text(json.dumps(application(card("ada"))))

    def body_asks_for_changes() -> None:
        guide.values["5cbb4dab"] = guide.values[ADA_APPLICATION][:8]
        with DataAccessClient(net.address, net.credentials(BODY)) as body:
            body.decide(guide.values[ADA_APPLICATION], "request-changes", "state the analysis plan")
        plan = " Analysis plan: survival by sex at 90-day time points, up to two years."
        amended.update(application(card("ada")))
        amended["description"] = str(amended["description"]) + plan
        (tmp_path / "application.json").write_text(json.dumps(amended))

    def bob_applies() -> None:
        with DataAccessClient(net.address, net.credentials("bob")) as bob:
            bob.submit_application(
                DataAccessApplication.model_validate(
                    application(card("bob"), description="Market shares of lung cancer drugs.")
                )
            )

    def bob_short() -> None:
        guide.values["9e07c1f3"] = guide.values[BOB_APPLICATION][:8]

    def new_network() -> None:
        # The body publishes its first permit on a network that holds no list from it.
        assert not (net.credentials(BODY) / REVOCATIONS_FILE).exists()
        assert AccessStore(open_database(net.database_url)).newest_revocations(BODY) is None

    def terminal(name: str) -> None:
        guide.env["ONCOFED_CREDENTIALS"] = str(net.credentials(name))

    def body_holds_a_sealed_result() -> None:
        """A result of the researcher's, as a copy of the coordinator's database holds it;
        `oncofed task result` opens it for the body as well."""
        with open_database(net.database_url).connect() as db:
            task_id, sealed = db.execute(
                select(TaskRow.task_id, TaskRow.result).where(
                    TaskRow.permit_id == PERMIT, TaskRow.state == "succeeded"
                )
            ).first()
        guide.namespace["sealed_text"] = sealed
        fetched = subprocess.run(
            [OFED, "task", "result", task_id, "-c", net.address],
            capture_output=True,
            text=True,
            env={**os.environ, "ONCOFED_CREDENTIALS": str(net.credentials(BODY))},
            timeout=120,
        )
        assert fetched.returncode == 0, fetched.stderr
        assert json.loads(fetched.stdout) == json.loads(open_sealed(sealed, net.identity(BODY)))

    guide = Guide(
        ROOT / GUIDE,
        cwd=tmp_path,
        values={
            "/home/hdab": str(home),
            "/etc/oncofed/node.toml": str(net.node_config("centre-A")),
        },
        learn={
            ADA_APPLICATION: r"application ([0-9a-f]{32}) by ada",
            BOB_APPLICATION: r"([0-9a-f]{32}) .* bob ",
        },
        env={"HOME": str(home), "COLUMNS": "200"},
        update=UPDATE,
        before={
            "oncofed application submit application.json\n": network_starts,
            "--amends 5cbb4dab": body_asks_for_changes,
            "$ oncofed application list": bob_applies,
            "request-changes 9e07c1f3": bob_short,
            "$ oncofed permit publish": new_network,
            "$ oncofed query kaplan-meier": lambda: terminal("ada"),
            "$ oncofed permit revoke": lambda: terminal(BODY),
            "open_sealed(sealed_text": body_holds_a_sealed_result,
        },
    )
    try:
        guide.run()
        # Publishing the permit approved ada's application; bob's stays refused.
        applications = {
            view.applicant: view
            for view in AccessStore(open_database(net.database_url)).applications()
        }
        assert (applications["ada"].state, applications["ada"].permit_id) == ("approved", PERMIT)
        assert applications["bob"].state == "refused"
        # The body's own keys, made by the guide's first command, are the ones nodes trust.
        trusted = load_node_config(net.node_config("centre-A")).governance.trusted_bodies
        assert trusted == {BODY: made["signing_key"]}
        # The guide's revocation holds: the query that worked is refused now.
        with (
            pytest.raises(OncofedError) as revoked,
            Session(
                net.address,
                credentials=net.credentials("ada"),
                permit=PERMIT,
                dataset="lung",
                progress=False,
            ) as session,
        ):
            session.kaplan_meier(
                "time", "status", time_points=[90, 180, 360, 720], dp={"epsilon": 0.1}
            )
        assert revoked.value.rule == "permit.revoked", revoked.value
    finally:
        net.stop()

    assert guide.ran >= 18
    assert not guide.not_run
    body = home / ".oncofed" / BODY
    assert (body / "identity.json").stat().st_mode & 0o777 == 0o600
    assert 1500 < (body / "card.json").stat().st_size < 2100  # "about 1.8 kB"
    # `application show > application.json` wrote the application alone: the amended one.
    written = (tmp_path / "application.json").read_text()
    assert DataAccessApplication.model_validate_json(written) == (
        DataAccessApplication.model_validate(amended)
    )
    # `permit draft` signed the whole id of the application it was given the start of.
    drafted = Permit.model_validate_json((tmp_path / "permit.json").read_text())
    assert drafted.application_id == guide.values[ADA_APPLICATION]
