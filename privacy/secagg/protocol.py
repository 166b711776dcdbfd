"""Pairwise-masked secure summation that tolerates nodes dropping out (Bonawitz et al. 2017).

Four stages, each one message from the coordinator to every node and back:

1. ``advertise``: a node makes two fresh X25519 key pairs -- ``c`` to agree
   pairwise masks, ``s`` to encrypt secret shares -- and signs both public
   keys with its long-term Ed25519 identity, bound to the session. Every node
   knows the others' identity keys from its own configuration, so a
   coordinator that substitutes a key, or replays one from another session,
   is caught. The participants are the nodes whose signed adverts the
   coordinator relays: a node counts them itself.
2. ``share``: a node checks every advert's signature, draws a self-mask seed
   ``b``, Shamir-shares ``b`` and its ``c`` private key among the
   participants (threshold ``t``), and encrypts each peer's shares for that
   peer (AES-GCM under a key agreed with the peer's ``s`` key).
3. ``mask``: a node adds to its vector the mask expanded from ``b`` and, for
   every peer that shared, the mask agreed with it -- plus if its name sorts
   first, minus otherwise -- all modulo 2**64. Pairwise masks cancel in the
   total; the self-mask hides the vector even if a peer's key is revealed.
4. ``unmask``: for each survivor a node reveals its share of that survivor's
   ``b``; for each node that dropped after sharing, its share of that node's
   ``c`` key -- never both for one node. With ``t`` shares the coordinator
   removes the self-masks of the survivors and the dropped nodes' pairwise
   masks, and learns only the survivors' sum.

The coordinator is assumed to follow the unmasking step honestly (the
semi-honest variant): a node refuses to reveal both kinds of share for one
node, but does not cross-check survivor lists with other nodes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from oncofed.errors import NodeRefusal
from oncofed.privacy.secagg import shamir
from oncofed.privacy.secagg.prg import U64, expand

RAW = serialization.Encoding.Raw, serialization.PublicFormat.Raw


class SecAggError(NodeRefusal):
    """A secure-aggregation step refused: bad keys, too few nodes, a replayed stage."""


def _refuse(problem: str, rule: str, node: str, fix: str, **context: object) -> SecAggError:
    return SecAggError(problem, rule=f"secagg.{rule}", node=node, fix=fix, **context)


def _kdf(secret: bytes, purpose: str, session: str) -> bytes:
    info = f"oncofed-secagg|{purpose}|{session}".encode()
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(secret)


def _public(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(*RAW)


@dataclass(frozen=True)
class Advert:
    """A node's two public keys for one session, signed by its identity key."""

    name: str
    c_public: bytes
    s_public: bytes
    signature: bytes

    @staticmethod
    def signed_bytes(session: str, name: str, c_public: bytes, s_public: bytes) -> bytes:
        return json.dumps([session, name, c_public.hex(), s_public.hex()]).encode()

    def to_bytes(self) -> bytes:
        fields = [self.name, self.c_public.hex(), self.s_public.hex(), self.signature.hex()]
        return json.dumps(fields).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> Advert:
        name, c_public, s_public, signature = json.loads(raw)
        return cls(
            str(name), bytes.fromhex(c_public), bytes.fromhex(s_public), bytes.fromhex(signature)
        )


