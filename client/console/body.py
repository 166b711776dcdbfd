"""The data-access body's pages: the applications inbox, review beside the catalogue,
decisions, permits drafted from applications and signed with the body's own key,
revocation, and audit records received from centres.

Signing happens in this process, on the body's machine, with the key in its
credentials folder; only the signed permit and revocation list go to the
coordinator, as with ``oncofed permit sign`` and ``publish``.
"""

from __future__ import annotations

import datetime
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from oncofed.client.access import DataAccessClient, draft_permit
from oncofed.client.console.app import ConsoleSettings
from oncofed.client.console.catalogue import catalogue
from oncofed.client.console.pages import Pages, back_to, form_text
from oncofed.client.session import Session
from oncofed.governance.audit import export_problems
from oncofed.governance.keys import IdentityCard
from oncofed.governance.permits import DataAccessApplication, Permit, SignedPermit
from oncofed.kernel.errors import ConfigError, OncofedError, format_validation_error
from oncofed.kernel.wire import oncofed_pb2 as pb

DECISIONS = {"request-changes": "changes requested", "refuse": "refused", "approve": "approved"}
RENEW_WARNING = datetime.timedelta(hours=6)


def application_view(record: pb.ApplicationRecord) -> dict[str, Any]:
    """An application record as the pages show it (the researcher's pages too)."""
    document = json.loads(record.application_json)
    return {
        "id": record.application_id,
        "state": record.state,
        "applicant": record.applicant,
        "permit_id": record.permit_id,
        "document": document,
        "json": record.application_json,
        "updated": datetime.datetime.fromtimestamp(record.updated_at, datetime.UTC),
        "history": [
            {**entry, "at": datetime.datetime.fromtimestamp(entry["at"], datetime.UTC)}
            for entry in json.loads(record.history_json)
        ],
    }


