"""Masks: a 32-byte seed expanded to uint64 values by the ChaCha20 stream cipher.

The keystream is read directly as little-endian uint64, so expanding 10**6
values is one cipher call over 8 MB plus a zero-copy view: no Python loop.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

U64 = npt.NDArray[np.uint64]
SEED_BYTES = 32
# Every seed is derived for one (session, purpose, pair) and expands one mask,
# so a fixed nonce never encrypts two different streams under one key.
_NONCE = bytes(16)


def expand(seed: bytes, length: int) -> U64:
    """``length`` pseudo-random uint64 values from ``seed`` (the keystream, read as uint64)."""
    if len(seed) != SEED_BYTES:
        raise ValueError(f"a mask seed is {SEED_BYTES} bytes, not {len(seed)}")
    if length < 0:
        raise ValueError("a mask length cannot be negative")
    encryptor = Cipher(algorithms.ChaCha20(seed, _NONCE), mode=None).encryptor()
    stream = encryptor.update(bytes(8 * length))
    # frombuffer gives a read-only view of the bytes; the copy makes it an ordinary array.
    return np.frombuffer(stream, dtype="<u8").astype(np.uint64, copy=True)


__all__ = ["SEED_BYTES", "U64", "expand"]
