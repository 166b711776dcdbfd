"""Mutual TLS for every gRPC connection, and who is at the other end of one.

All channels are made here. Each side presents a certificate of the
network's CA and checks the other's; the coordinator reads the caller's
name and role from the certificate gRPC verified (``peer_of``) and checks it
against the CA's revocation list before any handler runs
(``coordinator/auth.py``).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from oncofed.governance.pki import CA_CERT, TLS_CERT, TLS_KEY
from oncofed.kernel.errors import ConfigError


@dataclass(frozen=True)
class TlsFiles:
    """A credentials folder: the network CA, this party's certificate and its key."""

    ca: Path
    cert: Path
    key: Path

    @classmethod
    def in_directory(cls, directory: Path) -> TlsFiles:
        files = cls(directory / CA_CERT, directory / TLS_CERT, directory / TLS_KEY)
        missing = [str(p) for p in (files.ca, files.cert, files.key) if not p.exists()]
        if missing:
            raise ConfigError(
                f"credentials folder {str(directory)!r} lacks {', '.join(missing)}",
                rule="tls.credentials",
                fix="`oncofed pki request` makes the key, the network CA's `oncofed pki issue` "
                "the certificate and ca.crt",
            )
        return files

    def read(self) -> tuple[bytes, bytes, bytes]:
        return self.ca.read_bytes(), self.cert.read_bytes(), self.key.read_bytes()


def client_channel(address: str, files: TlsFiles, options: list[tuple[str, int]]) -> grpc.Channel:
    ca, cert, key = files.read()
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca, private_key=key, certificate_chain=cert
    )
    return grpc.secure_channel(address, credentials, options=options)


def server_credentials(files: TlsFiles) -> grpc.ServerCredentials:
    ca, cert, key = files.read()
    # require_client_auth: a caller without a certificate of this CA fails the handshake.
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=True
    )


@dataclass(frozen=True)
class Peer:
    name: str
    role: str
    serial: int


def peer_of(context: grpc.ServicerContext) -> Peer | None:
    """The verified certificate's holder, or None on a connection without one."""
    pems = context.auth_context().get("x509_pem_cert")
    if not pems:
        return None
    return _peer(pems[0])


def _peer(pem: bytes) -> Peer:
    cert = x509.load_pem_x509_certificate(pem)

    def attribute(oid: x509.ObjectIdentifier) -> str:
        values = cert.subject.get_attributes_for_oid(oid)
        return str(values[0].value) if values else ""

    return Peer(
        attribute(NameOID.COMMON_NAME),
        attribute(NameOID.ORGANIZATIONAL_UNIT_NAME),
        cert.serial_number,
    )


class RevokedCertificates:
    """The CA's revocation list, re-read when the file changes, its signature checked."""

    def __init__(self, crl: Path | None, ca: Path) -> None:
        self.path = crl
        public = x509.load_pem_x509_certificate(ca.read_bytes()).public_key()
        if not isinstance(public, ec.EllipticCurvePublicKey):
            raise ConfigError(f"{ca} is not an oncofed network CA", rule="tls.ca")
        self._ca_key = public
        self._lock = threading.Lock()
        self._stamp: float | None = None
        self._serials: frozenset[int] = frozenset()

    def is_revoked(self, serial: int) -> bool:
        return serial in self._current()

    def _current(self) -> frozenset[int]:
        if self.path is None:
            return frozenset()
        try:
            stamp = os.stat(self.path).st_mtime_ns
        except FileNotFoundError:
            return self._serials  # a CRL being replaced: keep the last one read
        with self._lock:
            if stamp != self._stamp:
                crl = x509.load_pem_x509_crl(self.path.read_bytes())
                if not crl.is_signature_valid(self._ca_key):
                    raise ConfigError(
                        f"{self.path} is not signed by the network CA",
                        rule="tls.crl",
                        fix="copy the crl.pem that `oncofed pki revoke` wrote",
                    )
                self._serials = frozenset(entry.serial_number for entry in crl)
                self._stamp = stamp
            return self._serials


__all__ = [
    "Peer",
    "RevokedCertificates",
    "TlsFiles",
    "client_channel",
    "peer_of",
    "server_credentials",
]
