"""A researcher's first hour, through the `oncofed` command and the Session (issue 16).

Real coordinator and node processes. Each refusal must say what is true and
what to change in the syntax of the interface in use: options on the command
line, keyword arguments in Python. The German Breast Cancer Study Group 2 data
(exact answers) has declared categories (``horTh``: no, yes) and integer codes
without them (``cens``); a lung network has one centre too small for any exact
answer.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator

import pandas as pd
import pytest

from oncofed.client.sandbox import Sandbox
from oncofed.kernel.errors import ExitCode, NodeRefusal, OncofedError, QueryError

# A keyword argument where the command line wants an option: `grid=30`, `permit=...`.
PYTHON_SYNTAX = re.compile(
    r"(?<![-\w])(grid|time_points|categories|permit|dataset|dp|where|bounds|rounds)="
)


@pytest.fixture(scope="module")
def gbsg_net(gbsg2: pd.DataFrame) -> Iterator[Sandbox]:
    with Sandbox.from_frame(gbsg2, split_by="centre", dataset="gbsg2", release="exact") as net:
        yield net


@pytest.fixture(scope="module")
def small_centre_net(lung: pd.DataFrame) -> Iterator[Sandbox]:
    """The demo's lung centres and one more holding 8 of centre-D's patients."""
    frame = lung.copy()
    frame.loc[frame.index[frame["centre"] == "centre-D"][:8], "centre"] = "centre-small"
    with Sandbox.from_frame(frame, split_by="centre", dataset="lung", release="exact") as net:
        yield net


def oncofed(
    net: Sandbox, *args: str, permit: str | None = "sandbox"
) -> subprocess.CompletedProcess[str]:
    """The command as the sandbox's researcher runs it, with the coordinator's address."""
    env = {"COLUMNS": "200", "PATH": "/usr/bin:/bin", **net.researcher_env()}
    if permit is None:
        env.pop("ONCOFED_PERMIT")
    return subprocess.run(
        [sys.executable, "-m", "oncofed", *args],
        capture_output=True,
        text=True,
        timeout=180,
        env={**env, "ONCOFED_COORDINATOR": net.address},
    )


def error_line(run: subprocess.CompletedProcess[str]) -> str:
    """The one error line, its soft wraps undone; nothing else on stderr."""
    assert run.returncode == ExitCode.REFUSED, run.stdout + run.stderr
    assert run.stderr.startswith("error: "), run.stderr  # no blank line before it
    return " ".join(run.stderr.split())


def test_categories_the_schema_does_not_declare_are_refused_with_the_declared_ones(
    gbsg_net: Sandbox, gbsg2: pd.DataFrame
) -> None:
    line = error_line(
        oncofed(
            gbsg_net,
            "query",
            "describe",
            "age",
            "--by",
            "horTh",
            "--categories",
            "0,1",
            "--dataset",
            "gbsg2",
        )
    )
    assert "'0', '1' not among the categories the schema declares for 'horTh': 'no', 'yes'" in line
    assert line.endswith(
        "(rule: schema.unknown_category). Fix: use the declared ones: --categories no,yes"
    )
    with gbsg_net.session(progress=False) as session:
        with pytest.raises(QueryError) as caught:
            session.describe(["age"], by="horTh", categories=["0", "1"])
        assert caught.value.fix == "use the declared ones: categories=['no', 'yes']"
        assert caught.value.node == ", ".join(gbsg_net.node_names)
        counts = session.describe(["age"], by="horTh", categories=["no", "yes"]).to_frame()["count"]
    assert counts.to_dict() == gbsg2.groupby("horTh").size().rename(lambda g: (g, "age")).to_dict()


def test_categories_no_row_falls_in_are_refused_instead_of_empty_groups(
    gbsg_net: Sandbox, gbsg2: pd.DataFrame
) -> None:
    # cens is an integer code without declared categories: 2 and 3 match nobody.
    line = error_line(
        oncofed(
            gbsg_net,
            "query",
            "describe",
            "age",
            "--by",
            "cens",
            "--categories",
            "2,3",
            "--dataset",
            "gbsg2",
        )
    )
    assert (
        f"every row at every node falls outside the agreed categories of 'cens' ({len(gbsg2)} rows)"
        in line
    )
    assert "(rule: query.categories_unmatched). Fix: list in --categories A,B,... values" in line
    with gbsg_net.session(progress=False) as session:
        with pytest.raises(QueryError) as survival:
            session.kaplan_meier("time", "cens", by="pnodes", categories=["998", "999"], grid=30)
        assert survival.value.rule == "query.categories_unmatched"
        assert "categories=[...]" in survival.value.fix
        # Some rows in a category: a result, with the rows outside counted and shown.
        partly = session.describe(["age"], by="cens", categories=["1", "5"])
    assert partly.rows_outside_categories == int((gbsg2["cens"] == 0).sum())
    shown = oncofed(
        gbsg_net,
        "query",
        "describe",
        "age",
        "--by",
        "cens",
        "--categories",
        "1,5",
        "--dataset",
        "gbsg2",
    )
    assert shown.returncode == ExitCode.OK and shown.stderr == ""  # no blank line either
    assert f"rows outside the categories of cens: {partly.rows_outside_categories}" in shown.stdout


def test_the_subset_refusal_blames_the_filter_only_when_there_is_one(
    gbsg_net: Sandbox, small_centre_net: Sandbox
) -> None:
    line = error_line(
        oncofed(gbsg_net, "query", "describe", "age", "--where", "age > 70", "--dataset", "gbsg2")
    )
    assert (
        "the where filter selects fewer than 10 rows at this node (rule: privacy.min_subset_size)"
        in line
    )
    assert line.endswith("Fix: widen the --where filter so that it keeps more rows at every node")
    with small_centre_net.session(progress=False) as session, pytest.raises(NodeRefusal) as caught:
        session.describe(["age"])  # no filter at all
    refusal = caught.value
    assert (refusal.rule, refusal.node) == ("privacy.min_subset_size", "centre-small")
    assert refusal.detail == (
        "this node has fewer than 10 records complete on every variable the permit grants, "
        "the fewest an exact answer may use here, whatever the request"
    )
    assert "where" not in refusal.detail + refusal.fix and "widen" not in refusal.fix
    assert "merge this centre's records with another centre's" in refusal.fix
    assert "dp={'epsilon': 0.5}" in refusal.fix


def test_command_line_fixes_name_options_and_session_fixes_keyword_arguments(
    gbsg_net: Sandbox,
) -> None:
    km = ("query", "kaplan-meier", "time", "cens", "--dataset", "gbsg2")
    fine = error_line(oncofed(gbsg_net, *km, "--grid", "7"))
    assert fine.endswith(
        "(rule: privacy.min_grid_width). Fix: use --grid 30 or wider, or --time-points at least "
        "30 apart"
    )
    no_grid = error_line(oncofed(gbsg_net, *km))  # refused on this machine, before sending
    assert "agree exactly one time grid: --grid width (e.g. --grid 30 for months" in no_grid
    assert "--time-points A,B,..., or --exact-times where every node's policy" in no_grid
    no_permit = error_line(oncofed(gbsg_net, *km, "--grid", "30", permit=None))
    assert no_permit.endswith(
        "(rule: session.permit). Fix: name the data permit you work under: --permit ID, the id "
        "of a permit naming you"
    )
    describe = ("query", "describe", "age", "--dataset", "gbsg2", "--dp", "epsilon=0.5")
    bounds = error_line(oncofed(gbsg_net, *describe))
    assert "Fix: pass --bounds age=lo,hi from domain knowledge" in bounds
    for line in (fine, no_grid, no_permit, bounds):
        assert not PYTHON_SYNTAX.search(line), line
    # The suggested option works as written.
    assert oncofed(gbsg_net, *describe, "--bounds", "age=18,100").returncode == ExitCode.OK

    with gbsg_net.session(progress=False) as session:
        with pytest.raises(OncofedError) as python:
            session.kaplan_meier("time", "cens", grid=7)
        with pytest.raises(OncofedError) as python_bounds:
            session.describe(["age"], dp={"epsilon": 0.5})
    assert python.value.fix == "use grid=30 or wider, or time_points at least 30 apart"
    assert str(python.value).endswith(f"Fix: {python.value.fix}")
    assert "pass bounds={'age': (lo, hi)} from domain knowledge" in python_bounds.value.fix


def test_a_mistyped_command_gets_one_suggestion() -> None:
    # `qery`: the top-level group makes its `query` commands on first use, and must
    # still offer that name.
    for mistyped in (("node", "chek"), ("query", "describ"), ("pki", "reqest"), ("qery",)):
        run = subprocess.run(
            [sys.executable, "-m", "oncofed", *mistyped], capture_output=True, text=True, timeout=60
        )
        assert run.returncode == ExitCode.USAGE
        assert run.stderr.count("Did you mean") == 1, run.stderr