def routes(settings: ConsoleSettings, pages: Pages) -> Sequence[BaseRoute]:
    assert settings.credentials is not None, "a body's console runs with its credentials"
    folder = settings.credentials
    signed_here = SignedPermits(settings.state_dir / "permits")

    def client() -> DataAccessClient:
        return DataAccessClient(settings.coordinator, folder)

    def inbox(request: Request) -> Response:
        with client() as body:
            records = [application_view(r) for r in body.applications()]
        # Waiting for the body first, then the most recently changed.
        records.sort(key=lambda r: (r["state"] != "submitted", -r["updated"].timestamp()))
        return pages.render(request, "body/inbox.html", {"applications": records})

    def review(request: Request, error: OncofedError | None = None, status: int = 200) -> Response:
        application_id = request.path_params["application_id"]
        with client() as body:
            record = application_view(body.application(application_id))
        with Session(settings.coordinator, credentials=folder, progress=False) as session:
            known = catalogue(session.node_infos())
        asked = record["document"]["datasets"]
        return pages.render(
            request,
            "body/review.html",
            {
                "application": record,
                "catalogue": known,
                "missing": {
                    d["dataset"]: [
                        v
                        for v in (d.get("variables") or [])
                        if d["dataset"] in known and v not in known[d["dataset"]].columns
                    ]
                    for d in asked
                },
                "default_permit_id": _suggested_permit_id(record),
                "reviewed": _fingerprint(record["json"]),
                "error": pages.error(error) if error is not None else None,
            },
            status=status,
        )

    def show(request: Request) -> Response:
        return review(request)

    async def decide(request: Request) -> Response:
        form = await request.form()
        application_id = request.path_params["application_id"]
        decision = form_text(form, "decision")
        note = form_text(form, "note")
        if decision not in DECISIONS:
            raise ConfigError(f"unknown decision {decision!r}", rule="console.decision")
        if decision != "approve" and not note:
            return await run_in_threadpool(
                review,
                request,
                ConfigError(
                    "a decision that returns or refuses an application needs a note",
                    rule="application.note",
                    fix="write what the applicant should change, or why it is refused, in "
                    "\u201cnote\u201d",
                ),
                400,
            )

        def send() -> pb.ApplicationRecord:
            with client() as body:
                return body.decide(application_id, decision, note)

        record = await run_in_threadpool(send)
        return back_to(
            request,
            f"/applications/{record.application_id}",
            f"application {record.application_id}: {DECISIONS[decision]}",
        )

    async def draft(request: Request) -> Response:
        """The permit that would be signed, for the body to read before it signs."""
        form = await request.form()
        application_id = request.path_params["application_id"]
        try:
            permit = await run_in_threadpool(_draft, application_id, form)
        except OncofedError as exc:
            return await run_in_threadpool(review, request, exc, 400)
        return pages.render(
            request,
            "body/draft.html",
            {
                "application_id": application_id,
                "permit": permit,
                "permit_json": permit.model_dump_json(indent=2),
            },
        )

    async def publish(request: Request) -> Response:
        """Sign exactly the permit the preview showed (not a new draft from the coordinator's
        copy of the application, which the coordinator could have changed in between)."""
        form = await request.form()
        hours = _positive_float(form_text(form, "valid_hours") or "24", "valid hours")

        def sign_and_publish() -> str:
            with client() as body:
                permit = _previewed(form_text(form, "permit_json"), body.identity.card)
                signed: SignedPermit = permit.sign(body.identity.signing)
                signed_here.keep(signed)
                permit_id, listed = body.grant(signed, datetime.timedelta(hours=hours))
            return (
                f"permit {permit_id} signed and published; revocation list "
                f"{listed.revocations.sequence} published"
            )

        try:
            notice = await run_in_threadpool(sign_and_publish)
        except OncofedError as exc:
            return await run_in_threadpool(review, request, exc, 400)
        return back_to(request, "/permits", notice)

    def _draft(application_id: str, form: Any) -> Permit:
        with client() as body:
            record = body.application(application_id)
            identity = body.identity
        # The draft is of the application the body read, not of whatever the coordinator
        # holds by the time "Preview" is pressed.
        if form_text(form, "reviewed") != _fingerprint(record.application_json):
            raise ConfigError(
                f"application {record.application_id} is not the one this page showed: it "
                "changed at the coordinator after you opened it",
                rule="application.changed",
                fix="read the application again (reload its page), then preview the permit",
            )
        application = DataAccessApplication.model_validate_json(record.application_json)
        epsilon = form_text(form, "epsilon")
        days = form_text(form, "valid_days")
        try:
            return draft_permit(
                application,
                identity,
                permit_id=form_text(form, "permit_id"),
                application_id=record.application_id,
                valid_days=int(days) if days else None,
                epsilon=_positive_float(epsilon, "epsilon") if epsilon else None,
                models_may_leave=form.get("models_may_leave") == "on",
                conditions=form_text(form, "conditions"),
            )
        except (ValidationError, ValueError) as exc:
            detail = format_validation_error(exc) if isinstance(exc, ValidationError) else str(exc)
            raise ConfigError(
                f"the permit cannot be drafted: {detail}",
                rule="permit.schema",
                fix="correct the field named above and preview again",
            ) from None

    def permits(request: Request) -> Response:
        with client() as body:
            records = [application_view(r) for r in body.applications() if r.permit_id]
            relayed = {r["permit_id"]: body.permit(r["permit_id"]) for r in records}
            held = body.held_revocations()
            trusted = {body.identity.card.name: body.identity.signing.public_key()}
        revoked = held.revocations.revoked_ids() if held is not None else frozenset()
        listed = held.revocations if held is not None else None
        now = datetime.datetime.now(datetime.UTC)
        # The coordinator's copies are checked against this body's own key, and the permits
        # this console signed are listed from its own record: a coordinator can neither show
        # a changed permit as in force nor hide one from the revoke form.
        rows: dict[str, tuple[Permit, str]] = {}
        for permit_id, signed in relayed.items():
            try:
                signed.verified(trusted)
                status = "revoked" if permit_id in revoked else "in force"
            except OncofedError:
                status = "not as signed: the coordinator's copy fails this body's signature"
            rows[permit_id] = (signed.permit, status)
        for signed in signed_here.permits():
            shown = rows.get(signed.permit.permit_id)
            if shown is None or shown[0].version < signed.permit.version:
                status = (
                    "revoked" if signed.permit.permit_id in revoked else "not at the coordinator"
                )
                if shown is not None and not shown[1].startswith("not as signed"):
                    status = f"{status} (the coordinator relays version {shown[0].version})"
                rows[signed.permit.permit_id] = (signed.permit, status)
        return pages.render(
            request,
            "body/permits.html",
            {
                "permits": sorted(rows.values(), key=lambda row: row[0].permit_id),
                "revocations": listed,
                "list_due_soon": listed is not None and listed.next_update - now < RENEW_WARNING,
                "list_stale": listed is None or listed.next_update <= now,
            },
        )

    async def revoke(request: Request) -> Response:
        form = await request.form()
        permit_id = form_text(form, "permit_id")
        reason = form_text(form, "reason")
        if not permit_id or not reason:
            raise ConfigError(
                "revoking needs the permit and a reason",
                rule="permit.revoke",
                fix="choose the permit and write the reason nodes will record",
            )

        def send() -> int:
            with client() as body:
                return body.revise_revocations([permit_id], reason).revocations.sequence

        sequence = await run_in_threadpool(send)
        return back_to(
            request, "/permits", f"permit {permit_id} revoked (revocation list {sequence})"
        )

    async def renew(request: Request) -> Response:
        form = await request.form()
        hours = _positive_float(form_text(form, "valid_hours") or "24", "valid hours")

        def send() -> str:
            with client() as body:
                listed = body.revise_revocations(
                    valid_for=datetime.timedelta(hours=hours)
                ).revocations
            return f"revocation list {listed.sequence} published, next update due " + (
                f"{listed.next_update:%Y-%m-%d %H:%M} UTC"
            )

        return back_to(request, "/permits", await run_in_threadpool(send))

    def audit(request: Request) -> Response:
        return pages.render(request, "body/audit.html", {})

    async def audit_check(request: Request) -> Response:
        form = await request.form()
        upload = form.get("record")
        if upload is None or isinstance(upload, str):
            raise ConfigError(
                "no audit record was sent", rule="audit.file", fix="choose the record's JSON file"
            )
        raw = await upload.read()
        try:
            record = json.loads(raw)
            problems = export_problems(record)
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(
                f"{upload.filename} is not an audit record ({exc})",
                rule="audit.schema",
                fix="choose the JSON file `oncofed audit export` wrote",
            ) from None
        return pages.render(
            request,
            "body/audit.html",
            {
                "record": record,
                "filename": upload.filename,
                "problems": problems,
                "entries": [
                    {**e, "at": datetime.datetime.fromtimestamp(e["time"], datetime.UTC)}
                    for e in record["entries"]
                ],
            },
        )

    return [
        Route("/", inbox),
        Route("/applications/{application_id}", show),
        Route("/applications/{application_id}/decide", decide, methods=["POST"]),
        Route("/applications/{application_id}/draft", draft, methods=["POST"]),
        Route("/applications/{application_id}/publish", publish, methods=["POST"]),
        Route("/permits", permits),
        Route("/permits/revoke", revoke, methods=["POST"]),
        Route("/permits/renew", renew, methods=["POST"]),
        Route("/audit", audit),
        Route("/audit", audit_check, methods=["POST"]),
    ]


