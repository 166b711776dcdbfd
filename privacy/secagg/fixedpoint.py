"""Numbers as elements of Z/2**64: integers exactly, floats in fixed point.

Masked sums are exact modulo 2**64, so a vector must be encoded as integers
in that ring and the total decoded as two's complement. Floats are scaled by
2**frac_bits and rounded; the total's error is at most n * 2**-(frac_bits + 1).
A value is refused unless the sum of ``nodes`` values of its size still fits
a signed 64-bit integer: a wrapped total would decode to a plausible but
wrong number, which is worse than no number.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from oncofed.privacy.secagg.errors import SecAggError, refuse
from oncofed.privacy.secagg.prg import U64

FRAC_BITS = 24
"""Float resolution 6e-8; totals up to about 5e11 / n_nodes in magnitude fit."""

_FIX = "scale the values down, use fewer fractional bits, or split the sum"


def _limit(nodes: int) -> int:
    """The largest magnitude one node may contribute so that ``nodes`` of them fit int64."""
    if nodes < 1:
        raise ValueError("nodes must be at least 1")
    return (2**63 - 1) // nodes


def _overflow(biggest: float, frac_bits: int, nodes: int) -> SecAggError:
    return refuse(
        f"a value of magnitude {biggest:.6g} times 2^{frac_bits} summed over {nodes} nodes "
        "does not fit a signed 64-bit integer",
        "overflow",
        "",
        _FIX,
    )


def encode_int(values: npt.ArrayLike, nodes: int = 1) -> U64:
    """Integers (counts) as they are, exactly; refused if ``nodes`` of them could overflow."""
    array = np.asarray(values)
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"encode_int takes integers, not {array.dtype}")
    limit = _limit(nodes)
    if array.size and np.issubdtype(array.dtype, np.unsignedinteger):
        if int(array.max()) > limit:
            raise _overflow(float(array.max()), 0, nodes)
        return array.astype(np.uint64)
    signed = array.astype(np.int64)
    # Compare, never abs(): abs(int64 min) wraps to a negative number.
    if signed.size and (int(signed.max()) > limit or int(signed.min()) < -limit):
        raise _overflow(float(np.max(np.abs(signed.astype(np.float64)))), 0, nodes)
    return signed.astype(np.uint64)


def decode_int(total: U64) -> npt.NDArray[np.int64]:
    """A total of ``encode_int`` values back as signed integers (two's complement)."""
    return np.asarray(total, dtype=np.uint64).view(np.int64)


def encode(values: npt.ArrayLike, frac_bits: int = FRAC_BITS, *, nodes: int = 1) -> U64:
    """Fixed point: ``round(v * 2**frac_bits)`` in two's complement.

    Integer arrays are shifted exactly (no rounding), so with ``frac_bits=0``
    counts pass as they are; ``nodes`` is how many such vectors will be summed.
    """
    if not 0 <= frac_bits <= 62:
        raise ValueError("frac_bits must be between 0 and 62")
    array = np.asarray(values)
    if np.issubdtype(array.dtype, np.integer):
        limit = _limit(nodes) >> frac_bits
        if array.size and (int(array.max()) > limit or int(array.min()) < -limit):
            raise _overflow(float(np.max(np.abs(array.astype(np.float64)))), frac_bits, nodes)
        return (array.astype(np.int64) << np.int64(frac_bits)).astype(np.uint64)
    floats = array.astype(np.float64)
    if not np.all(np.isfinite(floats)):
        raise refuse(
            "a value to encode is NaN or infinite", "overflow", "", "remove non-finite values"
        )
    rounded = np.rint(np.ldexp(floats, frac_bits))
    biggest = float(np.max(np.abs(rounded))) if rounded.size else 0.0
    # 2**63 is exact in float64, so this guards the cast; the integer check is then exact.
    if biggest >= 2.0**63:
        raise _overflow(float(np.max(np.abs(floats))), frac_bits, nodes)
    ints = rounded.astype(np.int64)
    if ints.size and int(np.max(np.abs(ints))) > _limit(nodes):
        raise _overflow(float(np.max(np.abs(floats))), frac_bits, nodes)
    return ints.astype(np.uint64)


def decode(total: U64, frac_bits: int = FRAC_BITS) -> npt.NDArray[np.float64]:
    """A total of ``encode`` values back as floats."""
    signed = np.asarray(total, dtype=np.uint64).view(np.int64)
    return np.ldexp(signed.astype(np.float64), -frac_bits)


def encode_float(values: npt.ArrayLike, nodes: int, frac_bits: int = FRAC_BITS) -> U64:
    """``encode`` with the node count first (the form ``records`` and older callers use)."""
    return encode(np.asarray(values, dtype=np.float64), frac_bits, nodes=nodes)


def decode_float(total: U64, frac_bits: int = FRAC_BITS) -> npt.NDArray[np.float64]:
    """Same as ``decode``."""
    return decode(total, frac_bits)


__all__ = [
    "FRAC_BITS",
    "decode",
    "decode_float",
    "decode_int",
    "encode",
    "encode_float",
    "encode_int",
]
