"""oncofed: federated analytics for cancer centres.

A researcher's entry points are :class:`Session` (connect to a coordinator) and
:class:`Sandbox` (a real local network for trying things out).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from oncofed.errors import OncofedError

try:
    __version__ = version("oncofed")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0+source"

__all__ = ["OncofedError", "Sandbox", "Session", "__version__"]


def __getattr__(name: str) -> object:
    # Imported lazily: a node process should not pay for the researcher client.
    if name == "Session":
        from oncofed.session import Session

        return Session
    if name == "Sandbox":
        from oncofed.sandbox import Sandbox

        return Sandbox
    raise AttributeError(f"module 'oncofed' has no attribute {name!r}")
