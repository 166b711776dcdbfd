"""Results sealed to their readers: the researcher who asked and the body that permitted.

The coordinator holds a result only sealed (decision 0020): a fresh AES-256-GCM
content key encrypts it once, and that key is sealed to each reader with
RFC 9180 HPKE from ``cryptography`` -- the hybrid post-quantum KEM
MLKEM768-X25519 when the reader's card carries an ML-KEM-768 key, DHKEM(X25519)
for a card made before ML-KEM -- with the task id bound as HPKE ``info`` and as
the result's associated data. Health data stays sensitive for decades, so a
copy of the coordinator's database taken today must tell nothing to someone
with a quantum computer later, nor to anyone now without a reader's private
key. The readers' keys come from the signed permit, not from anything the
coordinator chose.

Results sealed before HPKE (scheme ``x25519-hkdf-sha256-aes256gcm``) stay in
coordinators' databases, so ``open_sealed`` still opens them.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterable
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, hpke
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from oncofed.governance.keys import (
    Identity,
    IdentityCard,
    canonical_json,
    parse_encryption_key,
    public_key_text,
)
from oncofed.kernel.errors import AccessDenied

SCHEME = "oncofed-hpke-v1"
"""Content: AES-256-GCM under a fresh key; that key HPKE-sealed (RFC 9180, base mode) per reader."""
LEGACY_SCHEME = "x25519-hkdf-sha256-aes256gcm"
"""Before decision 0020: X25519 + HKDF-SHA256 wrapping by hand. Opened, never written."""

HYBRID_SUITE = "MLKEM768-X25519/HKDF-SHA256/AES-256-GCM"
X25519_SUITE = "DHKEM-X25519/HKDF-SHA256/AES-256-GCM"
_SUITES = {
    HYBRID_SUITE: hpke.Suite(hpke.KEM.MLKEM768_X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM),
    X25519_SUITE: hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM),
}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _info(suite: str, context: str) -> bytes:
    """HPKE ``info`` for one reader's key: the scheme, the suite stated and the task."""
    return canonical_json([SCHEME, suite, context])


def _aad(context: str) -> bytes:
    return canonical_json([SCHEME, context])


def _seal_key(content_key: bytes, card: IdentityCard, context: str) -> dict[str, str]:
    mlkem = card.mlkem_public_key()
    if mlkem is None:  # a card made before ML-KEM: classical X25519 only
        suite, public = X25519_SUITE, card.sealing_key()
        sealed = _SUITES[suite].encrypt(content_key, public, info=_info(suite, context))
    else:
        suite = HYBRID_SUITE
        hybrid = hpke.MLKEM768X25519PublicKey(mlkem, card.sealing_key())
        sealed = _SUITES[suite].encrypt(content_key, hybrid, info=_info(suite, context))
    return {"suite": suite, "key": _b64(sealed)}


def seal(plaintext: bytes, readers: Iterable[IdentityCard], context: str) -> str:
    """Encrypt for each reader's card; ``context`` (the task id) is bound to every part.

    The result is encrypted once under a content key and only that 32-byte key is sealed
    per reader, rather than HPKE-sealing the whole result to each: a result can be a
    trained model of megabytes, and it should not grow with the number of readers.
    """
    cards: dict[str, IdentityCard] = {}
    for card in readers:
        if cards.setdefault(card.name, card) != card:
            raise ValueError(f"two different readers are named {card.name!r}")
    content_key = AESGCM.generate_key(256)
    nonce = os.urandom(12)  # the key is fresh and used once; a random nonce costs nothing
    recipients = {
        name: _seal_key(content_key, card, context) for name, card in sorted(cards.items())
    }
    ciphertext = AESGCM(content_key).encrypt(nonce, plaintext, _aad(context))
    return json.dumps(
        {
            "scheme": SCHEME,
            "content": "AES-256-GCM",
            "context": context,
            "recipients": recipients,
            "nonce": _b64(nonce),
            "ciphertext": _b64(ciphertext),
        },
        sort_keys=True,
    )


def _denied(reader: Identity, why: str) -> AccessDenied:
    return AccessDenied(
        f"cannot open this result as {reader.name}: {why}",
        rule="result.sealed",
        fix="only the researcher who submitted the task and the permit's data-access body "
        "can read its result",
    )


def open_sealed(sealed: str, reader: Identity, *, context: str | None = None) -> bytes:
    """The plaintext of a result sealed to ``reader`` (either scheme), or ``AccessDenied``.

    ``context`` is the task the reader asked for: a result sealed for another
    task (moved between rows by whoever holds the database) is refused, and so
    is one sealed without the post-quantum key the reader's card carries.
    """
    try:
        box = json.loads(sealed)
        scheme = box.get("scheme")
        entry = box["recipients"].get(reader.name)
        if scheme not in (SCHEME, LEGACY_SCHEME) or entry is None:
            raise _denied(reader, "it is not sealed to you")
        sealed_for = str(box["context"])
        if context is not None and sealed_for != context:
            raise _denied(reader, f"it is the result of another task ({sealed_for})")
        context = sealed_for
        if reader.mlkem is not None and (
            scheme == LEGACY_SCHEME or entry.get("suite") == X25519_SUITE
        ):
            raise _denied(
                reader,
                "it is sealed without the post-quantum key your card carries (a downgrade)",
            )
        if scheme == LEGACY_SCHEME:
            content_key = _legacy_content_key(entry, reader.encryption, context)
            aad = context.encode()
        else:
            content_key = _content_key(entry, reader, context)
            aad = _aad(context)
        return AESGCM(content_key).decrypt(
            base64.b64decode(box["nonce"]), base64.b64decode(box["ciphertext"]), aad
        )
    except InvalidTag:
        raise _denied(reader, "the key does not match or the sealed result was altered") from None
    except (ValueError, KeyError, TypeError, AttributeError):
        raise _denied(reader, "it is not a sealed result") from None


def _content_key(entry: Any, reader: Identity, context: str) -> bytes:
    suite = entry["suite"]
    sealed_key = base64.b64decode(entry["key"])
    if suite == HYBRID_SUITE:
        if reader.mlkem is None:
            raise _denied(
                reader,
                "it is sealed to an ML-KEM-768 key and this identity has none (an identity "
                "made before ML-KEM cannot open what was sealed to a newer card)",
            )
        hybrid = hpke.MLKEM768X25519PrivateKey(reader.mlkem, reader.encryption)
        return _SUITES[suite].decrypt(sealed_key, hybrid, info=_info(suite, context))
    if suite == X25519_SUITE:
        return _SUITES[suite].decrypt(sealed_key, reader.encryption, info=_info(suite, context))
    raise _denied(reader, f"it is sealed with a suite this version does not know ({suite!r})")


def _legacy_content_key(entry: Any, private: X25519PrivateKey, context: str) -> bytes:
    """Unwrap a content key sealed before HPKE, exactly as that scheme wrapped it."""
    ephemeral_text = str(entry["ephemeral"])
    shared = private.exchange(parse_encryption_key(ephemeral_text))
    info = f"oncofed result key|{ephemeral_text}|{public_key_text(private.public_key())}"
    key = HKDF(hashes.SHA256(), 32, salt=None, info=info.encode()).derive(shared)
    return AESGCM(key).decrypt(
        base64.b64decode(entry["nonce"]), base64.b64decode(entry["key"]), context.encode()
    )


__all__ = ["HYBRID_SUITE", "LEGACY_SCHEME", "SCHEME", "X25519_SUITE", "open_sealed", "seal"]
