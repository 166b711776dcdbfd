"""A network's own certificate authority: who may open a connection, and in which role.

``oncofed pki init`` makes the CA (ECDSA P-256; gRPC's TLS stack takes it
everywhere, which it does not promise for Ed25519 certificates). Everyone else
runs ``oncofed pki request`` on their own machine -- the TLS key and the
signing identity are made there and never travel -- and sends the CSR to the
CA, whose ``oncofed pki issue`` returns a certificate naming the holder (CN)
and role (OU). Revocation is a CRL signed by the CA that the coordinator
re-reads when it changes and checks on every call, because gRPC's Python
API does not take a CRL itself.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from oncofed.governance.keys import ROLES, Identity, Role, write_private
from oncofed.kernel.errors import ConfigError

CA_KEY, CA_CERT, CRL_FILE, REGISTRY = "ca.key", "ca.crt", "crl.pem", "issued.json"
TLS_KEY, TLS_CSR, TLS_CERT = "tls.key", "tls.csr", "tls.crt"
CRL_VALID_DAYS = 7


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError:
        raise ConfigError(
            f"{path} does not exist", rule="pki.files", fix="run `oncofed pki init` first"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{path} is not an EC private key", rule="pki.files")
    return key


def _load_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except FileNotFoundError:
        raise ConfigError(
            f"certificate {str(path)!r} does not exist",
            rule="pki.files",
            fix="ask the network's CA to issue it (`oncofed pki issue`)",
        ) from None


@dataclass(frozen=True)
class IssuedCertificate:
    serial: int
    name: str
    role: str
    not_after: float
    revoked: bool = False


def init_network(directory: Path, network: str, days: int = 3650) -> Path:
    """Create the CA key, certificate and an empty revocation list; returns the CA cert path."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, network),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{network} network CA"),
        ]
    )
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    write_private(directory / CA_KEY, _key_pem(key))
    (directory / CA_CERT).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / REGISTRY).write_text("[]\n")
    _write_crl(directory, set())
    return directory / CA_CERT


def request(directory: Path, role: Role, name: str, hosts: tuple[str, ...] = ()) -> Path:
    """Make a TLS key, a CSR and a signing identity in ``directory``; returns the CSR path.

    ``hosts`` (DNS names or IP addresses) go into the certificate for a coordinator,
    whose clients check that the address they dialled is one of them.
    """
    Identity.generate(name, role).save(directory)
    key = ec.generate_private_key(ec.SECP256R1())
    write_private(directory / TLS_KEY, _key_pem(key))
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, name),
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
            ]
        )
    )
    if hosts:
        builder = builder.add_extension(x509.SubjectAlternativeName(_sans(hosts)), critical=False)
    csr = builder.sign(key, hashes.SHA256())
    (directory / TLS_CSR).write_bytes(csr.public_bytes(serialization.Encoding.PEM))
    return directory / TLS_CSR


def _sans(hosts: tuple[str, ...]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def issue(ca_dir: Path, csr_path: Path, out: Path | None = None, days: int = 365) -> Path:
    """Sign a CSR with the network CA; writes the certificate and a copy of the CA cert."""
    csr = x509.load_pem_x509_csr(csr_path.read_bytes())
    if not csr.is_signature_valid:
        raise ConfigError(
            f"{csr_path} has an invalid signature",
            rule="pki.csr",
            fix="make a new request with `oncofed pki request`",
        )
    name = _attribute(csr.subject, NameOID.COMMON_NAME)
    role = _attribute(csr.subject, NameOID.ORGANIZATIONAL_UNIT_NAME)
    if role not in ROLES:
        raise ConfigError(
            f"{csr_path} asks for role {role!r}",
            rule="pki.role",
            fix=f"roles are: {', '.join(ROLES)}",
        )
    ca_key, ca_cert = _load_key(ca_dir / CA_KEY), _load_cert(ca_dir / CA_CERT)
    usage = (
        ExtendedKeyUsageOID.SERVER_AUTH
        if role == "coordinator"
        else (ExtendedKeyUsageOID.CLIENT_AUTH)
    )
    now = _now()
    builder = (
        x509.CertificateBuilder()
        .subject_name(csr.subject)
        .issuer_name(ca_cert.subject)
        .public_key(csr.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    # Host names only for the coordinator: a client certificate naming the coordinator's
    # host would otherwise be one step from impersonating it.
    if role == "coordinator":
        try:
            sans = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)
            builder = builder.add_extension(sans.value, critical=False)
        except x509.ExtensionNotFound:
            pass
    cert = builder.sign(ca_key, hashes.SHA256())
    target = out or csr_path.with_name(TLS_CERT)
    target.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if target.parent.resolve() != ca_dir.resolve():
        shutil.copyfile(ca_dir / CA_CERT, target.parent / CA_CERT)
    registry = _registry(ca_dir)
    registry.append(
        {
            "serial": cert.serial_number,
            "name": name,
            "role": role,
            "not_after": cert.not_valid_after_utc.timestamp(),
        }
    )
    (ca_dir / REGISTRY).write_text(json.dumps(registry, indent=1) + "\n")
    return target


def _attribute(name: x509.Name, oid: x509.ObjectIdentifier) -> str:
    values = name.get_attributes_for_oid(oid)
    return str(values[0].value) if values else ""


def _registry(ca_dir: Path) -> list[dict[str, object]]:
    try:
        data = json.loads((ca_dir / REGISTRY).read_text())
    except FileNotFoundError:
        raise ConfigError(
            f"{ca_dir} is not a network CA directory",
            rule="pki.files",
            fix="run `oncofed pki init` or pass the right --ca-dir",
        ) from None
    return list(data)


def _revoked_serials(ca_dir: Path) -> set[int]:
    crl = x509.load_pem_x509_crl((ca_dir / CRL_FILE).read_bytes())
    return {entry.serial_number for entry in crl}


def _write_crl(ca_dir: Path, serials: set[int]) -> None:
    ca_key, ca_cert = _load_key(ca_dir / CA_KEY), _load_cert(ca_dir / CA_CERT)
    now = _now()
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now)
        .next_update(now + datetime.timedelta(days=CRL_VALID_DAYS))
    )
    for serial in sorted(serials):
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now).build()
        )
    crl = builder.sign(ca_key, hashes.SHA256())
    temporary = ca_dir / (CRL_FILE + ".tmp")
    temporary.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    temporary.replace(ca_dir / CRL_FILE)


def issued(ca_dir: Path) -> list[IssuedCertificate]:
    revoked = _revoked_serials(ca_dir)
    return [
        IssuedCertificate(
            int(str(e["serial"])),
            str(e["name"]),
            str(e["role"]),
            float(str(e["not_after"])),
            int(str(e["serial"])) in revoked,
        )
        for e in _registry(ca_dir)
    ]


def revoke(ca_dir: Path, who: str) -> list[IssuedCertificate]:
    """Revoke every certificate issued to a name (or the one with that serial number)."""
    matches = [c for c in issued(ca_dir) if who in (c.name, str(c.serial)) and not c.revoked]
    if not matches:
        raise ConfigError(
            f"no valid certificate was issued to {who!r}",
            rule="pki.revoke",
            fix="see `oncofed pki list`",
        )
    _write_crl(ca_dir, _revoked_serials(ca_dir) | {c.serial for c in matches})
    return matches


__all__ = [
    "CA_CERT",
    "CRL_FILE",
    "TLS_CERT",
    "TLS_KEY",
    "IssuedCertificate",
    "init_network",
    "issue",
    "issued",
    "request",
    "revoke",
]
