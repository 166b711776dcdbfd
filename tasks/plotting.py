"""matplotlib for the results' ``plot()`` methods, which only researchers call.

matplotlib is an optional dependency (the ``demo`` extra): a node never
plots, so it is imported when a plot is drawn, and its absence is a typed
error that says how to install it.
"""

from __future__ import annotations

from types import ModuleType

from oncofed.kernel.errors import ConfigError


def pyplot() -> ModuleType:
    """matplotlib.pyplot, or a typed error saying how to install it."""
    try:
        import matplotlib.pyplot as plt
    except ModuleNotFoundError:
        raise ConfigError(
            "plotting needs matplotlib, which is not installed",
            rule="plot.matplotlib",
            fix='pip install "oncofed[demo]"',
        ) from None
    return plt


__all__ = ["pyplot"]
