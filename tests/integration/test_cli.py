"""The oncofed command as people run it: real processes, exit codes, one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from oncofed.client.sandbox import Sandbox
from oncofed.kernel.errors import ExitCode
from tests.docs.markdown import blocks, matches

ROOT = Path(__file__).resolve().parents[2]


def _cli(
    *args: str,
    timeout: float = 120,
    cwd: Path | None = None,
    net: Sandbox | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """``net``: run as that sandbox's researcher (credentials and permit in the environment)."""
    return subprocess.run(
        [sys.executable, "-m", "oncofed", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={
            "COLUMNS": "160",
            "PATH": "/usr/bin:/bin",
            **(net.researcher_env() if net else {}),
            **(env or {}),
        },
        cwd=cwd,
    )


def test_demo_runs_and_shows_federated_next_to_pooled(tmp_path: Path) -> None:
    checkout, scratch = tmp_path / "checkout", tmp_path / "tmp"
    checkout.mkdir()
    scratch.mkdir()
    run = _cli("demo", timeout=300, cwd=checkout, env={"TMPDIR": str(scratch), "COLUMNS": "100"})
    assert run.returncode == ExitCode.OK, run.stdout[-2000:] + run.stderr[-2000:]
    # What the README shows of the demo (trimmed with `...`) is what it prints.
    shown = next(b for b in blocks(ROOT / "README.md") if "federated = pooled" in b.text)
    assert matches(shown.text, run.stdout), run.stdout
    assert "federated = pooled" in run.stdout
    for header in ("federated", "pooled", "|difference|", "centre-A", "centre-E"):
        assert header in run.stdout
    worst = float(run.stdout.split("largest relative difference ")[1].split()[0])
    assert worst < 1e-9
    # The same statistics under DP, as nodes answer by default, with the noise's scale.
    assert "describe under differential privacy" in run.stdout
    assert "DP release: epsilon 1 at each node" in run.stdout
    assert "noise sd" in run.stdout
    # The figure goes to the temporary folder, where the demo says, never into the checkout.
    plot = scratch / "oncofed-demo-kaplan-meier.png"
    assert plot.stat().st_size > 10_000  # the Kaplan-Meier figure by sex
    assert f"saved to {plot}" in " ".join(run.stdout.split())
    assert list(checkout.iterdir()) == []
    assert sorted(p.name for p in scratch.iterdir()) == [plot.name]  # its sandbox is gone


def test_demo_refuses_a_plot_path_it_cannot_write_before_starting_the_network(
    tmp_path: Path,
) -> None:
    run = _cli("demo", "--plot", str(tmp_path / "no" / "km.png"), env={"TMPDIR": str(tmp_path)})
    assert run.returncode == ExitCode.CONFIG, run.stdout + run.stderr
    line = " ".join(run.stderr.split())
    assert "does not exist (rule: demo.plot). Fix: pass --plot PATH in a folder" in line
    assert "starting a coordinator" not in run.stdout + run.stderr
    assert list(tmp_path.iterdir()) == []  # no sandbox folder was made


def test_query_describe_prints_a_table_and_csv(lung_net: Sandbox, lung: pd.DataFrame) -> None:
    common = ("query", "describe", "-c", lung_net.address, "--dataset", "lung")
    table = _cli(*common, "age", "wt.loss", "--by", "sex", "--categories", "1,2", net=lung_net)
    assert table.returncode == ExitCode.OK, table.stderr
    assert "wt.loss" in table.stdout and "4 nodes" in table.stdout
    csv = _cli(*common, "age", "--csv", net=lung_net)
    assert csv.returncode == ExitCode.OK, csv.stderr
    from io import StringIO

    frame = pd.read_csv(StringIO(csv.stdout)).set_index("column")
    assert frame.loc["age", "count"] == len(lung)
    assert frame.loc["age", "mean"] == pytest.approx(lung["age"].mean(), rel=1e-12)


def test_refusal_is_one_line_with_rule_and_exit_code(lung_net: Sandbox) -> None:
    run = _cli(
        "query", "describe", "-c", lung_net.address, "--dataset", "lung", "nope", net=lung_net
    )
    assert run.returncode == ExitCode.REFUSED
    assert "Traceback" not in run.stderr
    assert "rule: schema.unknown_column" in run.stderr
    assert "nope" in run.stderr and "centre-A" in run.stderr


def test_unreachable_coordinator_is_exit_code_unavailable(lung_net: Sandbox) -> None:
    run = _cli("nodes", "-c", "127.0.0.1:9", net=lung_net)
    assert run.returncode == ExitCode.UNAVAILABLE
    assert "cannot reach the coordinator" in run.stderr


def test_nodes_lists_every_node(lung_net: Sandbox) -> None:
    run = _cli("nodes", "-c", lung_net.address, net=lung_net)
    assert run.returncode == ExitCode.OK, run.stderr
    for name in lung_net.node_names:
        assert name in run.stdout


def test_usage_error_is_exit_code_2() -> None:
    run = _cli("query", "describe")
    assert run.returncode == ExitCode.USAGE
