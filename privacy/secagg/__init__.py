"""Secure aggregation: the coordinator learns the sum of the nodes' vectors, nothing else.

``protocol`` runs the four stages; ``shamir``, ``prg`` and ``fixedpoint`` are
its parts. The node side is driven by ``oncofed.node.secure`` and the server
side by ``oncofed.tasks.secure``.
"""

from oncofed.privacy.secagg import shamir
from oncofed.privacy.secagg.fixedpoint import (
    FRAC_BITS,
    decode_float,
    decode_int,
    encode_float,
    encode_int,
)
from oncofed.privacy.secagg.protocol import SecAggError, SecAggNode, SecAggServer

__all__ = [
    "FRAC_BITS",
    "SecAggError",
    "SecAggNode",
    "SecAggServer",
    "decode_float",
    "decode_int",
    "encode_float",
    "encode_int",
    "shamir",
]
