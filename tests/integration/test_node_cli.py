"""`oncofed node check` and `node start` as an operator runs them: the credentials and
the state folder are checked before anything is created, and each problem is one line."""

from __future__ import annotations

import datetime
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from oncofed.client.cli import main
from oncofed.governance.pki import init_network, issue, request
from oncofed.kernel.errors import ConfigError, ExitCode
from oncofed.node.config import load_node_config
from oncofed.node.config_check import check_credentials
from tests.pki import make_network
from tests.unit.test_node_config import GOOD

# The unit tests' valid config, pointed at an unreachable coordinator and a CA-issued folder.
CONFIG = GOOD.replace('"127.0.0.1:7100"', '"127.0.0.1:9"').replace(
    'credentials = "credentials"', 'credentials = "pki/centre-a"'
)


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A node's folder as an operator sets it up: config, data, and credentials from the
    network's CA in ``pki/centre-a`` (the CA itself in ``pki/ca``)."""
    pd.DataFrame({"age": [60, 71, 55], "wt.loss": [1.5, None, 3.0], "sex": [1, 2, 1]}).to_csv(
        tmp_path / "lung.csv", index=False
    )
    (tmp_path / "node.toml").write_text(CONFIG)
    make_network(tmp_path / "pki", {"centre-a": "node"})
    return tmp_path


def _oncofed(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "oncofed", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "160"},
    )


