"""Wald inference on fitted coefficients, shared by the regression results (GLM, Cox)."""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pandas as pd
from pydantic import BaseModel


class WaldCoefficients(BaseModel):
    """Coefficients with their covariance; z statistics, p-values and intervals from them."""

    names: list[str]
    coef: list[float]
    cov: list[list[float]]

    @property
    def params(self) -> pd.Series:
        return pd.Series(self.coef, index=self.names, name="coef")

    @property
    def bse(self) -> pd.Series:
        return pd.Series(np.sqrt(np.diag(np.array(self.cov))), index=self.names, name="se")

    def wald_z(self) -> pd.Series:
        return (self.params / self.bse).rename("z")

    def wald_pvalues(self) -> pd.Series:
        """Two-sided normal p-values (erfc keeps precision for large |z|)."""
        return pd.Series(
            [math.erfc(abs(v) / math.sqrt(2.0)) for v in self.wald_z()], index=self.names
        )

    def wald_interval(self, alpha: float) -> tuple[pd.Series, pd.Series]:
        q = NormalDist().inv_cdf(1.0 - alpha / 2.0)
        return self.params - q * self.bse, self.params + q * self.bse

    def cov_params(self) -> pd.DataFrame:
        return pd.DataFrame(self.cov, index=self.names, columns=self.names)


__all__ = ["WaldCoefficients"]
