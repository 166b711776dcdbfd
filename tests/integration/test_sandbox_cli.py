"""`oncofed sandbox` keeps a network up from one file until Ctrl-C."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from oncofed.client.session import Session
from oncofed.kernel.errors import ExitCode


def _sandbox_env(tmp_path: Path) -> dict[str, str]:
    """The sandbox makes its folder in TMPDIR: here, inside the test's own folder."""
    scratch = tmp_path / "tmp"
    scratch.mkdir(exist_ok=True)
    return {**os.environ, "TMPDIR": str(scratch), "COLUMNS": "300"}


def test_sandbox_command_serves_until_interrupted_and_keeps_its_logs(
    tmp_path: Path, lung: pd.DataFrame
) -> None:
    data = tmp_path / "lung.csv"
    lung.to_csv(data, index=False)
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "oncofed",
            "sandbox",
            "--data",
            str(data),
            "--split-by",
            "centre",
            "--dataset",
            "lung",
            "--release",
            "exact",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_sandbox_env(tmp_path),
    )
    try:
        assert process.stdout is not None
        address = credentials = ""
        printed: list[str] = []
        deadline = time.monotonic() + 120
        while not (address and credentials):
            line = process.stdout.readline()
            assert line or process.poll() is None, process.stderr.read() if process.stderr else ""
            match = re.search(r"coordinator at (127\.0\.0\.1:\d+)", line)
            address = match.group(1) if match else address
            printed.append(line)
            match = re.search(r"credentials='([^']+)'", line)
            credentials = match.group(1) if match else credentials
            assert time.monotonic() < deadline
        with Session(
            address, credentials=credentials, permit="sandbox", dataset="lung", progress=False
        ) as session:
            result = session.describe(["age"], min_nodes=4)
        # Exact answers use the records complete on every declared column.
        assert result.to_frame().loc["age", "count"] == len(lung.dropna())
        assert "release exact" in " ".join(" ".join(printed).split())  # however rich wrapped it
    finally:
        process.send_signal(signal.SIGINT)
        rest, errors = process.communicate(timeout=60)
    assert process.returncode == ExitCode.OK, errors
    # The banner pointed at its folder for the logs: they outlive the network, the rest
    # (keys, data copies, database) does not.
    said = " ".join(" ".join([*printed, rest]).split())
    banner = re.search(r"Logs and node configs: (\S+)\. Press Ctrl-C", said)
    assert banner is not None, said
    folder = Path(banner.group(1))
    assert folder.parent == tmp_path / "tmp"
    assert f"network stopped; its logs are kept in {folder / 'logs'}" in said
    assert [p.name for p in folder.iterdir()] == ["logs"]
    kept = {p.name for p in (folder / "logs").iterdir()}
    assert kept == {"coordinator.log", *(f"{name}.log" for name in sorted(set(lung["centre"])))}
    assert "connected to" in (folder / "logs" / "centre-A.log").read_text()


def _sandbox_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`oncofed sandbox` run so as to tell whether it got as far as its own machinery: the
    command's stderr, then whether any task module (seconds of imports) was loaded."""
    report = (
        "import atexit, runpy, sys\n"
        "atexit.register(lambda: print('loaded:', 'oncofed.tasks' in sys.modules, "
        "'oncofed.client.sandbox' in sys.modules, file=sys.stderr))\n"
        f"sys.argv = ['oncofed', 'sandbox', *{list(args)!r}]\n"
        "runpy.run_module('oncofed', run_name='__main__')\n"
    )
    return subprocess.run(
        [sys.executable, "-c", report],
        capture_output=True,
        text=True,
        timeout=120,
        env=_sandbox_env(tmp_path),
    )


def _error_line(run: subprocess.CompletedProcess[str], rule: str) -> str:
    assert "Traceback" not in run.stderr
    error, _loaded = run.stderr.strip().rsplit("\n", 1)
    line = " ".join(error.split())
    assert line.startswith("error: ") and f"(rule: {rule})" in line, run.stderr
    return line


def test_a_missing_data_file_is_refused_before_anything_starts(tmp_path: Path) -> None:
    run = _sandbox_cli(tmp_path, "--data", str(tmp_path / "missing.csv"), "--split-by", "inst")
    assert run.returncode == ExitCode.CONFIG
    assert "missing.csv' does not exist" in _error_line(run, "sandbox.data")
    # Refused before the sandbox's own imports (seconds), let alone its processes.
    assert run.stderr.strip().endswith("loaded: False False")
    assert list((tmp_path / "tmp").iterdir()) == []


@pytest.mark.parametrize(("name", "content"), [("empty.csv", ""), ("text.parquet", "a,b\n")])
def test_an_unreadable_data_file_is_one_line(tmp_path: Path, name: str, content: str) -> None:
    data = tmp_path / name
    data.write_text(content)
    run = _sandbox_cli(tmp_path, "--data", str(data), "--split-by", "a")
    assert run.returncode == ExitCode.CONFIG
    assert f"cannot read '{data}'" in _error_line(run, "sandbox.data")
    assert list((tmp_path / "tmp").iterdir()) == []


def test_an_unknown_split_column_names_the_columns_to_split_by(
    tmp_path: Path, lung: pd.DataFrame
) -> None:
    data = tmp_path / "lung.csv"
    lung.to_csv(data, index=False)
    run = _sandbox_cli(tmp_path, "--data", str(data), "--split-by", "NOSUCHCOLUMN")
    assert run.returncode == ExitCode.CONFIG
    line = _error_line(run, "sandbox.split_by")
    assert "column 'NOSUCHCOLUMN' is not in the frame" in line
    # inst has a missing value and the numeric columns too many values to be nodes.
    assert "Fix: split by one of: status (2 nodes), sex (2 nodes), centre (4 nodes)" in line
    assert list((tmp_path / "tmp").iterdir()) == []
