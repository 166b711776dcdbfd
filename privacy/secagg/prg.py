"""Masks: a 32-byte seed expanded to uint64 values by the ChaCha20 stream cipher."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

U64 = npt.NDArray[np.uint64]
_NONCE = bytes(16)  # every seed is used for one mask only, so a fixed nonce is safe


def expand(seed: bytes, length: int) -> U64:
    """``length`` pseudo-random uint64 values from ``seed`` (the keystream, read as uint64)."""
    encryptor = Cipher(algorithms.ChaCha20(seed, _NONCE), mode=None).encryptor()
    stream = encryptor.update(bytes(8 * length))
    return np.frombuffer(stream, dtype="<u8").astype(np.uint64)


__all__ = ["U64", "expand"]
