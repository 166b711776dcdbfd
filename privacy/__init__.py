"""Privacy rules a node enforces before anything leaves it.

Disclosure control, differential privacy and the budget ledger live here and
are applied by node mods (``oncofed.node.mods``) around every task handler, so
no task can skip them. What a task type releases by design -- for example that
``describe`` never releases a minimum or maximum -- is stated in the task's own
module.
"""
