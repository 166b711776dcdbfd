"""docs/operators.md runs as an operator's first hour: the network's CA, a coordinator and one
centre's node as real processes on loopback, in a temporary folder standing in for the hosts.

What the guide describes but its reader does not type happens in hooks: a data-access body
and a researcher whose two tasks reach the node for approval, and files that go missing for
the `oncofed node check` errors.
"""

from __future__ import annotations

import datetime
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from oncofed.client.access import DataAccessClient, revoke
from oncofed.client.demo import lung_centres
from oncofed.client.session import Session
from oncofed.governance.keys import Identity
from oncofed.governance.permits import DatasetGrant, OutputPolicy, Permit, Purpose, utcnow
from oncofed.governance.pki import issue, request
from oncofed.kernel.errors import OncofedError
from oncofed.node.governance_state import GovernanceState
from tests.docs.conftest import ROOT, UPDATE
from tests.docs.markdown import Guide, blocks, substitute

pytestmark = pytest.mark.slow  # a coordinator, a node and some thirty `oncofed` runs

GUIDE = "docs/operators.md"
BODY_KEY = "gYPvdaGHV0zvQMVNCqaM4CqMXiWqwpzgk+F9v0XtsO0="  # trusted_bodies in the guide's node.toml
RUN_IDS = ("5069918492944248", "8231030769462961")  # the two runs the guide approves and rejects
PERMIT = "lung-outcomes-2026"
BAD_TOML = """\
name = "centre-a"
coordinator = "coord.example.org:7100"
credentials = "credentials"
foo = 1

[governance]
trusted_bodies = { "hdab-example" = "gYPvdaGHV0zvQMVNCqaM4CqMXiWqwpzgk+F9v0XtsO0=" }
"""


