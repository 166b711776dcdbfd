"""The installed oncofed version, which nodes state in their hello and the CLI prints."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    VERSION = version("oncofed")
except PackageNotFoundError:  # running from a source tree without installing
    VERSION = "0.0.0+source"

__all__ = ["VERSION"]
