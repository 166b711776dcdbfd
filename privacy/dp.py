"""Differentially private releases, with noise drawn by OpenDP.

A request asks for DP with ``dp={"epsilon": ..., "delta": ...}``: the loss one
release may cost at each node. The node turns it into a zero-concentrated
(zCDP) budget rho (``accounting.rho_for``), splits rho across the quantities
the task releases, and releases each through an OpenDP measurement whose
privacy map OpenDP proves:

- counts (histogram bins, table cells, event counts): the discrete Gaussian
  on an integer vector whose L2 sensitivity the task states (one person
  changes one cell by one);
- bounded sums: OpenDP's clamp then checked float sum, whose sensitivity
  includes floating-point rounding (the reason not to add NumPy noise to a
  NumPy sum), then the Gaussian -- OpenDP samples floats exactly, so released
  values show no low-bit pattern (Mironov 2012).

Bounds for sums come from the node's schema (``bounds`` of a column) or the
request, never from the data. The release states its mechanism, its loss and
the noise scale of every quantity, so a researcher can form intervals.
No seed or RNG is reachable from a request: OpenDP draws from the operating
system's cryptographic source.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from flwr.app import ConfigRecord
from opendp import measurements, transformations
from opendp.domains import atom_domain, vector_domain
from opendp.metrics import l2_distance, symmetric_distance
from opendp.mod import Measurement, binary_search_param, enable_features
from pydantic import BaseModel, ConfigDict, Field

from oncofed.privacy.accounting import PrivacyLoss, loss_record, rho_for

# Not opendp.prelude: it also imports OpenDP's scikit-learn extras, which made every
# `oncofed` command and node start pay for scikit-learn (1 s quiet, 10 s on a loaded machine).
enable_features("contrib")

MAX_ROWS = 1 << 30
"""Public upper bound on a dataset's rows; OpenDP's float-sum sensitivity accounts for it."""

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


class DPRequest(BaseModel):
    """The privacy loss a researcher lets one release cost at each node."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    epsilon: float = Field(gt=0, le=10, description="Epsilon of one release at each node.")
    delta: float = Field(default=1e-6, gt=0, lt=1e-2, description="Delta of that epsilon.")

    @property
    def rho(self) -> float:
        return rho_for(self.epsilon, self.delta)

    def loss(self) -> PrivacyLoss:
        return PrivacyLoss.from_rho(self.rho)


@dataclass
class ZCDPRelease:
    """Builds one node's DP release: spends a rho budget part by part.

    Parts are composed sequentially (their rhos add). A part applied to
    disjoint groups of rows -- one person in one group -- is charged once, as
    parallel composition allows; callers say so by releasing all groups of a
    part in one call.
    """

    budget: float
    delta: float
    mechanism: str = "zCDP Gaussian (OpenDP)"
    spent: float = 0.0
    scales: dict[str, float] = field(default_factory=dict)

    def counts(
        self, name: str, counts: npt.ArrayLike, rho: float, sensitivity: int = 1
    ) -> IntArray:
        """Discrete-Gaussian noisy counts; ``sensitivity``: the L2 change one person makes."""
        values = np.asarray(counts, dtype=np.int64)
        scale = sensitivity / math.sqrt(2 * rho)
        space = vector_domain(atom_domain(T=int)), l2_distance(T=int)
        measurement = measurements.make_gaussian(*space, scale=scale)
        noisy = measurement([int(v) for v in values.ravel()])
        self._spend(name, float(measurement.map(sensitivity)), scale)  # type: ignore[no-untyped-call]
        return np.asarray(noisy, dtype=np.int64).reshape(values.shape)

    def floats(
        self, name: str, values: npt.ArrayLike, rho: float, sensitivity: float
    ) -> FloatArray:
        """Gaussian noise on a float vector whose L2 change by one person is ``sensitivity``.

        For statistics a task bounds itself (clamped rows' cross-products, a
        model's per-row gradient with clipped covariates): the caller states
        the bound and must have enforced it on every row before summing.
        """
        flat = np.asarray(values, dtype=np.float64)
        scale = float(sensitivity) / math.sqrt(2 * rho)
        space = vector_domain(atom_domain(T=float, nan=False)), l2_distance(T=float)
        measurement = measurements.make_gaussian(*space, scale=scale)
        noisy = measurement([float(v) for v in flat.ravel()])
        self._spend(name, float(measurement.map(float(sensitivity))), scale)  # type: ignore[no-untyped-call]
        return np.asarray(noisy, dtype=np.float64).reshape(flat.shape)

    def bounded_sums(
        self, name: str, chunks: list[FloatArray], bounds: tuple[float, float], rho: float
    ) -> list[float]:
        """Noisy sums of disjoint chunks of rows, values clamped to public ``bounds``.

        Each chunk holds other people (e.g. one group each), so the part costs
        rho once, not once per chunk. Missing values are left out.
        """
        lo, hi = float(bounds[0]), float(bounds[1])
        space = vector_domain(atom_domain(T=float, nan=False)), symmetric_distance()

        def chain(scale: float) -> Measurement:
            measurement: Measurement = (
                transformations.make_clamp(*space, bounds=(lo, hi))
                >> transformations.make_bounded_float_checked_sum(
                    size_limit=MAX_ROWS, bounds=(lo, hi)
                )
                >> measurements.then_gaussian(scale)
            )
            return measurement

        scale = float(binary_search_param(chain, d_in=1, d_out=rho, T=float))
        measurement = chain(scale)
        sums = [
            float(measurement([float(v) for v in chunk if not math.isnan(v)])) for chunk in chunks
        ]
        self._spend(name, float(measurement.map(1)), scale)  # type: ignore[no-untyped-call]
        return sums

    def loss(self) -> PrivacyLoss:
        return PrivacyLoss.from_rho(self.spent)

    def record(self) -> ConfigRecord:
        """The privacy record for the reply: mechanism, loss and each quantity's noise scale."""
        return loss_record(
            self.loss(),
            self.mechanism,
            self.delta,
            rho=self.spent,
            **{f"scale.{name}": scale for name, scale in self.scales.items()},
        )

    def _spend(self, name: str, rho: float, scale: float) -> None:
        if self.spent + rho > self.budget * (1 + 1e-9):
            raise ValueError(
                f"release part {name!r} would spend rho {self.spent + rho:g} of {self.budget:g}"
            )
        self.spent += rho
        self.scales[name] = scale


def release_for(request: DPRequest) -> ZCDPRelease:
    return ZCDPRelease(budget=request.rho, delta=request.delta)


__all__ = ["MAX_ROWS", "DPRequest", "ZCDPRelease", "release_for"]
