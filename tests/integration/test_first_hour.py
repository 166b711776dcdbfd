"""A data-access body's first hour with application ids (issue 16): each id whole at 80
columns, any unique start of one names it, and a start several share is refused.

Each command line goes through a shell, as a person types it: the installed
`oncofed` against a real coordinator and real node processes, on an 80-column
terminal (the width rich assumes when output is piped, too). The guide's own
walk, from `pki request` to the researcher's query on a new network, runs as
tests/docs/test_data_access_bodies_guide.py.
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from oncofed.client.access import DataAccessClient
from oncofed.client.sandbox import HDAB, Sandbox
from oncofed.governance.keys import Identity
from oncofed.governance.permits import DataAccessApplication, Permit, SignedRevocations
from oncofed.kernel.errors import ExitCode

pytestmark = pytest.mark.slow  # a network of five processes, and a dozen `oncofed` runs

INSTALLED = Path(sys.executable).parent  # where `pip install` put the `oncofed` command


class NewNetwork(Sandbox):
    """A sandbox whose data-access body has published nothing yet.

    ``Sandbox.start`` publishes the body's first revocation list so that its own
    sessions work at once; a body following the guide has no list until one of
    the guide's commands makes it, and that is the state to test from.
    """

    _starting = False

    def start(self) -> None:
        self._starting = True
        try:
            super().start()
        finally:
            self._starting = False

    def publish_revocations(self, *args: Any, **kwargs: Any) -> SignedRevocations:
        if self._starting:
            return None  # type: ignore[return-value]
        return super().publish_revocations(*args, **kwargs)


@pytest.fixture(scope="module")
def net(lung: pd.DataFrame) -> Iterator[Sandbox]:
    with NewNetwork.from_frame(lung, split_by="centre", dataset="lung") as sandbox:
        sandbox.enrol("mallory", "researcher")
        yield sandbox


def typed(net: Sandbox, who: str, line: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``line`` run by a shell at 80 columns, as ``who`` with the coordinator and
    credentials exported, as the guide's readers set them up."""
    env = {
        **os.environ,
        "PATH": f"{INSTALLED}{os.pathsep}{os.environ.get('PATH', '')}",
        "COLUMNS": "80",
        "ONCOFED_COORDINATOR": net.address,
        "ONCOFED_CREDENTIALS": str(net.credentials(who)),
    }
    env.pop("ONCOFED_PERMIT", None)
    return subprocess.run(
        line, shell=True, capture_output=True, text=True, timeout=180, env=env, cwd=cwd
    )


def guide_application(net: Sandbox, researcher: str = "") -> dict[str, object]:
    """The guide's example application, with the researcher's card and a current period."""
    card = json.loads((net.credentials(researcher or net.researcher) / "card.json").read_text())
    today = datetime.date.today()
    return {
        "applicant": card,
        "organisation": "Example University Hospital",
        "persons": [card],
        "purposes": ["e-scientific-research"],
        "description": "Survival of lung cancer by sex: Kaplan-Meier at 90-day time points.",
        "datasets": [
            {"dataset": "lung", "variables": ["age", "sex", "time", "status"], "epsilon": 2.0}
        ],
        "task_types": ["describe", "kaplan_meier"],
        "access": "anonymised",
        "period_start": str(today - datetime.timedelta(days=1)),
        "period_end": str(today + datetime.timedelta(days=365)),
    }


def test_ids_are_whole_at_80_columns_and_any_unique_start_names_one(
    net: Sandbox, tmp_path: Path
) -> None:
    document = DataAccessApplication.model_validate(guide_application(net))
    ids: list[str] = []
    with DataAccessClient(net.address, net.credentials(net.researcher)) as client:
        # Until two ids share a first character (17 at most): an ambiguous start to type.
        while len({i[0] for i in ids}) == len(ids):
            ids.append(client.submit_application(document).application_id)
    shared = next(i[0] for i in ids if sum(j[0] == i[0] for j in ids) > 1)
    (tmp_path / "application.json").write_text(document.model_dump_json())

    listing = typed(net, HDAB, "oncofed application list", tmp_path)
    assert listing.returncode == ExitCode.OK, listing.stderr
    lines = listing.stdout.splitlines()
    for application_id in ids:
        assert any(application_id in line for line in lines), listing.stdout

    ambiguous = typed(net, HDAB, f"oncofed application show {shared}", tmp_path)
    assert ambiguous.returncode == ExitCode.REFUSED
    assert "rule: application.ambiguous" in ambiguous.stderr
    assert "Fix: type more of the id (`oncofed application list`" in ambiguous.stderr
    assert len(ambiguous.stderr.strip().splitlines()) == 1 and ambiguous.stdout == ""
    for application_id in ids:
        if application_id[0] == shared:
            assert application_id in ambiguous.stderr
    nothing = typed(net, HDAB, "oncofed application show 0ff-no-such-id", tmp_path)
    assert nothing.returncode == ExitCode.REFUSED
    assert "rule: application.exists" in nothing.stderr and nothing.stdout == ""

    # Decisions, amendments and drafts take any unique start of an id as well ...
    unique = ids[0]
    start = next(unique[:n] for n in range(1, 33) if [i[:n] for i in ids].count(unique[:n]) == 1)
    asked = typed(
        net,
        HDAB,
        f'oncofed application request-changes {start} --note "state the analysis plan"',
        tmp_path,
    )
    assert asked.returncode == ExitCode.OK, asked.stderr
    assert f"application {unique} by {net.researcher}: changes-requested" in asked.stdout
    amended = typed(
        net,
        net.researcher,
        f"oncofed application submit application.json --amends {start}",
        tmp_path,
    )
    assert amended.returncode == ExitCode.OK, amended.stderr
    assert f"application {unique} by" in amended.stdout
    body_dir = net.credentials(HDAB)
    drafting = f"oncofed permit draft application.json --permit-id p --credentials {body_dir}"
    ambiguous_draft = typed(net, HDAB, f"{drafting} --application-id {shared}", tmp_path)
    assert ambiguous_draft.returncode == ExitCode.REFUSED
    assert "rule: application.ambiguous" in ambiguous_draft.stderr

    # ... within what the caller may see: another researcher's ids do not resolve for mallory.
    stranger = typed(net, "mallory", f"oncofed application show {start}", tmp_path)
    assert stranger.returncode == ExitCode.REFUSED
    assert "rule: application.exists" in stranger.stderr

    # A permit signed with only the start of an id would publish and approve nothing:
    # the coordinator refuses it, and says how to draft it with the whole id.
    hdab = Identity.load(body_dir)
    cut = Permit.model_validate_json(
        typed(net, HDAB, f"{drafting} --application-id {unique}", tmp_path).stdout
    ).model_copy(update={"application_id": start})
    (tmp_path / "cut.signed.json").write_text(cut.sign(hdab.signing).model_dump_json())
    refused = typed(net, HDAB, "oncofed permit publish cut.signed.json", tmp_path)
    assert refused.returncode == ExitCode.REFUSED
    assert "rule: application.exists" in refused.stderr
    assert "oncofed permit draft" in refused.stderr
