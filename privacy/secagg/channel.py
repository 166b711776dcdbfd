"""Key derivation and sealed shares between two nodes of one session.

Every derived key and every piece of associated data names the session and
the participant roster, so nothing agreed or sealed in one run (or for one
set of nodes) is usable in another: a replayed ciphertext fails its tag, a
replayed key pair yields unrelated masks.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

NONCE_BYTES = 12
_RAW = serialization.Encoding.Raw, serialization.PublicFormat.Raw


def bind(session: str, roster: Sequence[str]) -> bytes:
    """A fixed-length digest of (session, roster), computed once per session.

    Every key and associated data starts with it; the roster can be long (one
    name per node) and is otherwise re-encoded for every pair of nodes.
    """
    encoded = json.dumps(["oncofed-secagg/1", session, list(roster)]).encode()
    return hashlib.sha256(encoded).digest()


def context(purpose: str, binding: bytes, *names: str) -> bytes:
    """Unambiguous bytes for a purpose within a session: the 32-byte binding, then JSON."""
    return binding + json.dumps([purpose, *names]).encode()


def public_bytes(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(*_RAW)


def agree(own: X25519PrivateKey, peer_public: bytes, info: bytes) -> bytes:
    """HKDF-SHA256 of the X25519 secret: raises ``ValueError`` for a degenerate peer key."""
    shared = own.exchange(X25519PublicKey.from_public_bytes(peer_public))
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(shared)


def pair_seed(own_c: X25519PrivateKey, peer_c_public: bytes, binding: bytes) -> bytes:
    """k_uv: the seed both ends of a pair derive for their cancelling masks."""
    return agree(own_c, peer_c_public, context("mask", binding))


def share_key(own_s: X25519PrivateKey, peer_s_public: bytes, binding: bytes) -> bytes:
    """The AES-GCM key for shares between two nodes (symmetric: same key both ways)."""
    return agree(own_s, peer_s_public, context("shares", binding))


def share_aad(binding: bytes, sender: str, receiver: str) -> bytes:
    return context("share", binding, sender, receiver)


def seal(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """nonce || AES-GCM ciphertext; a fresh random nonce per message."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def unseal(key: bytes, sealed: bytes, aad: bytes) -> bytes:
    """The plaintext; raises ``cryptography.exceptions.InvalidTag`` if anything differs."""
    return AESGCM(key).decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], aad)


__all__ = [
    "agree",
    "bind",
    "context",
    "pair_seed",
    "public_bytes",
    "seal",
    "share_aad",
    "share_key",
    "unseal",
]
