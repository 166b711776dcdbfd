"""The data-access API: applications filed and reviewed, permits and revocations published.

Researchers file applications; the data-access body reviews them and
publishes the permits and revocation lists it signed offline. Publishing a
revocation cancels the running tasks under the revoked permits here at once;
the nodes refuse their next messages by themselves anyway.
"""

from __future__ import annotations

import json
from typing import TypeVar

import grpc
from pydantic import ValidationError

from oncofed.coordinator.access_store import AccessStore, ApplicationView
from oncofed.coordinator.auth import abort, caller
from oncofed.coordinator.hub import Hub
from oncofed.coordinator.store import Store
from oncofed.governance.audit import AuditTrail
from oncofed.governance.permits import (
    DataAccessApplication,
    SignedPermit,
    SignedRevocations,
)
from oncofed.governance.tls import Peer
from oncofed.kernel.errors import (
    AccessDenied,
    OncofedError,
    PermitRefused,
    QueryError,
    UnknownTask,
    format_validation_error,
)
from oncofed.kernel.wire import oncofed_pb2 as pb
from oncofed.kernel.wire.oncofed_pb2_grpc import DataAccessServicer
from oncofed.tasks import check_installed

Signed = TypeVar("Signed", SignedPermit, SignedRevocations)

AMBIGUOUS_SHOWN = 5  # ids an ambiguous prefix error lists, enough to pick one from

DECISIONS = {"request-changes": "changes-requested", "refuse": "refused", "approve": "approved"}
OPEN_TO: dict[str, frozenset[str]] = {
    "submitted": frozenset(DECISIONS.values()),
    # Back with its applicant: the body may still close it, not approve what is being changed.
    "changes-requested": frozenset({"refused"}),
    # Decided: an approval ends in a permit (revoked, not un-approved); a refusal is final.
    "approved": frozenset(),
    "refused": frozenset(),
}


def _record(view: ApplicationView) -> pb.ApplicationRecord:
    return pb.ApplicationRecord(
        application_id=view.application_id,
        state=view.state,
        applicant=view.applicant,
        application_json=view.document,
        history_json=view.history,
        permit_id=view.permit_id,
        updated_at=view.updated_at,
    )


def _invalid(what: str, exc: ValidationError) -> QueryError:
    return QueryError(
        f"invalid {what}: {format_validation_error(exc)}",
        rule=f"{what.replace(' ', '_')}.schema",
        fix="see docs/data-access-bodies.md for the fields",
    )


