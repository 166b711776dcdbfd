"""The node's long-term Ed25519 identity: its own key pair, kept in its state directory.

It signs the node's secure-aggregation keys so that peers, which pin this
node's public key in their own configuration, can tell a coordinator's
substitute from the real thing. The private key never leaves the file
(mode 0600); ``oncofed node identity`` prints the public half to share.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from oncofed.governance.keys import parse_public_key, public_key_text
from oncofed.kernel.errors import ConfigError

IDENTITY_FILE = "identity.ed25519.pem"


def load_or_create_identity(state_dir: Path) -> Ed25519PrivateKey:
    """The node's private key, generated on first use."""
    path = state_dir / IDENTITY_FILE
    if not path.exists():
        state_dir.mkdir(parents=True, exist_ok=True)
        pem = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        # O_EXCL: two processes starting at once must not write two different identities.
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(pem)
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(
            f"{path} does not hold an Ed25519 private key",
            rule="node.identity",
            fix="move the file away; the node creates a new identity (and peers must re-pin it)",
        )
    return key


__all__ = ["IDENTITY_FILE", "load_or_create_identity", "parse_public_key", "public_key_text"]
