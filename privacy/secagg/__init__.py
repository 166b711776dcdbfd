"""Pairwise-masked secure summation that tolerates dropouts (Bonawitz et al. 2017).

The semi-honest variant with authenticated keys: the coordinator may look at
everything it relays and may try to substitute keys, but follows the
protocol's steps. Four stages, each one message from the coordinator to every
node and back (``server.py`` is the coordinator's side), all bound to a
``session`` string and the participant roster:

1. ``advertise`` (``node.py``): a node makes two fresh X25519 key pairs --
   ``c`` to agree pairwise masks, ``s`` to encrypt secret shares -- and signs
   both public keys with its long-term Ed25519 identity (``advert.py``).
   Every node pins the others' identity keys itself, so a substituted,
   unsigned or replayed key is refused naming the node it claims to be.
2. ``share``: a node checks every advert, draws a self-mask seed ``b``,
   Shamir-shares ``b`` and its ``c`` private key t-of-n (``shamir.py``) and
   seals each peer's shares with AES-GCM under a key agreed with the peer's
   ``s`` key, the associated data naming session, roster, sender and
   receiver (``channel.py``).
3. ``mask``: y = x + PRG(b) + sum over v > u of PRG(k_uv) - sum over v < u of
   PRG(k_uv) modulo 2**64 (``prg.py``): pairwise masks cancel in the total,
   and the self-mask still hides x if a peer's ``c`` key is later revealed.
4. ``unmask``: for each survivor a node reveals its share of that survivor's
   ``b``; for each node that dropped after sharing, its share of that node's
   ``c`` key -- never both for one node. With ``t`` shares the coordinator
   (``server.py``) removes the survivors' self-masks and the dropped nodes'
   pairwise masks, and learns only the survivors' sum.

Not covered (the active-adversary variant): a coordinator that sends
different survivor lists to different nodes is not caught by a consistency
round; a majority threshold and the node's refusal to reveal both secrets of
one node bound what it could learn.

Transport-agnostic: every stage takes and returns bytes, dicts of bytes or
uint64 numpy arrays. ``records`` maps a Flower reply to one vector and back;
``oncofed.node.secure`` and ``oncofed.tasks.secure`` drive the stages over the
governed runtime.
"""

from oncofed.privacy.secagg import shamir
from oncofed.privacy.secagg.advert import Advert
from oncofed.privacy.secagg.errors import SecAggError
from oncofed.privacy.secagg.fixedpoint import (
    FRAC_BITS,
    decode,
    decode_float,
    decode_int,
    encode,
    encode_float,
    encode_int,
)
from oncofed.privacy.secagg.node import SecAggNode
from oncofed.privacy.secagg.prg import expand
from oncofed.privacy.secagg.server import SecAggServer

__all__ = [
    "FRAC_BITS",
    "Advert",
    "SecAggError",
    "SecAggNode",
    "SecAggServer",
    "decode",
    "decode_float",
    "decode_int",
    "encode",
    "encode_float",
    "encode_int",
    "expand",
    "shamir",
]
