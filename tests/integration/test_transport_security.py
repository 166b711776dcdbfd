"""Mutual TLS and roles at a real coordinator process: each test tries to get in without right."""

from __future__ import annotations

import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from oncofed.coordinator.db import open_database
from oncofed.governance.audit import AuditTrail
from oncofed.governance.tls import TlsFiles, client_channel
from oncofed.kernel.errors import AccessDenied, OncofedError, QueryError
from oncofed.kernel.wire import oncofed_pb2 as pb
from oncofed.kernel.wire.oncofed_pb2_grpc import DataAccessStub, OperatorStub, ResearcherStub
from tests.pki import make_network, revoke_by_cli, start_coordinator

PARTIES = {
    "coordinator": "coordinator",
    "ops": "admin",
    "ada": "researcher",
    "mallory": "researcher",
    "centre-a": "node",
}


class Net:
    def __init__(self, root: Path, address: str, database: str) -> None:
        self.root, self.address, self.database = root, address, database

    def channel(self, who: str, root: Path | None = None) -> grpc.Channel:
        return client_channel(self.address, TlsFiles.in_directory((root or self.root) / who), [])


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    root = tmp_path_factory.mktemp("pki")
    ca = make_network(root, PARTIES)
    process, address = start_coordinator(root, "--crl", str(ca / "crl.pem"))
    try:
        yield Net(root, address, f"sqlite:///{root / 'c.db'}")
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)


def _typed(exc: grpc.RpcError) -> OncofedError:
    assert isinstance(exc, grpc.Call)
    return OncofedError.from_json(exc.details() or "")


def _serving(channel: grpc.Channel) -> bool:
    stub = health_pb2_grpc.HealthStub(channel)
    status = stub.Check(health_pb2.HealthCheckRequest(), timeout=10).status
    return bool(status == health_pb2.HealthCheckResponse.SERVING)


def test_the_handshake_is_tls_1_3_with_both_certificates(net: Net) -> None:
    context = ssl.create_default_context(cafile=str(net.root / "ops" / "ca.crt"))
    context.load_cert_chain(net.root / "ops" / "tls.crt", net.root / "ops" / "tls.key")
    context.set_alpn_protocols(["h2"])
    host, port = net.address.split(":")
    with (
        socket.create_connection((host, int(port)), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=host) as tls,
    ):
        assert tls.version() == "TLSv1.3"
        subject = dict(item[0] for item in tls.getpeercert()["subject"])
        assert subject == {"commonName": "coordinator", "organizationalUnitName": "coordinator"}


def test_plaintext_and_certificateless_clients_are_refused_before_any_handler(net: Net) -> None:
    with grpc.insecure_channel(net.address) as plain, pytest.raises(grpc.RpcError) as caught:
        _serving(plain)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    ca = (net.root / "ops" / "ca.crt").read_bytes()
    anonymous = grpc.secure_channel(net.address, grpc.ssl_channel_credentials(ca))
    with anonymous, pytest.raises(grpc.RpcError) as caught:
        _serving(anonymous)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_another_networks_certificate_is_refused_and_the_service_keeps_serving(
    net: Net, tmp_path: Path
) -> None:
    make_network(tmp_path, {"ops": "admin"}, network="other-net")
    with net.channel("ops", root=tmp_path) as foreign, pytest.raises(grpc.RpcError) as caught:
        OperatorStub(foreign).ListNodes(pb.Empty(), timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    with net.channel("ops") as own:
        assert _serving(own)
        OperatorStub(own).ListNodes(pb.Empty(), timeout=10)


def test_a_role_may_make_only_its_own_calls(net: Net) -> None:
    with net.channel("centre-a") as node, pytest.raises(grpc.RpcError) as caught:
        OperatorStub(node).ListNodes(pb.Empty(), timeout=10)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    error = _typed(caught.value)
    assert isinstance(error, AccessDenied) and error.rule == "auth.role"
    with net.channel("ada") as researcher, pytest.raises(grpc.RpcError) as caught:
        DataAccessStub(researcher).PublishPermit(pb.Document(json="{}"), timeout=10)
    assert _typed(caught.value).rule == "auth.role"
    trail = AuditTrail(open_database(net.database), create=False)
    refusals = [e for e in trail.entries() if e.outcome == "AccessDenied"]
    assert {e.actor for e in refusals} >= {"node:centre-a", "researcher:ada"}
    verify = subprocess.run(
        [
            sys.executable,
            "-m",
            "oncofed",
            "audit",
            "verify",
            "--db",
            net.database,
            "--credentials",
            str(net.root / "coordinator"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert verify.returncode == 0, verify.stderr
    assert "intact" in verify.stdout


def test_a_revoked_certificate_is_refused_from_the_next_call(net: Net) -> None:
    with net.channel("mallory") as channel:
        OperatorStub(channel).ListNodes(pb.Empty(), timeout=10)
        revoke_by_cli(net.root / "ca", "mallory")
        with pytest.raises(grpc.RpcError) as caught:
            OperatorStub(channel).ListNodes(pb.Empty(), timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert _typed(caught.value).rule == "auth.revoked"
    with net.channel("ada") as others:
        OperatorStub(others).ListNodes(pb.Empty(), timeout=10)


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        ("not json", "malformed"),
        ('{"task": {}, "signature": "x", "extra": 1}', "malformed"),
        ("x" * 2_000_000, "malformed"),
    ],
    ids=["garbage", "unknown-field", "oversized"],
)
def test_malformed_submissions_get_a_typed_refusal(net: Net, payload: str, words: str) -> None:
    with net.channel("ada") as channel, pytest.raises(grpc.RpcError) as caught:
        ResearcherStub(channel).Submit(pb.SubmitRequest(signed_task_json=payload), timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    error = _typed(caught.value)
    assert isinstance(error, QueryError) and error.rule == "task.envelope"
    assert words in error.detail
    trail = AuditTrail(open_database(net.database), create=False)
    assert any(
        e.actor == "ada"
        and e.rule == "task.envelope"
        and e.details["request_bytes"] == len(payload.encode())
        for e in trail.entries()
    )
