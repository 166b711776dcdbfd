"""Adding a task type takes one module and the registry: nothing in the runtime or client changes.

A copy of the installed package gets ``tests/example_task/row_count.py`` in
``tasks/`` and one entry in the registry (``tasks/__init__.py``). Then a real
network started from that copy runs it from ``Session.run`` and from its
generated ``oncofed query row-count`` command, which ``oncofed query --help``
lists.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

from oncofed.client.demo import lung_centres
from tests.layout import ROOT, installed_tree

SCRIPT = """
import json, os, subprocess, sys
import pandas as pd
from oncofed.client.sandbox import Sandbox

frame = pd.read_csv(sys.argv[1])
with Sandbox.from_frame(frame, split_by="centre", dataset="lung", release="exact") as net:
    with net.session(progress=False) as session:
        result = session.run("row_count", where="age >= 60", label="adults")
    command = [sys.executable, "-m", "oncofed", "query", "row-count", "--where", "age >= 60",
               "--dataset", "lung", "-c", net.address, "--csv"]
    cli = subprocess.run(command, capture_output=True, text=True, timeout=120,
                         env={**os.environ, **net.researcher_env()})
print(json.dumps({"result": result.model_dump(), "csv": cli.stdout, "stderr": cli.stderr}))
"""


def _registered(registry: str) -> str:
    """The registry with one more task: its module imported and its TASK listed."""
    return registry.replace("    training,\n)", "    row_count,\n    training,\n)").replace(
        "        training.TASK,\n", "        training.TASK,\n        row_count.TASK,\n"
    )


def test_a_task_added_as_one_module_runs_from_session_and_command(tmp_path: Path) -> None:
    tree = installed_tree(tmp_path / "tree", copy=True)
    tasks = tree / "oncofed" / "tasks"
    (tasks / "row_count.py").write_text((ROOT / "tests/example_task/row_count.py").read_text())
    registry = (tasks / "__init__.py").read_text()
    (tasks / "__init__.py").write_text(_registered(registry))
    assert _registered(registry) != registry, "the registry's layout changed; update _registered"
    # Outside the checkout, whose oncofed/ folder would shadow the copy's.
    env = {**os.environ, "PYTHONPATH": str(tree)}

    listing = subprocess.run(
        [sys.executable, "-m", "oncofed", "query", "--help"],
        capture_output=True,
        text=True,
        env={**env, "COLUMNS": "200"},
        timeout=60,
        cwd=tmp_path,
    )
    assert listing.returncode == 0, listing.stderr
    assert "row-count" in listing.stdout and "rows the filter keeps" in listing.stdout
    help_text = subprocess.run(
        [sys.executable, "-m", "oncofed", "query", "row-count", "--help"],
        capture_output=True,
        text=True,
        env={**env, "COLUMNS": "200"},
        timeout=60,
        cwd=tmp_path,
    ).stdout
    assert "--label" in help_text and "What to call the count" in help_text

    lung = lung_centres(3)
    data = tmp_path / "lung.csv"
    lung.to_csv(data, index=False)
    run = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(data)],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    # Exact answers count the records complete on every column the sandbox declares.
    adults = int((lung.dropna()["age"] >= 60).sum())
    assert out["result"] == {
        "label": "adults",
        "total": adults,
        "nodes": sorted(lung["centre"].unique()),
    }
    assert out["stderr"] == "" or "error" not in out["stderr"]
    frame = pd.read_csv(io.StringIO(out["csv"]), index_col=0)
    assert int(frame.loc["all", "rows"]) == adults