def _in_process(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """The `oncofed` command's own entry point, in this process (each run of the real
    command pays seconds of imports): its exit code, stdout and stderr."""
    argv = sys.argv
    sys.argv = ["oncofed", *args]
    try:
        with pytest.raises(SystemExit) as exited:
            main()
    finally:
        sys.argv = argv
    printed = capsys.readouterr()
    return int(exited.value.code or 0), printed.out, printed.err


def _one_line_error(stderr: str, rule: str) -> str:
    assert "Traceback" not in stderr
    line = " ".join(stderr.split())  # however the terminal wrapped it
    assert line.startswith("error: [centre-a] ") and f"(rule: {rule})" in line, stderr
    return line


def test_node_check_refuses_missing_credentials_with_the_command_that_makes_them(
    site: Path,
) -> None:
    shutil.rmtree(site / "pki" / "centre-a")
    run = _oncofed("node", "check", str(site / "node.toml"))
    assert run.returncode == ExitCode.CONFIG, run.stdout + run.stderr
    line = _one_line_error(run.stderr, "tls.credentials")
    folder = site / "pki" / "centre-a"
    assert f"credentials folder '{folder}' does not exist" in line
    assert f"`oncofed pki request --role node --name centre-a --out {folder}`" in line
    assert "ok:" not in run.stdout


def test_node_start_checks_credentials_and_state_before_creating_anything(site: Path) -> None:
    (site / "pki" / "centre-a" / "tls.crt").unlink()
    run = _oncofed("node", "start", str(site / "node.toml"))
    assert run.returncode == ExitCode.CONFIG, run.stdout + run.stderr
    line = _one_line_error(run.stderr, "tls.credentials")
    assert "tls.crt" in line and "oncofed pki issue --ca-dir CA_DIR" in line
    assert not (site / "state").exists()

    # Good credentials, but state_dir cannot be made: refused before the node dials out.
    issue(site / "pki" / "ca", site / "pki" / "centre-a" / "tls.csr")
    (site / "state").write_text("not a folder")
    run = _oncofed("node", "start", str(site / "node.toml"))
    assert run.returncode == ExitCode.CONFIG, run.stdout + run.stderr
    line = _one_line_error(run.stderr, "config.state_dir")
    assert "is not a folder" in line and "state_dir in the config" in line
    assert (site / "state").read_text() == "not a folder"


def test_node_check_shows_whose_certificate_and_creates_no_state(
    site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, stdout, stderr = _in_process(capsys, "node", "check", str(site / "node.toml"))
    assert code == ExitCode.OK, stderr
    printed = " ".join(stdout.split())
    assert (
        f"credentials {site / 'pki' / 'centre-a'}: node centre-a, issued by test-net network CA"
        in printed
    )
    assert f"state_dir {site / 'state'}: created when the node starts" in printed
    assert "3 rows" in printed and "ok: config, credentials and data are valid" in printed
    assert not (site / "state").exists()


def _other_key(site: Path) -> None:
    spare = site / "spare"
    issue(site / "pki" / "ca", request(spare, "node", "centre-a"))
    shutil.copy(spare / "tls.crt", site / "pki" / "centre-a" / "tls.crt")


def _other_ca(site: Path) -> None:
    init_network(site / "elsewhere", "elsewhere")
    shutil.copy(site / "elsewhere" / "ca.crt", site / "pki" / "centre-a" / "ca.crt")


def _researcher(site: Path) -> None:
    folder = site / "pki" / "centre-a"
    shutil.rmtree(folder)
    issue(site / "pki" / "ca", request(folder, "researcher", "centre-a"))


def _another_node(site: Path) -> None:
    folder = site / "pki" / "centre-a"
    shutil.rmtree(folder)
    issue(site / "pki" / "ca", request(folder, "node", "centre-b"))


def _not_pem(site: Path) -> None:
    (site / "pki" / "centre-a" / "tls.key").write_text("not a key")


@pytest.mark.parametrize(
    ("spoil", "words"),
    [
        (_other_key, "certifies another key than"),
        (_other_ca, "was not issued by the CA in"),
        (_researcher, "is a 'researcher' certificate, not a node's"),
        (_another_node, "is for node 'centre-b', but this config is node 'centre-a'"),
        (_not_pem, "is not an unencrypted PEM private key"),
    ],
)
def test_node_check_refuses_credentials_the_coordinator_would_refuse(
    site: Path, capsys: pytest.CaptureFixture[str], spoil: object, words: str
) -> None:
    assert callable(spoil)
    spoil(site)
    code, _, stderr = _in_process(capsys, "node", "check", str(site / "node.toml"))
    assert code == ExitCode.CONFIG
    line = _one_line_error(stderr, "tls.credentials")
    assert words in line and ". Fix: " in line
    assert not (site / "state").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_credentials_are_named(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = site / "pki" / "centre-a" / "tls.key"
    key.chmod(0)
    try:
        code, _, stderr = _in_process(capsys, "node", "check", str(site / "node.toml"))
    finally:
        key.chmod(0o600)
    assert code == ExitCode.CONFIG
    assert f"cannot read {key}" in _one_line_error(stderr, "tls.credentials")


def test_expired_and_future_certificates_are_refused(site: Path) -> None:
    config = load_node_config(site / "node.toml")
    valid_until = check_credentials(config).not_after
    with pytest.raises(ConfigError, match="expired on") as caught:
        check_credentials(config, now=valid_until + datetime.timedelta(days=1))
    assert caught.value.rule == "tls.credentials" and "--days 365" in caught.value.fix
    with pytest.raises(ConfigError, match="is valid only from") as caught:
        check_credentials(config, now=datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC))
    assert "clock" in caught.value.fix


@pytest.mark.parametrize("spoil", [_researcher, None])
def test_the_commands_a_refusal_gives_make_credentials_that_pass(
    site: Path, capsys: pytest.CaptureFixture[str], spoil: object
) -> None:
    """Run what the fix says, as the operator would (the CA's step with its folder)."""
    if spoil is None:
        shutil.rmtree(site / "pki" / "centre-a")
    else:
        assert callable(spoil)
        spoil(site)
    code, _, stderr = _in_process(capsys, "node", "check", str(site / "node.toml"))
    assert code == ExitCode.CONFIG
    fix = _one_line_error(stderr, "tls.credentials").split(". Fix: ", 1)[1]
    commands = re.findall(r"`([^`]+)`", fix)
    assert commands and commands[-1].startswith("oncofed pki request --role node --name centre-a")
    for command in commands:
        words = shlex.split(command)
        if words[0] == "mv":
            shutil.move(words[1], words[2])
        else:
            assert _in_process(capsys, *words[1:])[0] == ExitCode.OK
    folder = site / "pki" / "centre-a"
    issuing = ["pki", "issue", "--ca-dir", str(site / "pki" / "ca"), str(folder / "tls.csr")]
    assert _in_process(capsys, *issuing)[0] == ExitCode.OK
    code, stdout, stderr = _in_process(capsys, "node", "check", str(site / "node.toml"))
    assert code == ExitCode.OK, stderr
    assert "ok: config, credentials and data are valid" in stdout
