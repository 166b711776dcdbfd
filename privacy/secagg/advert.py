"""Stage 1's message: a node's two session public keys, signed by its identity key.

The signature covers the session, the participant roster, the node's name
and both keys, so the coordinator can neither substitute a key (it has no
node's identity key) nor replay an advert into another session or roster.
Session and roster also travel in the clear, only so that a refusal can say
*why* an advert fails: verification always uses the verifier's own values.
An empty roster means "not fixed in advance" (the roster is then the set of
nodes whose adverts are relayed, counted by each node itself).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from oncofed.privacy.secagg.channel import bind, context

KEY_BYTES = 32


@dataclass(frozen=True)
class Advert:
    """A node's mask-agreement (``c``) and share-encryption (``s``) public keys."""

    name: str
    session: str
    roster: tuple[str, ...]
    c_public: bytes
    s_public: bytes
    signature: bytes

    @staticmethod
    def signed_bytes(
        session: str, roster: Sequence[str], name: str, c_public: bytes, s_public: bytes
    ) -> bytes:
        return context("advert", bind(session, roster), name, c_public.hex(), s_public.hex())

    @classmethod
    def make(
        cls,
        identity: Ed25519PrivateKey,
        session: str,
        roster: Sequence[str],
        name: str,
        c_public: bytes,
        s_public: bytes,
    ) -> Advert:
        payload = cls.signed_bytes(session, roster, name, c_public, s_public)
        return cls(name, session, tuple(roster), c_public, s_public, identity.sign(payload))

    def signed_by(self, identity: Ed25519PublicKey, session: str, roster: Sequence[str]) -> bool:
        """Whether ``identity`` signed these keys for this name, ``session`` and ``roster``."""
        payload = self.signed_bytes(session, roster, self.name, self.c_public, self.s_public)
        try:
            identity.verify(self.signature, payload)
        except InvalidSignature:
            return False
        return True

    def to_bytes(self) -> bytes:
        return json.dumps(
            {
                "name": self.name,
                "session": self.session,
                "roster": list(self.roster),
                "c": self.c_public.hex(),
                "s": self.s_public.hex(),
                "signature": self.signature.hex(),
            },
            sort_keys=True,
        ).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> Advert:
        """Parse; raises ``ValueError`` for anything that is not a well-formed advert."""
        try:
            fields = json.loads(raw)
            advert = cls(
                str(fields["name"]),
                str(fields["session"]),
                tuple(str(n) for n in fields["roster"]),
                bytes.fromhex(fields["c"]),
                bytes.fromhex(fields["s"]),
                bytes.fromhex(fields["signature"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"not an advert: {exc}") from None
        if len(advert.c_public) != KEY_BYTES or len(advert.s_public) != KEY_BYTES:
            raise ValueError("an advert's keys are 32 bytes each")
        return advert


__all__ = ["KEY_BYTES", "Advert"]
