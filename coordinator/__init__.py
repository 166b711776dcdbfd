"""The coordinator: node streams, the governed Grid, task runner and state."""

from oncofed.coordinator.server import Coordinator

__all__ = ["Coordinator"]
