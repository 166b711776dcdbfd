"""Results sealed to their readers: the researcher who asked and the body that permitted.

The coordinator holds a result only sealed: a fresh AES-256-GCM key encrypts
it, and that key is wrapped for each reader with X25519 (an ephemeral key
per reader) and HKDF-SHA256, so a copy of the coordinator's database tells
nothing without a reader's private key. The readers' keys come from the
signed permit, not from anything the coordinator chose.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Mapping

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from oncofed.governance.keys import parse_encryption_key, public_key_text
from oncofed.kernel.errors import AccessDenied

SCHEME = "x25519-hkdf-sha256-aes256gcm"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _wrapping_key(shared: bytes, ephemeral: str, recipient: str) -> bytes:
    info = f"oncofed result key|{ephemeral}|{recipient}".encode()
    return HKDF(hashes.SHA256(), 32, salt=None, info=info).derive(shared)


def seal(plaintext: bytes, recipients: Mapping[str, X25519PublicKey], context: str) -> str:
    """Encrypt for each named recipient; ``context`` (the task id) is bound as associated data."""
    content_key = AESGCM.generate_key(256)
    nonce = os.urandom(12)
    wrapped = {}
    for name, public in sorted(recipients.items()):
        ephemeral = X25519PrivateKey.generate()
        ephemeral_text = public_key_text(ephemeral.public_key())
        key = _wrapping_key(ephemeral.exchange(public), ephemeral_text, public_key_text(public))
        key_nonce = os.urandom(12)
        wrapped[name] = {
            "ephemeral": ephemeral_text,
            "nonce": _b64(key_nonce),
            "key": _b64(AESGCM(key).encrypt(key_nonce, content_key, context.encode())),
        }
    ciphertext = AESGCM(content_key).encrypt(nonce, plaintext, context.encode())
    return json.dumps(
        {
            "scheme": SCHEME,
            "context": context,
            "recipients": wrapped,
            "nonce": _b64(nonce),
            "ciphertext": _b64(ciphertext),
        },
        sort_keys=True,
    )


def open_sealed(sealed: str, name: str, private: X25519PrivateKey) -> bytes:
    def denied(why: str) -> AccessDenied:
        return AccessDenied(
            f"cannot open this result as {name}: {why}",
            rule="result.sealed",
            fix="only the researcher who submitted the task and the permit's data-access body "
            "can read its result",
        )

    try:
        box = json.loads(sealed)
        entry = box["recipients"].get(name)
        if box.get("scheme") != SCHEME or entry is None:
            raise denied("it is not sealed to you")
        ephemeral = parse_encryption_key(entry["ephemeral"])
        key = _wrapping_key(
            private.exchange(ephemeral), entry["ephemeral"], public_key_text(private.public_key())
        )
        context = str(box["context"]).encode()
        content_key = AESGCM(key).decrypt(
            base64.b64decode(entry["nonce"]), base64.b64decode(entry["key"]), context
        )
        return AESGCM(content_key).decrypt(
            base64.b64decode(box["nonce"]), base64.b64decode(box["ciphertext"]), context
        )
    except InvalidTag:
        raise denied("the key does not match or the sealed result was altered") from None
    except (ValueError, KeyError, TypeError, AttributeError):
        raise denied("it is not a sealed result") from None


__all__ = ["SCHEME", "open_sealed", "seal"]
