"""What a node's config points at, checked before the node creates anything.

``load_node_config`` checks the file itself. A node also needs its
credentials and a state directory it can write. Bad credentials would not
stop it: gRPC reads them only when it dials, and the node would then redial
a handshake that can never succeed, for ever. ``oncofed node check`` and
``oncofed node start`` run these checks first, so each problem is one typed
line (``tls.credentials``, ``config.state_dir``) before any state exists.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from oncofed.governance.keys import IDENTITY_FILE as PERSON_FILE
from oncofed.governance.pki import TLS_CSR, TLS_KEY
from oncofed.governance.tls import Peer, TlsFiles, _peer
from oncofed.kernel.errors import ConfigError
from oncofed.node.config import NodeConfig
from oncofed.node.identity import IDENTITY_FILE, load_or_create_identity


@dataclass(frozen=True)
class NodeCredentials:
    """The certificate a node presents, as checked: who it names, who issued it, until when."""

    files: TlsFiles
    holder: Peer
    issuer: str
    not_after: datetime.datetime


def check_credentials(config: NodeConfig, now: datetime.datetime | None = None) -> NodeCredentials:
    """The node's credentials folder, loaded as the node loads it and checked as the
    coordinator will: key and certificate belong together, the CA in the folder
    issued the certificate, both are valid now, and it is a node certificate for
    this node's name."""
    folder = config.credentials
    request = f"`oncofed pki request --role node --name {config.name} --out {folder}`"
    if (folder / PERSON_FILE).exists() or (folder / TLS_KEY).exists():
        # `pki request` never overwrites keys: the old ones have to make room first.
        request = f"`mv {folder} {folder}.old` and {request}"
    issue = f"oncofed pki issue --ca-dir CA_DIR {folder / TLS_CSR}"

    def refuse(detail: str, fix: str) -> ConfigError:
        return ConfigError(detail, rule="tls.credentials", node=config.name, fix=fix)

    try:
        files = TlsFiles.in_directory(folder)
    except ConfigError as exc:
        if (folder / TLS_KEY).exists():
            fix = (
                f"send {folder / TLS_CSR} to the network's CA, which runs `{issue}`, and put "
                f"the tls.crt and ca.crt it returns in {folder}"
            )
        else:
            fix = (
                f"make this node's key with {request}, send the tls.csr it writes to the "
                f"network's CA and put the tls.crt and ca.crt the CA returns in {folder}"
            )
        detail = (
            exc.detail if folder.is_dir() else f"credentials folder {str(folder)!r} does not exist"
        )
        raise refuse(detail, fix) from None
    try:
        ca_pem, cert_pem, key_pem = files.read()
    except OSError as exc:
        raise refuse(
            f"cannot read {exc.filename}: {exc.strerror}",
            f"run the node as the user that owns {folder}, or give it to that user "
            f"(`sudo chown -R USER {folder}`)",
        ) from None

    returned = f"put the tls.crt and ca.crt that `oncofed pki issue` returned in {folder}"
    certificates: list[x509.Certificate] = []
    for path, pem in ((files.ca, ca_pem), (files.cert, cert_pem)):
        try:
            certificates.append(x509.load_pem_x509_certificate(pem))
        except ValueError:
            raise refuse(f"{path} is not a PEM certificate", returned) from None
    ca, cert = certificates
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise refuse(
            f"{files.key} is not an unencrypted PEM private key",
            f"make a new key and request with {request}",
        ) from None

    der, spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    certified, held = (
        cert.public_key().public_bytes(der, spki),
        key.public_key().public_bytes(der, spki),
    )
    if certified != held:
        raise refuse(
            f"{files.cert} certifies another key than {files.key}",
            f"ask the network's CA for a certificate of this key's request (`{issue}`)",
        )
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise refuse(
            f"{files.cert} was not issued by the CA in {files.ca} ({_peer(ca_pem).name})",
            f"put the ca.crt that came with the certificate, from the CA that issued it, "
            f"in {folder}",
        ) from None
    moment = now or datetime.datetime.now(datetime.UTC)
    for what, certificate in (("the network CA's certificate", ca), (str(files.cert), cert)):
        if moment < certificate.not_valid_before_utc:
            raise refuse(
                f"{what} is valid only from {certificate.not_valid_before_utc:%Y-%m-%d %H:%M} UTC",
                "check this host's clock (`timedatectl`)",
            )
        if moment > certificate.not_valid_after_utc:
            raise refuse(
                f"{what} expired on {certificate.not_valid_after_utc:%Y-%m-%d %H:%M} UTC",
                f"ask the network's CA for a new certificate (`{issue} --days 365`)"
                if certificate is cert
                else "ask the network operator for the CA's current ca.crt",
            )

    # Read the way the coordinator reads a caller: it accepts a node only as the name
    # and role its certificate states.
    holder = _peer(cert_pem)
    if holder.role != "node":
        raise refuse(
            f"{files.cert} is a {holder.role!r} certificate, not a node's",
            f"make this node's own credentials with {request}",
        )
    if holder.name != config.name:
        raise refuse(
            f"{files.cert} is for node {holder.name!r}, but this config is node "
            f"{config.name!r}; the coordinator knows a node by its certificate's name",
            f'set name = "{holder.name}" in the config, or make this node\'s own credentials '
            f"with {request}",
        )
    return NodeCredentials(files, holder, _peer(ca_pem).name, cert.not_valid_after_utc)


def check_state_dir(config: NodeConfig) -> bool:
    """Whether ``state_dir`` exists; raises unless the node can create or write in it.

    Also loads the node's identity key if there is one, as the node would.
    """
    path = config.state_dir
    fix = (
        f"create it for the user that runs the node (`sudo install -d -o USER {path}`), "
        "or set state_dir in the config to a folder that user can write"
    )

    def refuse(detail: str) -> ConfigError:
        return ConfigError(detail, rule="config.state_dir", node=config.name, fix=fix)

    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        where = "" if existing == path else f" cannot be created: {existing}"
        raise refuse(f"state_dir {str(path)!r}{where} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        verb = "is not writable" if existing == path else f"cannot be created in {existing}"
        raise refuse(f"state_dir {str(path)!r} {verb} by this user")
    if existing != path:
        return False
    for entry in path.iterdir():
        # A node once started as another user (root) leaves files this one cannot write.
        if entry.is_file() and not os.access(entry, os.R_OK | os.W_OK):
            raise refuse(f"{entry} in state_dir is not readable and writable by this user")
    if (path / IDENTITY_FILE).exists():
        load_or_create_identity(path)
    return True


def check_before_start(config: NodeConfig) -> NodeCredentials:
    """Everything a node needs besides its data, checked before it creates any state.

    Data is not checked here: a data problem refuses the tasks on that dataset
    and does not stop a running node (the file may be replaced while it runs).
    """
    credentials = check_credentials(config)
    check_state_dir(config)
    return credentials


__all__ = [
    "NodeCredentials",
    "check_before_start",
    "check_credentials",
    "check_state_dir",
]
