"""Shamir secret sharing of 32-byte secrets over the prime field GF(2**521 - 1).

A secret is one field element (2**521 - 1 > 2**256), shared as the values at
x = 1..n of a random polynomial of degree threshold - 1 whose constant term is
the secret. Any ``threshold`` shares give it back by Lagrange interpolation at
zero; fewer give a value independent of the secret.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping

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


def combine(shares: Mapping[int, bytes]) -> bytes:
    """The secret from at least ``threshold`` shares (a wrong value from fewer)."""
    points = [(x, int.from_bytes(y, "big")) for x, y in shares.items()]
    secret = 0
    for i, (xi, yi) in enumerate(points):
        numerator = denominator = 1
        for j, (xj, _) in enumerate(points):
            if i != j:
                numerator = numerator * -xj % PRIME
                denominator = denominator * (xi - xj) % PRIME
        secret = (secret + yi * numerator * pow(denominator, -1, PRIME)) % PRIME
    if secret >= 1 << (8 * SECRET_BYTES):
        raise ValueError("the shares do not reconstruct a 32-byte secret")
    return secret.to_bytes(SECRET_BYTES, "big")


__all__ = ["PRIME", "SHARE_BYTES", "combine", "split"]