class DataAccess(DataAccessServicer):
    def __init__(self, access: AccessStore, store: Store, hub: Hub, audit: AuditTrail) -> None:
        self.access = access
        self.store = store
        self.hub = hub
        self.audit = audit

    def SubmitApplication(  # noqa: N802
        self, request: pb.ApplicationSubmission, context: grpc.ServicerContext
    ) -> pb.ApplicationRecord:
        peer = caller(context)
        try:
            application = DataAccessApplication.model_validate_json(request.application_json)
        except ValidationError as exc:
            abort(context, grpc.StatusCode.INVALID_ARGUMENT, _invalid("application", exc))
        if application.applicant.name != peer.name:
            abort(
                context,
                grpc.StatusCode.PERMISSION_DENIED,
                AccessDenied(
                    f"{peer.name} filed an application in {application.applicant.name}'s name",
                    rule="application.applicant",
                    fix="file applications with your own identity card as applicant",
                ),
            )
        try:
            check_installed(application.task_types, rule="application.task_types")
        except UnknownTask as exc:
            abort(context, grpc.StatusCode.INVALID_ARGUMENT, exc)
        amends = self._resolve(request.amends, peer, context) if request.amends else ""
        if amends:
            previous = self.access.application(amends)
            if previous is None or previous.applicant != peer.name:
                abort(context, grpc.StatusCode.NOT_FOUND, _no_application(request.amends))
            if previous.state != "changes-requested":
                abort(
                    context,
                    grpc.StatusCode.FAILED_PRECONDITION,
                    QueryError(
                        f"application {amends} is {previous.state}, not open for changes",
                        rule="application.state",
                        fix="file a new application",
                    ),
                )
        view = self.access.file_application(peer.name, application.model_dump_json(), amends)
        self.audit.append(
            actor=peer.name,
            action="application",
            outcome="submitted",
            application_id=view.application_id,
        )
        return _record(view)

    def ListApplications(  # noqa: N802
        self, request: pb.Empty, context: grpc.ServicerContext
    ) -> pb.ApplicationList:
        peer = caller(context)
        mine = None if peer.role == "hdab" else peer.name
        return pb.ApplicationList(
            applications=[_record(v) for v in self.access.applications(applicant=mine)]
        )

    def GetApplication(  # noqa: N802
        self, request: pb.ApplicationRef, context: grpc.ServicerContext
    ) -> pb.ApplicationRecord:
        peer = caller(context)
        view = self.access.application(self._resolve(request.application_id, peer, context))
        if view is None or (peer.role != "hdab" and view.applicant != peer.name):
            abort(context, grpc.StatusCode.NOT_FOUND, _no_application(request.application_id))
        return _record(view)

    def Decide(  # noqa: N802
        self, request: pb.Decision, context: grpc.ServicerContext
    ) -> pb.ApplicationRecord:
        peer = caller(context)
        state = DECISIONS.get(request.decision)
        if state is None:
            abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                QueryError(
                    f"unknown decision {request.decision!r}",
                    rule="application.decision",
                    fix=f"decide one of: {', '.join(DECISIONS)}",
                ),
            )
        application_id = self._resolve(request.application_id, peer, context)
        current = self.access.application(application_id)
        if current is None:
            abort(context, grpc.StatusCode.NOT_FOUND, _no_application(request.application_id))
        if state not in OPEN_TO[current.state]:
            abort(context, grpc.StatusCode.FAILED_PRECONDITION, _closed(current, request.decision))
        view = self.access.decide(application_id, state, peer.name, request.note)
        if view is None:
            abort(context, grpc.StatusCode.NOT_FOUND, _no_application(request.application_id))
        self.audit.append(
            actor=peer.name,
            action="decide",
            outcome=state,
            application_id=view.application_id,
            note=request.note,
        )
        return _record(view)

    def PublishPermit(  # noqa: N802
        self, request: pb.Document, context: grpc.ServicerContext
    ) -> pb.PermitRef:
        peer = caller(context)
        signed = _published(request, SignedPermit, "permit", peer.name, context)
        permit = signed.permit
        try:
            owner = self.access.permit_issuer(permit.permit_id)
            if owner is not None and owner != permit.issuer.name:
                raise AccessDenied(
                    f"permit id {permit.permit_id!r} belongs to {owner}",
                    rule="permit.owner",
                    fix="choose another permit id",
                )
        except OncofedError as exc:
            abort(context, grpc.StatusCode.PERMISSION_DENIED, exc)
        # A signed permit names its application by the whole id; one the coordinator does not
        # hold (a prefix, a typo) would publish and leave the application undecided.
        if permit.application_id and self.access.application(permit.application_id) is None:
            abort(
                context,
                grpc.StatusCode.NOT_FOUND,
                QueryError(
                    f"permit {permit.permit_id!r} answers application "
                    f"{permit.application_id!r}, which is not on file here",
                    rule="application.exists",
                    fix="draft it again with `oncofed permit draft application.json "
                    "--permit-id PERMIT --application-id ID` (ID as `oncofed application "
                    "list` shows it, or its start), then sign and publish it",
                ),
            )
        answered = self.access.application(permit.application_id) if permit.application_id else None
        if answered is not None and answered.state == "refused":
            abort(context, grpc.StatusCode.FAILED_PRECONDITION, _closed(answered, "grant"))
        if not self.access.publish_permit(
            permit.permit_id, permit.version, permit.issuer.name, signed.model_dump_json()
        ):
            abort(
                context,
                grpc.StatusCode.ALREADY_EXISTS,
                QueryError(
                    f"permit {permit.permit_id!r} version {permit.version} is not newer than "
                    "the one published",
                    rule="permit.version",
                    fix="raise the version when amending a permit",
                ),
            )
        if permit.application_id:
            self.access.decide(
                permit.application_id,
                "approved",
                peer.name,
                f"permit {permit.permit_id} v{permit.version}",
                permit_id=permit.permit_id,
            )
        self.audit.append(
            actor=peer.name,
            action="publish-permit",
            permit_id=permit.permit_id,
            outcome="published",
            version=permit.version,
        )
        return pb.PermitRef(permit_id=permit.permit_id)

    def GetPermit(  # noqa: N802
        self, request: pb.PermitRef, context: grpc.ServicerContext
    ) -> pb.Document:
        peer = caller(context)
        published = self.access.permit(request.permit_id)
        permit = SignedPermit.model_validate_json(published).permit if published else None
        if permit is None or (peer.role == "researcher" and permit.person(peer.name) is None):
            abort(
                context,
                grpc.StatusCode.NOT_FOUND,
                PermitRefused(
                    f"no permit {request.permit_id!r} names you",
                    rule="permit.unknown",
                    fix="check the permit id with your data-access body",
                ),
            )
        return pb.Document(json=published or "")

    def _resolve(self, prefix: str, peer: Peer, context: grpc.ServicerContext) -> str:
        """The whole id of the one application, among those ``peer`` may see, that starts
        with ``prefix``: people type ids as far as a terminal showed them."""
        mine = None if peer.role == "hdab" else peer.name
        matches = self.access.application_ids(prefix, applicant=mine, limit=AMBIGUOUS_SHOWN)
        if not matches:
            abort(context, grpc.StatusCode.NOT_FOUND, _no_application(prefix))
        if len(matches) > 1:
            abort(context, grpc.StatusCode.INVALID_ARGUMENT, _ambiguous(prefix, matches))
        return matches[0]

    def PublishRevocations(  # noqa: N802
        self, request: pb.Document, context: grpc.ServicerContext
    ) -> pb.Empty:
        peer = caller(context)
        signed = _published(request, SignedRevocations, "revocation list", peer.name, context)
        revocations = signed.revocations
        if not self.access.publish_revocations(
            revocations.issuer.name, revocations.sequence, signed.model_dump_json()
        ):
            abort(
                context,
                grpc.StatusCode.ALREADY_EXISTS,
                QueryError(
                    f"revocation list {revocations.sequence} of {revocations.issuer.name} is not "
                    "newer than the one published",
                    rule="permit.revocations_sequence",
                    fix="publish the body's newest list (`oncofed permit renew`)",
                ),
            )
        for permit_id in sorted(revocations.revoked_ids()):
            if self.access.permit_issuer(permit_id) != revocations.issuer.name:
                continue  # a body revokes only its own permits
            for task_id in self.store.unfinished_under_permit(permit_id):
                self.store.finish_task(
                    task_id,
                    "cancelled",
                    detail=f"permit {permit_id} was revoked by {revocations.issuer.name}",
                )
        self.hub.notify_progress()
        self.audit.append(
            actor=peer.name,
            action="publish-revocations",
            outcome="published",
            sequence=revocations.sequence,
            revoked=json.dumps(sorted(revocations.revoked_ids())),
        )
        return pb.Empty()


