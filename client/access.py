"""Data access for people: applications, permits and revocation lists.

``DataAccessClient`` talks to the coordinator (a researcher files an
application; the data-access body reviews it and publishes what it signed).
The signing itself -- ``draft_permit``, ``sign_permit``, ``revoke`` -- runs
on the body's own machine with its own key and needs no coordinator.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
from pydantic import ValidationError

from oncofed.governance.keys import Identity, write_private
from oncofed.governance.permits import (
    DataAccessApplication,
    DatasetGrant,
    OutputPolicy,
    Permit,
    RevocationList,
    RevokedPermit,
    SignedPermit,
    SignedRevocations,
    utcnow,
)
from oncofed.governance.tls import TlsFiles, client_channel
from oncofed.kernel.errors import (
    ConfigError,
    CoordinatorUnavailable,
    OncofedError,
    format_validation_error,
)
from oncofed.kernel.wire import CHANNEL_OPTIONS
from oncofed.kernel.wire import oncofed_pb2 as pb
from oncofed.kernel.wire.oncofed_pb2_grpc import DataAccessStub

REVOCATIONS_FILE = "revocations.json"
DEFAULT_LIST_VALIDITY = datetime.timedelta(days=1)


def grpc_error(exc: grpc.RpcError, address: str) -> OncofedError:
    """A failed call as the typed error the coordinator sent (or 'unreachable')."""
    code = exc.code() if isinstance(exc, grpc.Call) else None
    if code == grpc.StatusCode.UNAVAILABLE:
        return CoordinatorUnavailable(
            f"cannot reach the coordinator at {address}",
            rule="session.connect",
            fix="check the address, that the coordinator is running, and that your "
            "certificate is from this network's CA",
        )
    details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
    return OncofedError.from_json(details or str(code))


class DataAccessClient:
    def __init__(self, address: str, credentials: Path) -> None:
        self.address = address
        self.folder = credentials
        self.identity = Identity.load(credentials)
        self._channel = client_channel(address, TlsFiles.in_directory(credentials), CHANNEL_OPTIONS)
        self._stub = DataAccessStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> DataAccessClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @contextmanager
    def _rpc(self) -> Iterator[None]:
        try:
            yield
        except grpc.RpcError as exc:
            raise grpc_error(exc, self.address) from None

    def submit_application(
        self, application: DataAccessApplication, amends: str = ""
    ) -> pb.ApplicationRecord:
        request = pb.ApplicationSubmission(
            application_json=application.model_dump_json(), amends=amends
        )
        with self._rpc():
            record: pb.ApplicationRecord = self._stub.SubmitApplication(request)
        return record

    def applications(self) -> list[pb.ApplicationRecord]:
        with self._rpc():
            return list(self._stub.ListApplications(pb.Empty()).applications)

    def application(self, application_id: str) -> pb.ApplicationRecord:
        with self._rpc():
            record: pb.ApplicationRecord = self._stub.GetApplication(
                pb.ApplicationRef(application_id=application_id)
            )
        return record

    def decide(self, application_id: str, decision: str, note: str = "") -> pb.ApplicationRecord:
        with self._rpc():
            record: pb.ApplicationRecord = self._stub.Decide(
                pb.Decision(application_id=application_id, decision=decision, note=note)
            )
        return record

    def publish_permit(self, signed: SignedPermit) -> str:
        with self._rpc():
            return str(
                self._stub.PublishPermit(pb.Document(json=signed.model_dump_json())).permit_id
            )

    def permit(self, permit_id: str) -> SignedPermit:
        with self._rpc():
            document = self._stub.GetPermit(pb.PermitRef(permit_id=permit_id))
        return SignedPermit.model_validate_json(document.json)

    def publish_revocations(self, signed: SignedRevocations) -> None:
        with self._rpc():
            self._stub.PublishRevocations(pb.Document(json=signed.model_dump_json()))

    def grant(
        self, signed: SignedPermit, valid_for: datetime.timedelta = DEFAULT_LIST_VALIDITY
    ) -> tuple[str, SignedRevocations]:
        """Publish a signed permit (or amendment), then the body's next revocation list.

        Nodes refuse all work under a body that has no current list
        (``permit.revocations_stale``), and a body first needs one when it publishes
        its first permit. Signing one on every publish, not only when the body holds
        none, also covers a list that never reached this coordinator; it costs a
        sequence number. For an amendment (version > 1) the list revokes the older
        versions, so no coordinator can keep relaying them.
        """
        permit_id = self.publish_permit(signed)
        permit = signed.permit
        superseded = {permit.permit_id: permit.version} if permit.version > 1 else None
        return permit_id, self.revise_revocations(valid_for=valid_for, superseded=superseded)

    def revise_revocations(
        self,
        permit_ids: Sequence[str] = (),
        reason: str = "",
        valid_for: datetime.timedelta = DEFAULT_LIST_VALIDITY,
        superseded: Mapping[str, int] | None = None,
    ) -> SignedRevocations:
        """Sign the body's next revocation list (``revoke``) with its own key and publish it."""
        signed = revoke(self.identity, self.folder, permit_ids, reason, valid_for, superseded)
        self.publish_revocations(signed)
        return signed

    def held_revocations(self) -> SignedRevocations | None:
        """The body's newest signed revocation list, as it keeps it in its own folder."""
        return _held_revocations(self.folder)


