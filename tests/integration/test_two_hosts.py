"""A coordinator and a node on two hosts (network namespaces joined by a veth pair).

Over a real link the node must check that the coordinator's certificate names
the address it dialled: the same coordinator is reached at its address in its
certificate, and refused at an address that is not in it.
"""

from __future__ import annotations

import datetime
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from oncofed.client.access import revoke
from oncofed.client.sandbox import node_config_toml
from oncofed.governance.keys import Identity
from oncofed.governance.permits import DatasetGrant, Permit, Purpose, utcnow
from oncofed.kernel.schema import ColumnSpec, DatasetSchema
from oncofed.privacy.policy import DatasetPrivacy, NodePolicy
from tests.pki import make_network

COORDINATOR_IP, NODE_IP = "10.231.7.1", "10.231.7.2"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@pytest.fixture
def hosts() -> Iterator[tuple[str, str]]:
    tag = secrets.token_hex(3)
    coordinator, node = f"of-c-{tag}", f"of-n-{tag}"
    try:
        _ip("netns", "add", coordinator)
    except (subprocess.CalledProcessError, FileNotFoundError) as exc:
        pytest.skip(f"cannot make network namespaces here ({exc})")
    try:
        _ip("netns", "add", node)
        _ip("link", "add", f"vc{tag}", "type", "veth", "peer", "name", f"vn{tag}")
        for namespace, link, address in [
            (coordinator, f"vc{tag}", COORDINATOR_IP),
            (node, f"vn{tag}", NODE_IP),
        ]:
            _ip("link", "set", link, "netns", namespace)
            _ip("-n", namespace, "addr", "add", f"{address}/24", "dev", link)
            _ip("-n", namespace, "link", "set", link, "up")
            _ip("-n", namespace, "link", "set", "lo", "up")
        yield coordinator, node
    finally:
        for namespace in (coordinator, node):
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True, timeout=30)


def _in(namespace: str, *args: str, **kwargs: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["ip", "netns", "exec", namespace, sys.executable, "-m", "oncofed", *args],
        text=True,
        env={**os.environ, "COLUMNS": "200"},
        **kwargs,  # type: ignore[call-overload]
    )


def _run(namespace: str, *args: str) -> subprocess.CompletedProcess[str]:
    process = _in(namespace, *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = process.communicate(timeout=120)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def test_a_node_on_another_host_reaches_the_coordinator_only_at_its_certified_address(
    hosts: tuple[str, str], tmp_path: Path, lung: pd.DataFrame
) -> None:
    coordinator_ns, node_ns = hosts
    make_network(tmp_path, {"ada": "researcher", "hdab": "hdab", "centre-x": "node"})
    from oncofed.governance.pki import issue, request

    issue(
        tmp_path / "ca",
        request(tmp_path / "coordinator", "coordinator", "coordinator", (COORDINATOR_IP,)),
    )
    ready = tmp_path / "port"
    server = _in(
        coordinator_ns,
        "coordinator",
        "start",
        "--db",
        f"sqlite:///{tmp_path / 'c.db'}",
        "--listen",
        "0.0.0.0:7100",
        "--ready-file",
        str(ready),
        "--credentials",
        str(tmp_path / "coordinator"),
        "--heartbeat",
        "1",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    nodes: list[subprocess.Popen[str]] = []
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert server.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        body = Identity.load(tmp_path / "hdab")
        data = tmp_path / "lung.parquet"
        lung[["age"]].to_parquet(data)
        schema = DatasetSchema(columns={"age": ColumnSpec(type="integer")})
        config = tmp_path / "node.toml"
        config.write_text(
            node_config_toml(
                "centre-x",
                f"{COORDINATOR_IP}:7100",
                "lung",
                data,
                schema,
                1.0,
                NodePolicy(min_nodes=1, dp={"lung": DatasetPrivacy(allow_exact=True)}),
                credentials=tmp_path / "centre-x",
                trusted_bodies={"hdab": body.card.signing_key},
            )
        )
        nodes.append(
            _in(
                node_ns,
                "node",
                "start",
                str(config),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )

        now = utcnow()
        signed = Permit(
            permit_id="two-hosts",
            issuer=body.card,
            holder="test",
            purposes=(Purpose.STATISTICS,),
            persons=(Identity.load(tmp_path / "ada").card,),
            datasets=(DatasetGrant(dataset="lung", release="exact"),),
            task_types=("describe",),
            valid_from=now - datetime.timedelta(hours=1),
            valid_until=now + datetime.timedelta(hours=1),
        ).sign(body.signing)
        (tmp_path / "permit.json").write_text(signed.model_dump_json())
        revoke(body, tmp_path / "hdab")
        remote = ("-c", f"{COORDINATOR_IP}:7100")
        published = _run(
            node_ns,
            "permit",
            "publish",
            str(tmp_path / "permit.json"),
            *remote,
            "--credentials",
            str(tmp_path / "hdab"),
        )
        assert published.returncode == 0, published.stderr
        renewed = _run(node_ns, "permit", "renew", *remote, "--credentials", str(tmp_path / "hdab"))
        assert renewed.returncode == 0, renewed.stderr

        asked = _run(
            node_ns,
            "query",
            "describe",
            "age",
            "--dataset",
            "lung",
            "--min-nodes",
            "1",
            "--permit",
            "two-hosts",
            *remote,
            "--credentials",
            str(tmp_path / "ada"),
        )
        assert asked.returncode == 0, asked.stderr
        assert str(len(lung)) in asked.stdout and "1 node" in asked.stdout
        listing = _run(node_ns, "nodes", *remote, "--credentials", str(tmp_path / "ada"))
        assert "centre-x" in listing.stdout and "True" in listing.stdout

        # The coordinator's certificate names 10.231.7.1 only: dialled as localhost from its
        # own host, the TLS check fails before any call.
        wrong = _run(
            coordinator_ns, "nodes", "-c", "localhost:7100", "--credentials", str(tmp_path / "ada")
        )
        assert wrong.returncode == 6, wrong.stdout + wrong.stderr
        assert "cannot reach the coordinator" in wrong.stderr
    finally:
        for process in [*nodes, server]:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