def _published(
    request: pb.Document,
    model: type[Signed],
    what: str,
    publisher: str,
    context: grpc.ServicerContext,
) -> Signed:
    """A signed document its own issuer publishes: parsed, and verified under that issuer's card.

    The coordinator trusts no body's key; this only keeps one body from publishing in
    another's name. Each node verifies against the keys its operator configured.
    """
    try:
        signed = model.model_validate_json(request.json)
    except ValidationError as exc:
        abort(context, grpc.StatusCode.INVALID_ARGUMENT, _invalid(what, exc))
    issuer = signed.issuer
    try:
        if publisher != issuer.name:
            raise AccessDenied(
                f"{publisher} published a {what} issued by {issuer.name}",
                rule="permit.publisher",
                fix="each data-access body publishes its own permits and revocation lists",
            )
        signed.verified({issuer.name: issuer.verifying_key()})
    except OncofedError as exc:
        abort(context, grpc.StatusCode.PERMISSION_DENIED, exc)
    return signed


def _closed(view: ApplicationView, decision: str) -> QueryError:
    fix = {
        "approved": "revoke its permit (`oncofed permit revoke`) to end what it granted",
        "refused": "the applicant files a new application",
        "changes-requested": "wait for the applicant's amendment, or refuse it",
    }.get(view.state, "reload the application")
    return QueryError(
        f"application {view.application_id} is {view.state}: it cannot be given the decision "
        f"{decision!r} now",
        rule="application.state",
        fix=fix,
    )


def _no_application(application_id: str) -> QueryError:
    return QueryError(
        f"no application {application_id!r}",
        rule="application.exists",
        fix="list applications with `oncofed application list`",
    )


def _ambiguous(prefix: str, matches: list[str]) -> QueryError:
    return QueryError(
        f"the ids of several applications start with {prefix!r}: {', '.join(matches)}"
        + (", ..." if len(matches) >= AMBIGUOUS_SHOWN else ""),
        rule="application.ambiguous",
        fix="type more of the id (`oncofed application list` shows each id whole)",
    )


__all__ = ["DataAccess"]
