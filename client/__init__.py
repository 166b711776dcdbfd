"""The top layer: what researchers, data-access bodies and operators run on their own machines.

The Python session, the ``oncofed`` command (its query commands made from the
task declarations), and the local sandbox and demo. It drives the layers
below; nothing below imports it.
"""
