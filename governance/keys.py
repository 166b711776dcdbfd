"""Personal keys: every person and node holds its own, none is shared by an organisation.

An identity is three key pairs: Ed25519 to sign (tasks, permits, audit
checkpoints), and X25519 with ML-KEM-768 to receive sealed results (together
they make the hybrid, post-quantum HPKE key of ``sealing.py``; an identity made
before ML-KEM has X25519 only). The private halves stay in
``identity.json`` (mode 0600) where they were made; the public *card*
(``card.json``) is what others pin -- a data-access body copies a researcher's
card into the permit, which is how a node can check a task's signature
without trusting the coordinator or the network's certificate authority.
The TLS key pair (``pki.py``) is separate: it authenticates connections, the
identity authenticates acts.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.mlkem import MLKEM768PrivateKey, MLKEM768PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
)

from oncofed.kernel.errors import ConfigError
from oncofed.kernel.schema import NAME_PATTERN

Role = Literal["researcher", "hdab", "node", "coordinator", "admin"]
ROLES: tuple[Role, ...] = ("researcher", "hdab", "node", "coordinator", "admin")

IDENTITY_FILE = "identity.json"
CARD_FILE = "card.json"


def canonical_json(value: Any) -> bytes:
    """The one byte string a JSON value is signed as."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _raw(key: Ed25519PublicKey | X25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_key_text(key: Ed25519PublicKey | X25519PublicKey) -> str:
    """A public key as people copy it: base64 of the 32 raw bytes."""
    return base64.b64encode(_raw(key)).decode()


def _key_bytes(text: str) -> bytes:
    raw = base64.b64decode(text, validate=True)
    if len(raw) != 32:
        raise ValueError("a public key is 32 bytes (44 characters of base64)")
    return raw


def parse_public_key(text: str) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(_key_bytes(text))


def parse_encryption_key(text: str) -> X25519PublicKey:
    return X25519PublicKey.from_public_bytes(_key_bytes(text))


MLKEM768_PUBLIC_BYTES = 1184
MLKEM768_SEED_BYTES = 64


def mlkem_key_text(key: MLKEM768PublicKey) -> str:
    """An ML-KEM-768 public key as a card carries it: base64 of its 1184 raw bytes."""
    return base64.b64encode(key.public_bytes_raw()).decode()


def parse_mlkem_key(text: str) -> MLKEM768PublicKey:
    raw = base64.b64decode(text, validate=True)
    if len(raw) != MLKEM768_PUBLIC_BYTES:
        raise ValueError(f"an ML-KEM-768 public key is {MLKEM768_PUBLIC_BYTES} bytes")
    return MLKEM768PublicKey.from_public_bytes(raw)


def sign(key: Ed25519PrivateKey, payload: bytes) -> str:
    return base64.b64encode(key.sign(payload)).decode()


def signature_valid(key: Ed25519PublicKey, payload: bytes, signature: str) -> bool:
    try:
        key.verify(base64.b64decode(signature, validate=True), payload)
    except (InvalidSignature, ValueError):
        return False
    return True