def load_document(path: Path, model: type[Any], what: str) -> Any:
    """Read a JSON document (application, permit, ...) into its model, or one ConfigError."""
    try:
        return model.model_validate_json(path.read_text())
    except FileNotFoundError:
        raise ConfigError(
            f"{what} file {str(path)!r} does not exist",
            rule=f"{what}.file",
            fix="pass the path of the JSON document",
        ) from None
    except ValidationError as exc:
        raise ConfigError(
            f"{path} is not a valid {what}: {format_validation_error(exc)}",
            rule=f"{what}.schema",
            fix="see docs/data-access-bodies.md for the fields",
        ) from None


def draft_permit(
    application: DataAccessApplication,
    issuer: Identity,
    *,
    permit_id: str,
    application_id: str = "",
    valid_days: int | None = None,
    epsilon: float | None = None,
    models_may_leave: bool = False,
    conditions: str = "",
) -> Permit:
    """A permit granting what the application asked for, for the body to edit and sign.

    Validity defaults to the application's processing period.
    """
    start = datetime.datetime.combine(application.period_start, datetime.time(), datetime.UTC)
    end = datetime.datetime.combine(application.period_end, datetime.time(), datetime.UTC)
    if valid_days is not None:
        start, end = utcnow(), utcnow() + datetime.timedelta(days=valid_days)
    return Permit(
        permit_id=permit_id,
        application_id=application_id,
        issuer=issuer.card,
        holder=application.organisation,
        purposes=application.purposes,
        description=application.description,
        persons=application.persons,
        datasets=tuple(
            DatasetGrant(
                dataset=d.dataset,
                variables=d.variables,
                epsilon=epsilon if epsilon is not None else d.epsilon,
                release=d.release,
                cohorts=d.cohorts,
            )
            for d in application.datasets
        ),
        task_types=application.task_types,
        access=application.access,
        valid_from=start,
        valid_until=end,
        output=OutputPolicy(models_may_leave=models_may_leave),
        conditions=conditions,
    )


def _held_revocations(body_dir: Path) -> SignedRevocations | None:
    path = body_dir / REVOCATIONS_FILE
    if not path.exists():
        return None
    return SignedRevocations.model_validate_json(path.read_text())


def revoke(
    body: Identity,
    body_dir: Path,
    permit_ids: Sequence[str] = (),
    reason: str = "",
    valid_for: datetime.timedelta = DEFAULT_LIST_VALIDITY,
    superseded: Mapping[str, int] | None = None,
) -> SignedRevocations:
    """The body's next revocation list: the previous one plus ``permit_ids``, re-signed.

    ``superseded`` maps a permit to its newest version, revoking the older ones
    (``permit publish`` of an amendment does this). Called with nothing it
    renews the list (a new ``next_update``); a body runs that at least once
    per ``valid_for``, or nodes stop work under its permits.
    """
    held = _held_revocations(body_dir)
    previous = held.revocations if held is not None else None
    now = utcnow()
    known = previous.revoked_ids() if previous is not None else frozenset()
    revoked = (previous.revoked if previous is not None else ()) + tuple(
        RevokedPermit(permit_id=p, revoked_at=now, reason=reason)
        for p in permit_ids
        if p not in known
    )
    revoked += tuple(
        RevokedPermit(permit_id=p, revoked_at=now, reason="amended", before_version=v)
        for p, v in (superseded or {}).items()
    )
    signed = RevocationList(
        issuer=body.card,
        sequence=(previous.sequence + 1) if previous is not None else 1,
        issued_at=now,
        next_update=now + valid_for,
        revoked=revoked,
    ).sign(body.signing)
    temporary = body_dir / (REVOCATIONS_FILE + ".tmp")
    temporary.unlink(missing_ok=True)
    write_private(temporary, json.dumps(signed.model_dump(mode="json"), indent=1).encode())
    temporary.replace(body_dir / REVOCATIONS_FILE)
    return signed


__all__ = [
    "REVOCATIONS_FILE",
    "DataAccessClient",
    "draft_permit",
    "grpc_error",
    "load_document",
    "revoke",
]
