"""oncofed: federated analytics for cancer centres.

A researcher's entry points are :class:`Session` (connect to a coordinator) and
:class:`Sandbox` (a real local network for trying things out).
"""

from __future__ import annotations

from oncofed.kernel.errors import OncofedError
from oncofed.kernel.version import VERSION

__version__ = VERSION

__all__ = ["OncofedError", "Sandbox", "Session", "__version__"]


def __getattr__(name: str) -> object:
    # Imported lazily: a node process should not pay for the researcher client.
    if name == "Session":
        from oncofed.client.session import Session

        return Session
    if name == "Sandbox":
        from oncofed.client.sandbox import Sandbox

        return Sandbox
    raise AttributeError(f"module 'oncofed' has no attribute {name!r}")