class IdentityCard(BaseModel):
    """The public half of an identity: what a permit names and a node checks against."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME_PATTERN)
    role: Role
    signing_key: str = Field(description="Ed25519 public key, base64.")
    encryption_key: str = Field(description="X25519 public key, base64.")
    mlkem_key: str | None = Field(
        default=None,
        description="ML-KEM-768 public key, base64 (1184 bytes); with encryption_key it "
        "makes the hybrid key results are sealed to. None on cards made before it existed.",
    )

    @field_validator("signing_key", "encryption_key")
    @classmethod
    def _key(cls, text: str) -> str:
        _key_bytes(text)
        return text

    @field_validator("mlkem_key")
    @classmethod
    def _mlkem(cls, text: str | None) -> str | None:
        if text is not None:
            parse_mlkem_key(text)
        return text

    @model_serializer(mode="wrap")
    def _without_absent_mlkem(self, handler: SerializerFunctionWrapHandler) -> Any:
        # Cards are signed inside permits and applications: a card without an ML-KEM key
        # must dump to the very bytes it was signed as before the field existed.
        data = handler(self)
        if isinstance(data, dict) and data.get("mlkem_key", "") is None:
            del data["mlkem_key"]
        return data

    def verifying_key(self) -> Ed25519PublicKey:
        return parse_public_key(self.signing_key)

    def sealing_key(self) -> X25519PublicKey:
        return parse_encryption_key(self.encryption_key)

    def mlkem_public_key(self) -> MLKEM768PublicKey | None:
        return None if self.mlkem_key is None else parse_mlkem_key(self.mlkem_key)


@dataclass(frozen=True)
class Identity:
    name: str
    role: Role
    signing: Ed25519PrivateKey
    encryption: X25519PrivateKey
    mlkem: MLKEM768PrivateKey | None = None
    """None for an identity made before ML-KEM: results are then sealed to X25519 alone."""

    @classmethod
    def generate(cls, name: str, role: Role) -> Identity:
        return cls(
            name,
            role,
            Ed25519PrivateKey.generate(),
            X25519PrivateKey.generate(),
            MLKEM768PrivateKey.generate(),
        )

    @property
    def card(self) -> IdentityCard:
        return IdentityCard(
            name=self.name,
            role=self.role,
            signing_key=public_key_text(self.signing.public_key()),
            encryption_key=public_key_text(self.encryption.public_key()),
            mlkem_key=None if self.mlkem is None else mlkem_key_text(self.mlkem.public_key()),
        )

    def sign(self, payload: bytes) -> str:
        return sign(self.signing, payload)

    def save(self, directory: Path) -> None:
        """Write identity.json (0600, never overwritten) and card.json beside it."""
        directory.mkdir(parents=True, exist_ok=True)
        private: dict[str, str] = {
            "name": self.name,
            "role": self.role,
            "signing": base64.b64encode(
                self.signing.private_bytes(
                    serialization.Encoding.Raw,
                    serialization.PrivateFormat.Raw,
                    serialization.NoEncryption(),
                )
            ).decode(),
            "encryption": base64.b64encode(
                self.encryption.private_bytes(
                    serialization.Encoding.Raw,
                    serialization.PrivateFormat.Raw,
                    serialization.NoEncryption(),
                )
            ).decode(),
        }
        if self.mlkem is not None:
            private["mlkem"] = base64.b64encode(self.mlkem.private_bytes_raw()).decode()  # seed
        write_private(directory / IDENTITY_FILE, canonical_json(private))
        (directory / CARD_FILE).write_text(self.card.model_dump_json(indent=2) + "\n")

    @classmethod
    def load(cls, directory: Path) -> Identity:
        path = directory / IDENTITY_FILE
        try:
            data = json.loads(path.read_text())
            role = data["role"]
            if role not in ROLES:
                raise ValueError(f"unknown role {role!r}")
            mlkem = None
            if "mlkem" in data:  # absent in identities made before ML-KEM
                seed = base64.b64decode(data["mlkem"], validate=True)
                if len(seed) != MLKEM768_SEED_BYTES:
                    raise ValueError(f"the ML-KEM-768 key is a {MLKEM768_SEED_BYTES}-byte seed")
                mlkem = MLKEM768PrivateKey.from_seed_bytes(seed)
            return cls(
                str(data["name"]),
                role,
                Ed25519PrivateKey.from_private_bytes(base64.b64decode(data["signing"])),
                X25519PrivateKey.from_private_bytes(base64.b64decode(data["encryption"])),
                mlkem,
            )
        except FileNotFoundError:
            raise ConfigError(
                f"no identity in {str(directory)!r}",
                rule="identity.file",
                fix="create one with `oncofed pki request --role ROLE --name NAME --out DIR`",
            ) from None
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(
                f"{path} is not a valid identity file: {exc}",
                rule="identity.file",
                fix="restore it from backup or create a new identity (and get it re-named "
                "in permits)",
            ) from None


def load_card(path: Path) -> IdentityCard:
    try:
        return IdentityCard.model_validate_json(path.read_text())
    except FileNotFoundError:
        raise ConfigError(
            f"identity card {str(path)!r} does not exist",
            rule="identity.card",
            fix="ask the person for their card.json",
        ) from None
    except ValueError as exc:
        raise ConfigError(
            f"{path} is not a valid identity card: {exc}",
            rule="identity.card",
            fix="ask the person for their card.json again",
        ) from None


def write_private(path: Path, data: bytes) -> None:
    """Create a secret file readable by its owner only; an existing one is never replaced."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConfigError(
            f"{path} already exists",
            rule="identity.file",
            fix="keys are never overwritten; move the old file away first",
        ) from None
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)


__all__ = [
    "CARD_FILE",
    "IDENTITY_FILE",
    "ROLES",
    "Identity",
    "IdentityCard",
    "Role",
    "canonical_json",
    "load_card",
    "mlkem_key_text",
    "parse_encryption_key",
    "parse_mlkem_key",
    "parse_public_key",
    "public_key_text",
    "sign",
    "signature_valid",
    "write_private",
]