class SecAggNode:
    """One node's side of one session; lives in the node's memory between stages."""

    def __init__(
        self,
        name: str,
        identity: Ed25519PrivateKey,
        peers: Mapping[str, Ed25519PublicKey],
        session: str,
        threshold: int,
    ) -> None:
        self.name, self.session, self.threshold = name, session, threshold
        self.participants: tuple[str, ...] = ()
        self._identity = identity
        self._peers = {**peers, name: identity.public_key()}
        self._c, self._s = X25519PrivateKey.generate(), X25519PrivateKey.generate()
        self._b = os.urandom(shamir.SECRET_BYTES)
        self._adverts: dict[str, Advert] = {}
        self._b_shares: dict[str, bytes] = {}  # each sender's share of its own b, held here
        self._c_shares: dict[str, bytes] = {}
        self._maskers: tuple[str, ...] = ()
        self._revealed = False

    def _x(self, name: str) -> int:
        return self.participants.index(name) + 1

    def advertise(self) -> bytes:
        c_public, s_public = _public(self._c), _public(self._s)
        payload = Advert.signed_bytes(self.session, self.name, c_public, s_public)
        return Advert(self.name, c_public, s_public, self._identity.sign(payload)).to_bytes()

    def share(self, adverts: Mapping[str, bytes]) -> dict[str, bytes]:
        """Check every advert, then encrypt this node's shares for each peer."""
        if self._adverts:
            raise _refuse(
                "shares were already sent in this session",
                "replay",
                self.name,
                "start a new session",
            )
        self.participants = tuple(sorted(adverts))
        # More than half must hold shares: no minority can rebuild a node's secrets.
        if not len(self.participants) // 2 < self.threshold <= len(self.participants):
            raise _refuse(
                f"threshold {self.threshold} is not a majority of the "
                f"{len(self.participants)} participants",
                "threshold",
                self.name,
                "use a threshold above half the number of nodes",
            )
        for claimed, raw in adverts.items():
            self._adverts[claimed] = self._verified(claimed, raw)
        mine = self._adverts.get(self.name)
        if mine is None or mine.c_public != _public(self._c) or mine.s_public != _public(self._s):
            raise _refuse(
                "the coordinator relayed a different key for this node itself",
                "bad_key",
                self.name,
                "check the coordinator",
                culprit=self.name,
            )
        if len(self._adverts) < self.threshold:
            raise _refuse(
                f"only {len(self._adverts)} nodes advertised keys; at least "
                f"{self.threshold} are needed",
                "too_few",
                self.name,
                "run with more nodes or a lower threshold",
            )
        n = len(self.participants)
        b_shares = shamir.split(self._b, n, self.threshold)
        c_shares = shamir.split(self._c.private_bytes_raw(), n, self.threshold)
        out = {}
        for peer, advert in self._adverts.items():
            x = self._x(peer)
            if peer == self.name:
                self._b_shares[peer], self._c_shares[peer] = b_shares[x], c_shares[x]
                continue
            key = self._share_key(advert)
            nonce = os.urandom(12)
            sealed = AESGCM(key).encrypt(
                nonce, b_shares[x] + c_shares[x], self._aad(self.name, peer)
            )
            out[peer] = nonce + sealed
        return out

    def mask(self, inbox: Mapping[str, bytes], vector: U64) -> U64:
        """The vector plus this node's masks; ``inbox`` holds the peers' sealed shares."""
        if self._maskers:
            raise _refuse(
                "this node already masked a vector in this session",
                "replay",
                self.name,
                "start a new session",
            )
        for sender, sealed in inbox.items():
            advert = self._adverts.get(sender)
            if advert is None or sender == self.name:
                raise _refuse(
                    f"shares from {sender!r}, which did not advertise keys",
                    "unknown_sender",
                    self.name,
                    "check the coordinator",
                    culprit=sender,
                )
            try:
                plain = AESGCM(self._share_key(advert)).decrypt(
                    sealed[:12], sealed[12:], self._aad(sender, self.name)
                )
            except InvalidTag:
                raise _refuse(
                    f"the shares from {sender!r} were altered or replayed",
                    "bad_share",
                    self.name,
                    "check the coordinator",
                    culprit=sender,
                ) from None
            size = shamir.SHARE_BYTES
            self._b_shares[sender], self._c_shares[sender] = plain[:size], plain[size:]
        self._maskers = tuple(sorted({*inbox, self.name}))
        if len(self._maskers) < self.threshold:
            raise _refuse(
                f"only {len(self._maskers)} nodes shared their secrets; at least "
                f"{self.threshold} are needed",
                "too_few",
                self.name,
                "run with more nodes or a lower threshold",
            )
        total = np.asarray(vector, dtype=np.uint64) + expand(self._b, len(vector))
        for peer in self._maskers:
            if peer != self.name:
                pairwise = expand(self._pair_seed(self._c, self._adverts[peer]), len(vector))
                total = total + pairwise if self.name < peer else total - pairwise
        return total

    def unmask(self, survivors: Sequence[str]) -> bytes:
        """Shares of the survivors' self-mask seeds and of the dropped nodes' mask keys."""
        if self._revealed:
            raise _refuse(
                "this node already revealed shares in this session",
                "replay",
                self.name,
                "start a new session",
            )
        alive = set(survivors)
        if self.name not in alive or not alive <= set(self._maskers):
            raise _refuse(
                "the survivors are not a subset of the nodes that masked",
                "survivors",
                self.name,
                "check the coordinator",
            )
        if len(alive) < self.threshold:
            raise _refuse(
                f"{len(alive)} survivors are fewer than the threshold {self.threshold}",
                "too_few",
                self.name,
                "run again when more nodes are online",
            )
        self._revealed = True
        reveal = {
            name: [
                "b" if name in alive else "c",
                (self._b_shares if name in alive else self._c_shares)[name].hex(),
            ]
            for name in self._maskers
        }
        return json.dumps({"x": self._x(self.name), "shares": reveal}).encode()

    def _verified(self, claimed: str, raw: bytes) -> Advert:
        advert = Advert.from_bytes(raw)
        identity = self._peers.get(claimed)
        if advert.name != claimed or identity is None:
            raise _refuse(
                f"an advert for {claimed!r} from no known participant",
                "bad_key",
                self.name,
                "pin every peer's identity key in the node config",
                culprit=claimed,
            )
        payload = Advert.signed_bytes(self.session, claimed, advert.c_public, advert.s_public)
        try:
            identity.verify(advert.signature, payload)
        except InvalidSignature:
            raise _refuse(
                f"the keys relayed for {claimed!r} are not signed by its identity key "
                "(substituted, or from another session)",
                "bad_key",
                self.name,
                "check the coordinator",
                culprit=claimed,
            ) from None
        return advert

    def _share_key(self, advert: Advert) -> bytes:
        shared = self._s.exchange(X25519PublicKey.from_public_bytes(advert.s_public))
        return _kdf(shared, "shares", self.session)

    def _pair_seed(self, own: X25519PrivateKey, advert: Advert) -> bytes:
        return pair_seed(own, advert.c_public, self.session)

    def _aad(self, sender: str, receiver: str) -> bytes:
        return f"{self.session}|{sender}->{receiver}".encode()


