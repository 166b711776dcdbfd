"""A researcher's signed task, and the authorisation every task message carries.

The researcher signs the task type, the parameters exactly as sent, the
permit it runs under, a fresh nonce and the time. The coordinator attaches
that signed task, the signed permit and the newest signed revocation lists to
every message it sends for the task; each node checks all three itself. So
the coordinator can delay or drop work, but not change what was asked, move
it under another permit or person, or run it twice (decision 0015).
"""

from __future__ import annotations

import secrets
import time

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field

from oncofed.governance.keys import Identity, canonical_json, signature_valid
from oncofed.governance.permits import SignedPermit, SignedRevocations
from oncofed.kernel.errors import PermitRefused
from oncofed.kernel.schema import NAME_PATTERN


class TaskEnvelope(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    task_type: str = Field(min_length=1, max_length=64)
    params_json: str = Field(max_length=1_000_000)
    permit_id: str = Field(pattern=NAME_PATTERN)
    researcher: str = Field(pattern=NAME_PATTERN)
    nonce: str = Field(pattern=r"^[0-9a-f]{32}$")
    issued_at: float

    def payload(self) -> bytes:
        return canonical_json(self.model_dump(mode="json"))


class SignedTask(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    task: TaskEnvelope
    signature: str

    @classmethod
    def create(
        cls, identity: Identity, task_type: str, params_json: str, permit_id: str
    ) -> SignedTask:
        task = TaskEnvelope(
            task_type=task_type,
            params_json=params_json,
            permit_id=permit_id,
            researcher=identity.name,
            nonce=secrets.token_hex(16),
            issued_at=time.time(),
        )
        return cls(task=task, signature=identity.sign(task.payload()))

    def verified(self, key: Ed25519PublicKey, node: str = "") -> TaskEnvelope:
        if not signature_valid(key, self.task.payload(), self.signature):
            raise PermitRefused(
                f"task {self.task.task_type!r} is not signed by {self.task.researcher}'s key "
                "named in the permit",
                rule="task.signature",
                node=node,
                fix="submit the task with the researcher's own identity; the coordinator may "
                "not change a signed task",
            )
        return self.task


class Authorisation(BaseModel):
    """Everything a node needs to decide, by itself, whether a task message is covered."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    task: SignedTask
    permit: SignedPermit
    revocations: tuple[SignedRevocations, ...] = ()


__all__ = ["Authorisation", "SignedTask", "TaskEnvelope"]
