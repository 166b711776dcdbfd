"""A node's side of one secure-aggregation session (stages 1 to 4 of Bonawitz et al.).

A ``SecAggNode`` lives in the node's memory from ``advertise`` to ``unmask``
and is never serialised: its private keys and self-mask seed must not
outlive the session. Each stage takes and returns only bytes, dicts of bytes
and numpy arrays, so the messages fit Flower ``ConfigRecord`` and
``ArrayRecord`` values; the transport is the caller's business.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from oncofed.privacy.secagg import shamir
from oncofed.privacy.secagg.advert import Advert
from oncofed.privacy.secagg.channel import (
    bind,
    pair_seed,
    public_bytes,
    seal,
    share_aad,
    share_key,
    unseal,
)
from oncofed.privacy.secagg.errors import SecAggError, refuse
from oncofed.privacy.secagg.prg import U64, expand

_CHECK = "check the coordinator"
_AGAIN = "start a new session"


def check_threshold(threshold: int, n: int, node: str) -> None:
    """More than half must hold shares, so no minority of nodes can rebuild anyone's secrets.

    (With a minority threshold, a coordinator that tells two halves of the
    nodes different survivor lists could collect both secrets of one node.)
    """
    if not n // 2 < threshold <= n:
        raise refuse(
            f"threshold {threshold} is not a majority of the {n} participants",
            "threshold",
            node,
            "use a threshold above half the number of nodes (and at most all of them)",
        )


class SecAggNode:
    """One node's state for one session.

    ``peers`` are the pinned Ed25519 identity keys of the other nodes (from
    the node's own configuration, never from the coordinator). ``participants``
    fixes the roster in advance and binds it into every signature; without it
    the roster is the set of nodes whose adverts the coordinator relays, which
    each node counts for itself.
    """

    def __init__(
        self,
        name: str,
        identity: Ed25519PrivateKey,
        peers: Mapping[str, Ed25519PublicKey],
        session: str,
        threshold: int,
        participants: Sequence[str] | None = None,
    ) -> None:
        self.name, self.session, self.threshold = name, session, threshold
        self._identity = identity
        self._pinned = {**peers, name: identity.public_key()}
        self._bound: tuple[str, ...] = ()
        if participants is not None:
            self._bound = tuple(sorted(participants))
            if len(set(self._bound)) != len(self._bound) or name not in self._bound:
                raise refuse(
                    "the participants must be distinct and include this node",
                    "participants",
                    name,
                    "list every node of the session once",
                )
            unpinned = [p for p in self._bound if p not in self._pinned]
            if unpinned:
                raise refuse(
                    f"no pinned identity key for {', '.join(unpinned)}",
                    "unpinned",
                    name,
                    "pin every participant's identity key in the node config",
                    culprit=unpinned[0],
                )
            check_threshold(threshold, len(self._bound), name)
        self.participants: tuple[str, ...] = self._bound
        # Fresh for this session only: c agrees pairwise masks, s encrypts shares.
        self._c, self._s = X25519PrivateKey.generate(), X25519PrivateKey.generate()
        self._b = os.urandom(shamir.SECRET_BYTES)
        self._adverts: dict[str, Advert] = {}
        self._b_shares: dict[str, bytes] = {}  # each sender's share of its own b, held here
        self._c_shares: dict[str, bytes] = {}
        self._maskers: tuple[str, ...] = ()
        self._revealed: dict[str, str] = {}  # node -> "b" or "c": never both for one node
        self._binding = b""  # digest of (session, roster), once the roster is known
        self._share_keys: dict[str, bytes] = {}

    # Stage 1 ---------------------------------------------------------------------------

    def advertise(self) -> bytes:
        """This node's two fresh public keys, signed over session, roster and name."""
        return Advert.make(
            self._identity,
            self.session,
            self._bound,
            self.name,
            public_bytes(self._c),
            public_bytes(self._s),
        ).to_bytes()

    # Stage 2 ---------------------------------------------------------------------------

    def share(self, adverts: Mapping[str, bytes]) -> dict[str, bytes]:
        """Check every advert, then Shamir-share b and c's secret key, sealed for each peer."""
        if self._adverts:
            raise refuse("shares were already sent in this session", "replay", self.name, _AGAIN)
        if self._bound:
            strangers = sorted(set(adverts) - set(self._bound))
            if strangers:
                raise refuse(
                    f"an advert from {strangers[0]!r}, which is not a participant",
                    "bad_key",
                    self.name,
                    _CHECK,
                    culprit=strangers[0],
                )
            roster = self._bound
        else:
            roster = tuple(sorted(adverts))
            check_threshold(self.threshold, len(roster), self.name)
        verified = {claimed: self._verified(claimed, raw) for claimed, raw in adverts.items()}
        mine = verified.get(self.name)
        if mine is None or (mine.c_public, mine.s_public) != (
            public_bytes(self._c),
            public_bytes(self._s),
        ):
            raise refuse(
                "the coordinator relayed a different key (or none) for this node itself",
                "bad_key",
                self.name,
                _CHECK,
                culprit=self.name,
            )
        if len(verified) < self.threshold:
            raise refuse(
                f"only {len(verified)} nodes advertised keys; at least {self.threshold} are needed",
                "too_few",
                self.name,
                "run with more nodes or a lower threshold",
            )
        self.participants, self._adverts = roster, verified
        self._binding = bind(self.session, roster)
        n = len(roster)
        b_shares = shamir.split(self._b, n, self.threshold)
        c_shares = shamir.split(self._c.private_bytes_raw(), n, self.threshold)
        sealed = {}
        for peer, advert in verified.items():
            x = self._x(peer)
            if peer == self.name:
                self._b_shares[peer], self._c_shares[peer] = b_shares[x], c_shares[x]
                continue
            aad = share_aad(self._binding, self.name, peer)
            sealed[peer] = seal(self._share_key(advert), b_shares[x] + c_shares[x], aad)
        return sealed

    # Stage 3 ---------------------------------------------------------------------------

    def mask(self, inbox: Mapping[str, bytes], vector: U64) -> U64:
        """The vector plus this node's masks; ``inbox`` holds the peers' sealed shares for it.

        y = x + PRG(b) + sum over peers v > u of PRG(k_uv) - sum over v < u,
        all modulo 2**64. Only peers whose shares arrived enter the pairwise
        masks: a peer that dropped before sharing cannot be unmasked later.
        """
        if self._maskers:
            raise refuse(
                "this node already masked a vector in this session", "replay", self.name, _AGAIN
            )
        if not self._adverts:
            raise refuse("masking before sharing", "stage", self.name, "run the stages in order")
        values = np.asarray(vector)
        if values.dtype != np.uint64 or values.ndim != 1:
            raise refuse(
                f"the vector to mask is {values.dtype} with shape {values.shape}",
                "vector",
                self.name,
                "encode the numbers with encode() or encode_int() into a 1-D uint64 array",
            )
        received: dict[str, tuple[bytes, bytes]] = {}
        for sender, sealed in inbox.items():
            advert = self._adverts.get(sender)
            if advert is None or sender == self.name:
                raise refuse(
                    f"shares from {sender!r}, which did not advertise keys",
                    "unknown_sender",
                    self.name,
                    _CHECK,
                    culprit=sender,
                )
            aad = share_aad(self._binding, sender, self.name)
            try:
                plain = unseal(self._share_key(advert), sealed, aad)
            except InvalidTag:
                raise refuse(
                    f"the shares from {sender!r} were altered or replayed",
                    "bad_share",
                    self.name,
                    _CHECK,
                    culprit=sender,
                ) from None
            size = shamir.SHARE_BYTES
            if len(plain) != 2 * size:
                raise refuse(
                    f"the shares from {sender!r} have the wrong size",
                    "bad_share",
                    self.name,
                    _CHECK,
                    culprit=sender,
                )
            received[sender] = plain[:size], plain[size:]
        maskers = tuple(sorted({*received, self.name}))
        if len(maskers) < self.threshold:
            raise refuse(
                f"only {len(maskers)} nodes shared their secrets; at least "
                f"{self.threshold} are needed",
                "too_few",
                self.name,
                "run with more nodes or a lower threshold",
            )
        # Keep the others' shares: stage 4 reveals one of the two for each of them.
        for sender, (b_share, c_share) in received.items():
            self._b_shares[sender], self._c_shares[sender] = b_share, c_share
        self._maskers = maskers
        length = len(values)
        total = values + expand(self._b, length)
        for peer in maskers:
            if peer == self.name:
                continue
            pairwise = expand(self._pair_seed(self._adverts[peer]), length)
            # uint64 arithmetic wraps modulo 2**64, which is exactly the ring we want.
            if self.name < peer:
                np.add(total, pairwise, out=total)
            else:
                np.subtract(total, pairwise, out=total)
        return total

    # Stage 4 ---------------------------------------------------------------------------

    def unmask(self, survivors: Sequence[str], dropped: Sequence[str] | None = None) -> bytes:
        """Shares of the survivors' self-mask seeds b and of the dropped nodes' c keys.

        ``dropped`` defaults to the nodes that shared with this node but are
        not survivors. A node whose b share was revealed never has its c share
        revealed, and the reverse: with both, the coordinator could strip all
        masks off that node's vector.
        """
        if not self._maskers:
            raise refuse("unmasking before masking", "stage", self.name, "run the stages in order")
        alive = set(survivors)
        gone = set(self._maskers) - alive if dropped is None else set(dropped)
        if alive & gone:
            raise refuse(
                f"{', '.join(sorted(alive & gone))} listed as both survivor and dropped",
                "survivors",
                self.name,
                _CHECK,
            )
        if self.name not in alive or alive | gone != set(self._maskers):
            raise refuse(
                "the survivors and the dropped nodes are not the nodes that shared with this "
                "node (or this node is not a survivor)",
                "survivors",
                self.name,
                _CHECK,
            )
        if len(alive) < self.threshold:
            raise refuse(
                f"{len(alive)} survivors are fewer than the threshold {self.threshold}",
                "too_few",
                self.name,
                "run again when more nodes are online",
            )
        wanted = {name: "b" for name in alive} | {name: "c" for name in gone}
        for name, kind in sorted(wanted.items()):
            if self._revealed.get(name, kind) != kind:
                raise refuse(
                    f"asked for the {kind} share of {name!r} after revealing its "
                    f"{self._revealed[name]} share",
                    "both_secrets",
                    self.name,
                    _CHECK,
                    culprit=name,
                )
        self._revealed.update(wanted)
        reveal = {
            "session": self.session,
            "name": self.name,
            "x": self._x(self.name),
            "b": {name: self._b_shares[name].hex() for name in sorted(alive)},
            "c": {name: self._c_shares[name].hex() for name in sorted(gone)},
        }
        return json.dumps(reveal, sort_keys=True).encode()

    # Helpers ---------------------------------------------------------------------------

    def _x(self, name: str) -> int:
        """A node's Shamir x coordinate: its place in the sorted roster, from 1."""
        return self.participants.index(name) + 1

    def _verified(self, claimed: str, raw: bytes) -> Advert:
        def bad(problem: str, rule: str = "bad_key") -> SecAggError:
            return refuse(problem, rule, self.name, _CHECK, culprit=claimed)

        try:
            advert = Advert.from_bytes(raw)
        except ValueError as exc:
            raise bad(f"the advert relayed for {claimed!r} is malformed ({exc})") from None
        identity = self._pinned.get(claimed)
        if identity is None:
            raise refuse(
                f"an advert for {claimed!r}, whose identity key is not pinned here",
                "unpinned",
                self.name,
                "pin every peer's identity key in the node config",
                culprit=claimed,
            )
        if advert.name != claimed:
            raise bad(f"the advert relayed as {claimed!r} names {advert.name!r}")
        if advert.signed_by(identity, self.session, self._bound):
            return advert
        if (advert.session, advert.roster) != (self.session, self._bound) and advert.signed_by(
            identity, advert.session, advert.roster
        ):
            raise bad(
                f"the advert relayed for {claimed!r} was signed for another session or "
                f"roster ({advert.session!r})",
                "replay",
            )
        raise bad(
            f"the keys relayed for {claimed!r} are not signed by its pinned identity key "
            "(substituted or unsigned)"
        )

    def _share_key(self, advert: Advert) -> bytes:
        """Agreed once per peer: stage 2 seals with it, stage 3 opens with it."""
        if advert.name not in self._share_keys:
            try:
                key = share_key(self._s, advert.s_public, self._binding)
            except ValueError:  # a low-order point: X25519 gives an all-zero secret
                raise self._degenerate(advert) from None
            self._share_keys[advert.name] = key
        return self._share_keys[advert.name]

    def _pair_seed(self, advert: Advert) -> bytes:
        try:
            return pair_seed(self._c, advert.c_public, self._binding)
        except ValueError:
            raise self._degenerate(advert) from None

    def _degenerate(self, advert: Advert) -> SecAggError:
        return refuse(
            f"a key of {advert.name!r} is degenerate (a low-order X25519 point)",
            "bad_key",
            self.name,
            _CHECK,
            culprit=advert.name,
        )


__all__ = ["SecAggNode", "check_threshold"]