def pair_seed(own: X25519PrivateKey, peer_public: bytes, session: str) -> bytes:
    return _kdf(own.exchange(X25519PublicKey.from_public_bytes(peer_public)), "mask", session)


class SecAggServer:
    """The coordinator's side: removes the masks it is allowed to, and nothing else."""

    def __init__(self, session: str, threshold: int) -> None:
        self.session, self.threshold = session, threshold

    def aggregate(
        self,
        adverts: Mapping[str, bytes],
        maskers: Sequence[str],
        masked: Mapping[str, U64],
        reveals: Mapping[str, bytes],
    ) -> U64:
        """The survivors' sum modulo 2**64.

        ``maskers``: nodes that shared secrets (and so entered the pairwise
        masks); ``masked``: the vectors that arrived; ``reveals``: the
        survivors' unmasking replies.
        """
        survivors = sorted(masked)
        if len(survivors) < self.threshold:
            raise _refuse(
                f"{len(survivors)} masked vectors arrived; the threshold is {self.threshold}",
                "too_few",
                "",
                "run again with more nodes online",
            )
        length = len(next(iter(masked.values())))
        total = np.zeros(length, dtype=np.uint64)
        for vector in masked.values():
            total = total + np.asarray(vector, dtype=np.uint64)
        shares: dict[str, dict[int, bytes]] = {}
        kinds: dict[str, str] = {}
        for raw in reveals.values():
            reply = json.loads(raw)
            for name, (kind, share) in reply["shares"].items():
                shares.setdefault(name, {})[int(reply["x"])] = bytes.fromhex(share)
                kinds[name] = kind
        for name in maskers:
            held = shares.get(name, {})
            if len(held) < self.threshold:
                raise _refuse(
                    f"only {len(held)} shares for {name!r}; {self.threshold} needed",
                    "too_few",
                    "",
                    "run again with more nodes online",
                )
            secret = shamir.combine(dict(list(held.items())[: self.threshold]))
            if name in masked:
                total = total - expand(secret, length)
                continue
            # A node that dropped after sharing: remove its pairwise masks from the survivors.
            dropped = X25519PrivateKey.from_private_bytes(secret)
            if _public(dropped) != Advert.from_bytes(adverts[name]).c_public:
                raise _refuse(
                    f"the shares of {name!r} do not reconstruct its key",
                    "bad_share",
                    "",
                    "run again",
                )
            for survivor in survivors:
                seed = pair_seed(
                    dropped, Advert.from_bytes(adverts[survivor]).c_public, self.session
                )
                pairwise = expand(seed, length)
                total = total - pairwise if survivor < name else total + pairwise
        return total


__all__ = ["Advert", "SecAggError", "SecAggNode", "SecAggServer", "pair_seed"]
