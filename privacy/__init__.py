"""Privacy rules a node enforces before anything leaves it.

The node's policy (``policy.py``) is set by the centre's operator in the
node's config; node mods and task handlers read it, so no request can loosen
it. What a task type releases by design -- for example that ``describe`` never
releases a minimum or maximum -- is stated in the task's own module.
"""

from oncofed.privacy.policy import NodePolicy

__all__ = ["NodePolicy"]
