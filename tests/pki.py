"""A network's PKI made on the fly for tests, the way `oncofed pki` makes it."""

from __future__ import annotations

import datetime
import subprocess
import sys
import time
from pathlib import Path

from oncofed.governance.keys import Identity, Role
from oncofed.governance.permits import (
    DatasetGrant,
    OutputPolicy,
    Permit,
    Purpose,
    ReleaseMode,
    SignedPermit,
    utcnow,
)
from oncofed.governance.pki import init_network, issue, request


def make_network(root: Path, parties: dict[str, Role], network: str = "test-net") -> Path:
    """A CA in ``root/ca`` and a credentials folder ``root/NAME`` per party; returns the CA dir."""
    ca = root / "ca"
    init_network(ca, network)
    for name, role in parties.items():
        hosts = ("127.0.0.1", "localhost") if role == "coordinator" else ()
        issue(ca, request(root / name, role, name, hosts))
    return ca


def start_coordinator(root: Path, *options: str) -> tuple[subprocess.Popen[str], str]:
    """`oncofed coordinator start` on a free loopback port with ``root/coordinator``'s
    credentials and a SQLite file in ``root``; the process and its address once serving."""
    ready = root / "port"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "oncofed",
            "coordinator",
            "start",
            "--db",
            f"sqlite:///{root / 'c.db'}",
            "--listen",
            "127.0.0.1:0",
            "--ready-file",
            str(ready),
            "--credentials",
            str(root / "coordinator"),
            *options,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
        assert time.monotonic() < deadline, "the coordinator did not start"
        time.sleep(0.05)
    return process, f"127.0.0.1:{ready.read_text()}"


def revoke_by_cli(ca: Path, who: str) -> None:
    """`oncofed pki revoke`, as the network's CA runs it."""
    run = subprocess.run(
        [sys.executable, "-m", "oncofed", "pki", "revoke", "--ca-dir", str(ca), who],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr


def day_permit(
    body: Identity,
    researcher: Identity,
    *,
    permit_id: str,
    dataset: str,
    task_types: tuple[str, ...],
    release: ReleaseMode = "dp",
    cohorts: dict[str, str] | None = None,
    models_may_leave: bool = False,
) -> SignedPermit:
    """A permit valid from an hour ago for a day, granting one researcher one dataset
    (exact requests filtering only on ``cohorts``, if named), signed by ``body`` (what
    in-process node harnesses send with every message)."""
    now = utcnow()
    # No cohorts named: the grant's default (exact requests may not filter at all).
    grant = DatasetGrant(
        dataset=dataset, release=release, **({"cohorts": cohorts} if cohorts else {})
    )
    return Permit(
        permit_id=permit_id,
        issuer=body.card,
        holder="Example Hospital",
        purposes=(Purpose.STATISTICS,),
        persons=(researcher.card,),
        datasets=(grant,),
        task_types=task_types,
        output=OutputPolicy(models_may_leave=models_may_leave),
        valid_from=now - datetime.timedelta(hours=1),
        valid_until=now + datetime.timedelta(days=1),
    ).sign(body.signing)
