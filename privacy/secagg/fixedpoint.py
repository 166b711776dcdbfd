"""Numbers as elements of Z/2**64: integers exactly, floats in fixed point.

Masked sums are exact modulo 2**64, so a vector must be encoded as integers
in that ring and the total decoded as two's complement. Floats are scaled by
2**frac_bits and rounded; the total's error is at most n * 2**-(frac_bits + 1).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from oncofed.privacy.secagg.prg import U64

FRAC_BITS = 24
"""Float resolution 6e-8; totals up to about 5e11 / n_nodes in magnitude fit."""


def encode_int(values: npt.ArrayLike) -> U64:
    return np.asarray(values, dtype=np.int64).astype(np.uint64)


def decode_int(total: U64) -> npt.NDArray[np.int64]:
    return total.astype(np.int64)


def encode_float(values: npt.ArrayLike, nodes: int, frac_bits: int = FRAC_BITS) -> U64:
    """Fixed-point encoding; refuses values whose sum over ``nodes`` could overflow."""
    scaled = np.rint(np.asarray(values, dtype=np.float64) * 2.0**frac_bits)
    limit = 2.0**63 / max(nodes, 1)
    if not np.all(np.isfinite(scaled)) or np.any(np.abs(scaled) >= limit):
        raise OverflowError(
            f"values up to {float(np.max(np.abs(values))):.3g} do not fit {frac_bits} "
            f"fractional bits summed over {nodes} nodes"
        )
    return scaled.astype(np.int64).astype(np.uint64)


def decode_float(total: U64, frac_bits: int = FRAC_BITS) -> npt.NDArray[np.float64]:
    return total.astype(np.int64).astype(np.float64) / 2.0**frac_bits


__all__ = ["FRAC_BITS", "decode_float", "decode_int", "encode_float", "encode_int"]