def wait_until(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def hosts() -> Iterator[Path]:
    """The hosts' folders (/etc, /var/lib, /srv, /secure) under one short temporary root:
    its length is fixed, so output lines holding paths wrap the same way on every run."""
    root = Path(tempfile.mkdtemp(prefix="ops-", dir="/tmp"))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


class Researcher:
    """ada, whose two tasks reach the node while its operator watches; a data-access body
    (``hdab-example``, whose key the node trusts) granted her the permit."""

    def __init__(self, root: Path, address: str, ca: Path, state_dir: Path) -> None:
        self.root = root
        self.address = address
        self.ca = ca
        self.state_dir = state_dir
        self.body_folder = root / "hdab-example"
        request(self.body_folder, "hdab", "hdab-example")  # keys now: the node config trusts them
        self.outcomes: list[OncofedError | None] = [None, None]
        self.threads: list[threading.Thread] = []

    @property
    def body_key(self) -> str:
        return Identity.load(self.body_folder).card.signing_key

    def send_two_tasks(self) -> None:
        issue(self.ca, self.body_folder / "tls.csr")
        ada = self.root / "ada"
        issue(self.ca, request(ada, "researcher", "ada"))
        body = Identity.load(self.body_folder)
        now = utcnow()
        permit = Permit(
            permit_id=PERMIT,
            version=1,
            issuer=body.card,
            holder="ada's study group",
            purposes=(Purpose.SCIENTIFIC_RESEARCH,),
            persons=(Identity.load(ada).card,),
            datasets=(DatasetGrant(dataset="lung"),),
            task_types=("describe",),
            valid_from=now - datetime.timedelta(hours=1),
            valid_until=now + datetime.timedelta(days=1),
            output=OutputPolicy(),
        )
        with DataAccessClient(self.address, self.body_folder) as client:
            client.publish_permit(permit.sign(body.signing))
            client.publish_revocations(revoke(body, self.body_folder, []))
        for index in range(2):
            thread = threading.Thread(target=self._describe, args=(ada, index), daemon=True)
            thread.start()
            self.threads.append(thread)
            # one at a time, so that the runs are listed in the guide's order
            wait_until(lambda count=index + 1: len(self._pending()) == count, timeout=90)

    def _pending(self) -> list[object]:
        state = GovernanceState.at(self.state_dir)
        try:
            return list(state.approvals("pending"))
        finally:
            state.engine.dispose()

    def _describe(self, ada: Path, index: int) -> None:
        try:
            with Session(
                self.address, credentials=ada, permit=PERMIT, dataset="lung", progress=False
            ) as session:
                session.describe(["age"], dp={"epsilon": 0.5}, bounds={"age": (18, 100)})
        except OncofedError as error:
            self.outcomes[index] = error

    def done(self) -> None:
        for thread in self.threads:
            thread.join(timeout=120)
            assert not thread.is_alive(), "a task the operator decided on did not finish"


def test_operators_guide(hosts: Path) -> None:
    port = free_port()
    etc = hosts / "etc" / "oncofed"
    etc.mkdir(parents=True)
    data = hosts / "srv" / "oncofed" / "data" / "lung.parquet"
    data.parent.mkdir(parents=True)
    centre_a = lung_centres(4).query("centre == 'centre-A'").drop(columns="centre")
    centre_a.to_parquet(data)
    (hosts / "var" / "lib" / "oncofed-coordinator").mkdir(parents=True)  # systemd's StateDirectory
    researcher = Researcher(
        hosts, f"127.0.0.1:{port}", hosts / "secure" / "oncofed-ca", hosts / "var/lib/oncofed/state"
    )
    values = {
        "/secure/oncofed-ca": f"{hosts}/secure/oncofed-ca",
        "/etc/oncofed": f"{hosts}/etc/oncofed",
        "/var/lib/oncofed": f"{hosts}/var/lib/oncofed",
        "/srv/oncofed": f"{hosts}/srv/oncofed",
        # before 127.0.0.1:7100, so that the value both share reads back as 127.0.0.1:7100
        "0.0.0.0:7100": f"127.0.0.1:{port}",
        "127.0.0.1:7100": f"127.0.0.1:{port}",
        # the coordinator's certificate names coord.example.org, here localhost
        "coord.example.org:7100": f"localhost:{port}",
        "coord.example.org": "localhost",
        "listening on port 7100": f"listening on port {port}",
        BODY_KEY: researcher.body_key,
    }
    # The guide's node.toml is the config the commands use.
    (config,) = [b for b in blocks(ROOT / GUIDE) if b.lang == "toml" and "[datasets." in b.text]
    (etc / "node.toml").write_text(substitute(config.text, values) + "\n")
    (etc / "bad.toml").write_text(BAD_TOML)

    moved: list[Path] = []

    def missing(path: Path | None) -> None:
        """Put back what a previous example moved away, and move ``path`` away."""
        while moved:
            gone = moved.pop()
            gone.with_name(gone.name + ".away").rename(gone)
        if path is not None:
            path.rename(path.with_name(path.name + ".away"))
            moved.append(path)

    guide = Guide(
        ROOT / GUIDE,
        cwd=etc,
        values=values,
        learn={run: r"^│ (\d+) +│ pending" for run in RUN_IDS},  # a row of `approvals list`
        # a wide terminal: paths here are longer than the guide's, and would wrap elsewhere
        env={"COLUMNS": "200"},
        update=UPDATE,
        before={
            "(rule: tls.credentials)": lambda: missing(etc / "credentials"),
            "(rule: data.file)": lambda: missing(data),
            "$ oncofed node start": lambda: missing(None),
            "approvals list": researcher.send_two_tasks,
            "audit verify --node": researcher.done,
        },
    )
    guide.run()

    assert guide.ran >= 25
    assert not guide.not_run
    approved, rejected = researcher.outcomes
    # approved, the task ran into the node's policy: one node is fewer than min_nodes
    assert approved is not None and approved.rule == "privacy.min_nodes", approved
    assert rejected is not None and rejected.rule == "node.approval", rejected
    assert "not before the ethics review" in str(rejected)
