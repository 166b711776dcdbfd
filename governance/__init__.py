"""Who may ask what: identities, the network PKI, permits, signed tasks, the audit trail.

A data-access body signs permits (``permits.py``); researchers sign tasks
(``envelope.py``) with their own keys (``keys.py``); every connection is mutual
TLS from the network's CA (``pki.py``, ``tls.py``); results are sealed to their
readers (``sealing.py``); nodes and the coordinator keep a signed, hash-chained
audit trail (``audit.py``).
"""

from oncofed.governance.audit import AuditTrail
from oncofed.governance.envelope import Authorisation, SignedTask
from oncofed.governance.keys import Identity, IdentityCard
from oncofed.governance.permits import (
    DataAccessApplication,
    Permit,
    RevocationList,
    SignedPermit,
    SignedRevocations,
)

__all__ = [
    "AuditTrail",
    "Authorisation",
    "DataAccessApplication",
    "Identity",
    "IdentityCard",
    "Permit",
    "RevocationList",
    "SignedPermit",
    "SignedRevocations",
    "SignedTask",
]
