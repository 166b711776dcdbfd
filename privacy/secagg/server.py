"""The coordinator's side: relays keys and sealed shares, and removes only the masks it may.

The server is untrusted (honest-but-curious): everything it holds is public
keys, ciphertexts it cannot open, the running sum of masked vectors and, at
the end, one kind of share per node. It never stores a node's vector on its
own -- masked vectors are added into the running total as they arrive -- and
the only unmasked number it ever computes is the total.

Stage by stage::

    server = SecAggServer(participants, threshold, length)
    server.receive_advert(name, advert)          # stage 1, from each node
    relay = server.adverts()                     # to every node
    server.receive_shares(name, sealed)          # stage 2, from each node
    inbox = server.inbox(name)                   # to each node
    server.receive_masked(name, vector)          # stage 3: the senders are the survivors
    survivors, dropped = server.unmask_request() # to every survivor
    server.receive_unmask(name, reveal)          # stage 4, from each survivor
    total = server.result()                      # the sum modulo 2**64
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from oncofed.privacy.secagg import shamir
from oncofed.privacy.secagg.advert import Advert
from oncofed.privacy.secagg.channel import bind, pair_seed, public_bytes
from oncofed.privacy.secagg.errors import SecAggError, refuse
from oncofed.privacy.secagg.node import check_threshold
from oncofed.privacy.secagg.prg import U64, expand

_AGAIN = "run again when more nodes are online"
_VERSION = "make sure every node runs the same oncofed version"


def _bad(problem: str, rule: str, culprit: str, fix: str = _VERSION) -> SecAggError:
    return refuse(problem, rule, "", fix, culprit=culprit)


class SecAggServer:
    """One session's aggregation at the coordinator, driven stage by stage.

    ``participants`` may be ``None`` when the coordinator knows its nodes only
    by transport id: the roster is then the names the adverts carry, fixed
    when ``adverts()`` relays them. ``session`` defaults to the one the first
    advert names; the nodes check it against their own, so the server cannot
    choose it to its advantage.
    """

    def __init__(
        self,
        participants: Sequence[str] | None,
        threshold: int,
        length: int | None = None,
        *,
        session: str | None = None,
    ) -> None:
        self.session = session
        self.participants: tuple[str, ...] = tuple(sorted(participants or ()))
        if participants is not None:
            if len(set(self.participants)) != len(self.participants):
                raise ValueError("participant names must be distinct")
            check_threshold(threshold, len(self.participants), "")
        self.threshold, self.length = threshold, length
        self._adverts: dict[str, bytes] = {}
        self._c_public: dict[str, bytes] = {}
        self._bound: tuple[str, ...] | None = None  # the roster the adverts were signed for
        self._roster: tuple[str, ...] = ()  # fixed when the adverts are relayed
        self._boxes: dict[str, dict[str, bytes]] = {}  # sender -> recipient -> sealed shares
        self._shared: set[str] = set()
        self._masked_total: U64 | None = None  # the sum of masked vectors, never one vector
        self._survivors: set[str] = set()
        self._dropped: tuple[str, ...] = ()
        self._asked = False
        self._reveal_x: dict[str, int] = {}
        self._b_shares: dict[str, dict[int, bytes]] = {}  # survivor -> x -> share of its b
        self._c_shares: dict[str, dict[int, bytes]] = {}  # dropped -> x -> share of its c key
        self._total: U64 | None = None

    # Stage 1 ---------------------------------------------------------------------------

    def receive_advert(self, name: str, advert: bytes) -> None:
        """Keep a node's signed keys to relay (the nodes verify the signatures)."""
        if self._roster:
            raise _bad(f"an advert from {name!r} after the adverts were relayed", "stage", name)
        if self.participants and name not in self.participants:
            raise _bad(f"an advert from {name!r}, which is not a participant", "bad_key", name)
        if name in self._adverts:
            raise _bad(f"a second advert from {name!r}", "replay", name)
        try:
            parsed = Advert.from_bytes(advert)
        except ValueError as exc:
            raise _bad(f"the advert from {name!r} is malformed ({exc})", "bad_key", name) from None
        if parsed.name != name:
            raise _bad(f"the advert from {name!r} names {parsed.name!r}", "bad_key", name)
        if self.session is None:
            self.session = parsed.session
        if parsed.session != self.session:
            raise _bad(
                f"the advert from {name!r} is for session {parsed.session!r}", "replay", name
            )
        if self._bound is None:
            self._bound = parsed.roster
        if parsed.roster != self._bound or (parsed.roster and parsed.roster != self.participants):
            raise _bad(f"the advert from {name!r} is for another roster", "replay", name)
        self._adverts[name] = advert
        self._c_public[name] = parsed.c_public

    def adverts(self) -> dict[str, bytes]:
        """Every advert, to relay to every node; fixes who may go on to share."""
        if len(self._adverts) < self.threshold:
            raise self._too_few(len(self._adverts), "nodes advertised keys")
        self._roster = self._bound or tuple(sorted(self._adverts))
        if not self.participants:
            self.participants = self._roster
        return dict(self._adverts)

    # Stage 2 ---------------------------------------------------------------------------

    def receive_shares(self, sender: str, sealed: Mapping[str, bytes]) -> None:
        """Keep a node's sealed shares, one per other advertised node, to route."""
        if not self._roster or self._asked or self._masked_total is not None:
            raise _bad(f"shares from {sender!r} out of turn", "stage", sender)
        if sender not in self._adverts or sender in self._shared:
            raise _bad(f"unexpected shares from {sender!r}", "replay", sender)
        if set(sealed) != set(self._adverts) - {sender}:
            raise _bad(
                f"{sender!r} did not seal shares for exactly the other advertised nodes",
                "bad_share",
                sender,
            )
        self._boxes[sender] = dict(sealed)
        self._shared.add(sender)

    def inbox(self, recipient: str) -> dict[str, bytes]:
        """The shares sealed for ``recipient`` by every other node that shared."""
        if len(self._shared) < self.threshold:
            raise self._too_few(len(self._shared), "nodes shared their secrets")
        return {
            sender: boxes[recipient]
            for sender, boxes in self._boxes.items()
            if sender != recipient and recipient in boxes
        }

    # Stage 3 ---------------------------------------------------------------------------

    def receive_masked(self, sender: str, vector: U64) -> None:
        """Add a masked vector into the running total; its sender is a survivor."""
        if self._asked:
            raise _bad(
                f"a masked vector from {sender!r} after unmasking began", "stage", sender, _AGAIN
            )
        if sender not in self._shared or sender in self._survivors:
            raise _bad(f"unexpected masked vector from {sender!r}", "replay", sender)
        values = np.asarray(vector)
        if self.length is None:
            self.length = len(values)
        if values.dtype != np.uint64 or values.shape != (self.length,):
            raise _bad(
                f"the masked vector from {sender!r} is {values.dtype} {values.shape}, "
                f"not uint64 ({self.length},)",
                "vector",
                sender,
            )
        if self._masked_total is None:
            self._masked_total = values.copy()
        else:
            np.add(self._masked_total, values, out=self._masked_total)
        self._survivors.add(sender)

    def unmask_request(self) -> tuple[list[str], list[str]]:
        """(survivors, dropped) to send to every survivor; no vector is accepted after this."""
        if len(self._survivors) < self.threshold:
            raise self._too_few(len(self._survivors), "masked vectors arrived")
        self._asked = True
        self._dropped = tuple(sorted(self._shared - self._survivors))
        return sorted(self._survivors), list(self._dropped)

    # Stage 4 ---------------------------------------------------------------------------

    def receive_unmask(self, sender: str, reveal: bytes) -> None:
        """Keep a survivor's shares of the survivors' b and the dropped nodes' c keys."""
        if not self._asked or sender not in self._survivors or sender in self._reveal_x:
            raise _bad(f"unexpected unmasking shares from {sender!r}", "replay", sender)
        try:
            fields: dict[str, Any] = json.loads(reveal)
            x = int(fields["x"])
            b = {str(k): bytes.fromhex(v) for k, v in fields["b"].items()}
            c = {str(k): bytes.fromhex(v) for k, v in fields["c"].items()}
            ok = fields["name"] == sender and fields["session"] == self.session
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise _bad(
                f"the unmasking reply of {sender!r} is malformed ({exc})", "reply", sender
            ) from None
        if not ok or x != self._roster.index(sender) + 1:
            raise _bad(f"the unmasking reply of {sender!r} is for another node", "reply", sender)
        if set(b) != self._survivors or set(c) != set(self._dropped):
            raise _bad(
                f"{sender!r} revealed shares for other nodes than were asked", "reply", sender
            )
        self._reveal_x[sender] = x
        for name, share in b.items():
            self._b_shares.setdefault(name, {})[x] = share
        for name, share in c.items():
            self._c_shares.setdefault(name, {})[x] = share

    def result(self) -> U64:
        """The survivors' sum modulo 2**64, once ``threshold`` survivors revealed shares."""
        if self._total is not None:
            return self._total.copy()
        if self._masked_total is None or len(self._reveal_x) < self.threshold:
            raise self._too_few(len(self._reveal_x), "survivors revealed shares")
        assert self.session is not None  # set by the first advert at the latest
        total = self._masked_total.copy()
        length = len(total)
        binding = bind(self.session, self._roster)
        for name in sorted(self._survivors):
            b = self._combine(self._b_shares[name], name, "self-mask seed")
            np.subtract(total, expand(b, length), out=total)
        for name in self._dropped:
            secret = self._combine(self._c_shares[name], name, "mask key")
            key = X25519PrivateKey.from_private_bytes(secret)
            if public_bytes(key) != self._c_public[name]:
                raise _bad(
                    f"the shares of {name!r} do not reconstruct its advertised key",
                    "bad_share",
                    name,
                    "run again",
                )
            # A node that dropped after sharing: remove the pairwise masks the survivors added.
            for survivor in sorted(self._survivors):
                seed = pair_seed(key, self._c_public[survivor], binding)
                pairwise = expand(seed, length)
                if survivor < name:  # the survivor added +PRG(k) for a later name
                    np.subtract(total, pairwise, out=total)
                else:
                    np.add(total, pairwise, out=total)
        self._total = total
        return total.copy()

    def _too_few(self, count: int, what: str) -> SecAggError:
        return refuse(f"{count} {what}; the threshold is {self.threshold}", "too_few", "", _AGAIN)

    def _combine(self, shares: dict[int, bytes], name: str, what: str) -> bytes:
        try:
            return shamir.combine(shares, self.threshold)
        except ValueError as exc:
            raise _bad(
                f"the shares of {name!r}'s {what} do not reconstruct ({exc})",
                "bad_share",
                name,
                "run again",
            ) from None


__all__ = ["SecAggServer"]
