"""Privacy loss as a Rényi-DP curve: one currency for statistics and training.

Every release that carries differential-privacy noise states its loss as
Rényi-DP epsilons on one fixed grid of orders (``RDP_ORDERS``, the orders
Opacus's accountant uses by default, extended to higher orders). Losses compose by adding the curves
order by order, which is exact composition for RDP; a zero-concentrated
(zCDP) Gaussian release with parameter rho is the curve ``rho * alpha``, and
Opacus's subsampled-Gaussian accountant returns its curve on the same orders.

An (epsilon, delta) figure is only ever a *display* of a curve: the ledger
adds curves and converts the total with the conversion of Balle et al.
(2020, Prop. 12), minimised over the orders -- the conversion Opacus uses.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from flwr.app import ConfigRecord, RecordDict

RDP_ORDERS: tuple[float, ...] = tuple(
    [1 + x / 10.0 for x in range(1, 100)]
    + [float(a) for a in range(12, 64)]
    # Small losses at small delta are tightest at high orders (alpha ~ sqrt(log(1/delta)/rho)).
    + [64.0, 80.0, 96.0, 128.0, 160.0, 192.0, 256.0, 384.0, 512.0, 768.0, 1024.0, 2048.0, 4096.0]
)


@dataclass(frozen=True)
class PrivacyLoss:
    """A Rényi-DP curve: ``rdp[i]`` is the epsilon at order ``RDP_ORDERS[i]``."""

    rdp: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.rdp) != len(RDP_ORDERS):
            raise ValueError(f"a privacy loss needs {len(RDP_ORDERS)} orders, got {len(self.rdp)}")
        # +inf is a valid curve value: no guarantee at that order (the minimum skips it).
        if any(math.isnan(e) or e < 0 for e in self.rdp):
            raise ValueError("Rényi-DP epsilons must be non-negative numbers")

    @classmethod
    def zero(cls) -> PrivacyLoss:
        return cls(tuple(0.0 for _ in RDP_ORDERS))

    @classmethod
    def from_rho(cls, rho: float) -> PrivacyLoss:
        """The curve of a rho-zCDP release (e.g. a Gaussian mechanism)."""
        if not (math.isfinite(rho) and rho >= 0):
            raise ValueError(f"rho must be finite and non-negative, got {rho}")
        return cls(tuple(rho * alpha for alpha in RDP_ORDERS))

    @classmethod
    def from_rdp(cls, orders: Sequence[float], rdp: Sequence[float]) -> PrivacyLoss:
        """A curve computed on ``orders`` (which must be ``RDP_ORDERS``), e.g. by Opacus."""
        if tuple(float(a) for a in orders) != RDP_ORDERS:
            raise ValueError("compute the Rényi-DP curve on oncofed.privacy.RDP_ORDERS")
        # Opacus's analysis overflows to NaN at very high orders: no bound there.
        return cls(tuple(math.inf if math.isnan(float(e)) else float(e) for e in rdp))

    def __add__(self, other: PrivacyLoss) -> PrivacyLoss:
        return PrivacyLoss(tuple(a + b for a, b in zip(self.rdp, other.rdp, strict=True)))

    def epsilon(self, delta: float) -> float:
        """The smallest epsilon this curve guarantees at ``delta`` (0 for no loss)."""
        if not 0 < delta < 1:
            raise ValueError(f"delta must be in (0, 1), got {delta}")
        if not any(self.rdp):
            return 0.0
        return max(
            0.0,
            min(
                eps + math.log1p(-1 / alpha) - (math.log(delta) + math.log(alpha)) / (alpha - 1)
                for alpha, eps in zip(RDP_ORDERS, self.rdp, strict=True)
            ),
        )


def rho_for(epsilon: float, delta: float) -> float:
    """The largest zCDP rho whose curve converts to at most (epsilon, delta).

    A request states the loss it may cost as (epsilon, delta); Gaussian noise is
    then calibrated to this rho. Bisection on the same conversion the ledger
    uses, so a release never displays more than it asked for.
    """
    if not (epsilon > 0 and 0 < delta < 1):
        raise ValueError("epsilon must be positive and delta in (0, 1)")
    lo, hi = 0.0, epsilon
    for _ in range(200):
        mid = (lo + hi) / 2
        if PrivacyLoss.from_rho(mid).epsilon(delta) <= epsilon:
            lo = mid
        else:
            hi = mid
    if lo == 0.0:
        raise ValueError(
            f"epsilon={epsilon:g} is below what delta={delta:g} allows on these orders"
        )
    return lo


PRIVACY_RECORD = "oncofed.privacy"
"""Name of the reply record in which a handler states the privacy loss of its release."""


def loss_record(
    loss: PrivacyLoss, mechanism: str, delta: float, **details: float | int | str
) -> ConfigRecord:
    """The record a handler adds to its reply so the node charges the loss before it leaves.

    ``details`` are what a researcher needs to use the noisy values, e.g. the
    noise scale of each released quantity.
    """
    return ConfigRecord(
        {
            "mechanism": mechanism,
            "rdp": list(loss.rdp),
            "delta": delta,
            "epsilon": loss.epsilon(delta),
            **details,
        }
    )


def loss_of(content: RecordDict) -> PrivacyLoss | None:
    """The privacy loss a reply states, or None for a release without DP noise."""
    record = content.config_records.get(PRIVACY_RECORD)
    if record is None:
        return None
    rdp = record["rdp"]
    if not isinstance(rdp, list):
        raise ValueError("the privacy record's rdp must be a list")
    return PrivacyLoss(tuple(float(e) for e in rdp))  # type: ignore[arg-type]


__all__ = ["PRIVACY_RECORD", "RDP_ORDERS", "PrivacyLoss", "loss_of", "loss_record", "rho_for"]