class SignedPermits:
    """The permits this console signed, kept before they are published."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def keep(self, signed: SignedPermit) -> None:
        permit = signed.permit
        path = self.folder / f"{permit.permit_id}.v{permit.version}.json"
        partial = path.with_suffix(".tmp")
        partial.write_text(signed.model_dump_json(indent=1), encoding="utf-8")
        partial.replace(path)

    def permits(self) -> list[SignedPermit]:
        return [
            SignedPermit.model_validate_json(path.read_text(encoding="utf-8"))
            for path in sorted(self.folder.glob("*.json"))
        ]


def _previewed(permit_json: str, issuer: IdentityCard) -> Permit:
    try:
        permit = Permit.model_validate_json(permit_json)
    except ValidationError as exc:
        raise ConfigError(
            f"the previewed permit is not a permit: {format_validation_error(exc)}",
            rule="permit.schema",
            fix="preview the permit again from the application's page",
        ) from None
    if permit.issuer != issuer:
        raise ConfigError(
            "the previewed permit names another issuer than this body",
            rule="permit.issuer",
            fix="preview the permit again from the application's page",
        )
    return permit


def _fingerprint(application_json: str) -> str:
    return hashlib.sha256(application_json.encode()).hexdigest()


def _suggested_permit_id(record: dict[str, Any]) -> str:
    """A permit id to start from: the application's own, which a body may replace."""
    return record["permit_id"] or f"permit-{record['id'][:12]}"


def _positive_float(text: str, name: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ConfigError(
            f"{name} must be a positive number, not {text!r}",
            rule="console.number",
            fix=f"write a number above 0 in \u201c{name}\u201d",
        )
    return value


__all__ = ["application_view", "routes"]
