"""The top layer: what researchers, data-access bodies and operators run on their own machines.

The Python session, the ``oncofed`` command, the local sandbox and demo, and
the terminal renderings of results. It drives the layers below; nothing
below imports it.
"""
