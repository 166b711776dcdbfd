"""Shamir secret sharing of 32-byte secrets over the prime field GF(2**521 - 1).

A secret is one field element (the Mersenne prime 2**521 - 1 exceeds 2**256,
so no chunking is needed), shared as the values at x = 1..n of a random
polynomial of degree threshold - 1 whose constant term is the secret. Any
``threshold`` shares give it back by Lagrange interpolation at zero; fewer
give a value that is independent of the secret (and almost surely not even a
32-byte number, which ``combine`` reports).
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from functools import lru_cache

PRIME = (1 << 521) - 1
SECRET_BYTES = 32
SHARE_BYTES = 66  # ceil(521 / 8)


def split(secret: bytes, n: int, threshold: int) -> dict[int, bytes]:
    """Shares at x = 1..n, each ``SHARE_BYTES`` long."""
    if len(secret) != SECRET_BYTES:
        raise ValueError(f"a secret is {SECRET_BYTES} bytes")
    if not 1 <= threshold <= n:
        raise ValueError(f"threshold must be between 1 and {n}")
    coefficients = [int.from_bytes(secret, "big")] + [
        secrets.randbelow(PRIME) for _ in range(threshold - 1)
    ]
    shares = {}
    for x in range(1, n + 1):
        y = 0
        for c in reversed(coefficients):  # Horner
            y = (y * x + c) % PRIME
        shares[x] = y.to_bytes(SHARE_BYTES, "big")
    return shares


@lru_cache(maxsize=256)
def _weights(xs: tuple[int, ...], at: int) -> tuple[int, ...]:
    """Lagrange weights for evaluating at ``at`` from points at ``xs``.

    Every secret of one unmasking round is rebuilt from the same x values, so
    the modular inverses are computed once per round, not once per secret.
    """
    if len(set(xs)) != len(xs) or any(not 0 < x < PRIME for x in xs):
        raise ValueError("share indices must be distinct and non-zero")
    weights = []
    for i, xi in enumerate(xs):
        numerator = denominator = 1
        for j, xj in enumerate(xs):
            if i != j:
                numerator = numerator * (at - xj) % PRIME
                denominator = denominator * (xi - xj) % PRIME
        weights.append(numerator * pow(denominator, -1, PRIME) % PRIME)
    return tuple(weights)


def _value(share: bytes) -> int:
    if len(share) != SHARE_BYTES:
        raise ValueError(f"a share is {SHARE_BYTES} bytes, not {len(share)}")
    y = int.from_bytes(share, "big")
    if y >= PRIME:
        raise ValueError("a share is not an element of the field")
    return y


def interpolate(shares: Mapping[int, bytes], at: int = 0) -> int:
    """The field element at ``at`` of the polynomial through ``shares`` (no range check)."""
    xs = tuple(sorted(shares))
    weights = _weights(xs, at % PRIME)
    return sum(w * _value(shares[x]) for w, x in zip(weights, xs, strict=True)) % PRIME


def combine(shares: Mapping[int, bytes], threshold: int | None = None) -> bytes:
    """The secret from at least ``threshold`` shares.

    With ``threshold`` given and more shares than that, the first
    ``threshold`` shares rebuild the polynomial and every further share must
    lie on it: a corrupted or mismatched share is caught instead of silently
    giving a wrong secret. Raises ``ValueError`` when the shares are
    inconsistent or do not interpolate to a 32-byte secret (which is what too
    few shares almost always give).
    """
    xs = sorted(shares)
    if threshold is not None:
        if len(xs) < threshold:
            raise ValueError(f"{len(xs)} shares, {threshold} needed")
        basis = {x: shares[x] for x in xs[:threshold]}
        for x in xs[threshold:]:
            if interpolate(basis, x) != _value(shares[x]):
                raise ValueError(f"the share at x = {x} is not on the same polynomial")
        shares = basis
    secret = interpolate(shares, 0)
    if secret >= 1 << (8 * SECRET_BYTES):
        raise ValueError("the shares do not reconstruct a 32-byte secret")
    return secret.to_bytes(SECRET_BYTES, "big")


__all__ = ["PRIME", "SECRET_BYTES", "SHARE_BYTES", "combine", "interpolate", "split"]
