"""``oncofed pki|application|permit|audit`` and ``oncofed node approvals``: governance commands.

Each role runs its own: the network's CA ``pki init|issue|revoke``; every
person and node ``pki request`` on their own machine; researchers
``application submit``; the data-access body ``application
list|show|request-changes|refuse|approve`` and ``permit draft|sign|publish|
revoke|renew``; node operators ``node approvals`` and ``audit verify|export``.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer
from rich.table import Table

from oncofed.client.cli_options import (
    DEFAULT_CREDENTIALS,
    CoordinatorOption,
    CredentialsOption,
    console,
    err_console,
)
from oncofed.kernel.errors import ConfigError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from rich.console import Console

    from oncofed.governance.audit import AuditTrail
    from oncofed.governance.permits import SignedRevocations
    from oncofed.node.governance_state import GovernanceState

pki_app = typer.Typer(
    help="The network's certificate authority and everyone's keys.", no_args_is_help=True
)
application_app = typer.Typer(help="Data access applications (EHDS Art. 67).", no_args_is_help=True)
permit_app = typer.Typer(
    help="Data permits and revocations (data-access bodies).", no_args_is_help=True
)
audit_app = typer.Typer(
    help="Verify and export a node's or the coordinator's audit trail.", no_args_is_help=True
)
approvals_app = typer.Typer(
    help="Tasks waiting for this node operator's approval.", no_args_is_help=True
)

CaDirOption = Annotated[Path, typer.Option("--ca-dir", help="The network CA's folder.")]
NodeConfigArgument = Annotated[Path, typer.Argument(help="The node's TOML config file.")]


def _write(text: str, out: Path | None) -> None:
    if out is None:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    else:
        out.write_text(text if text.endswith("\n") else text + "\n")
        console.print(f"wrote {out}")


# ---- pki ------------------------------------------------------------------


@pki_app.command("init")
def pki_init(
    ca_dir: CaDirOption,
    network: Annotated[str, typer.Option(help="The network's name, in the CA certificate.")],
    days: Annotated[int, typer.Option(help="Validity of the CA certificate.")] = 3650,
) -> None:
    """Create the network CA (ca.key stays in this folder; share ca.crt)."""
    from oncofed.governance.pki import init_network

    path = init_network(ca_dir, network, days)
    console.print(f"network CA for [bold]{network}[/]: {path}; keep {ca_dir / 'ca.key'} offline")


@pki_app.command("request")
def pki_request(
    role: Annotated[str, typer.Option(help="researcher, hdab, node, coordinator or admin.")],
    name: Annotated[str, typer.Option(help="Your name in the network (node name, user id).")],
    out: Annotated[Path, typer.Option(help="Your credentials folder (created).")],
    host: Annotated[
        list[str] | None, typer.Option(help="Coordinator only: a DNS name or IP clients dial.")
    ] = None,
) -> None:
    """Make your own keys and a certificate request; send only tls.csr and card.json on."""
    from oncofed.governance.keys import ROLES
    from oncofed.governance.pki import request

    if role not in ROLES:
        raise ConfigError(f"unknown role {role!r}", rule="pki.role", fix=f"one of {ROLES}")
    csr = request(out, role, name, tuple(host or ()))  # type: ignore[arg-type]
    console.print(f"request {csr} for {role} {name}; public card {out / 'card.json'}")


@pki_app.command("issue")
def pki_issue(
    ca_dir: CaDirOption,
    csr: Annotated[Path, typer.Argument(help="The tls.csr a party sent.")],
    days: Annotated[int, typer.Option(help="Validity in days.")] = 365,
) -> None:
    """Sign a certificate request; the certificate is written beside the CSR with ca.crt."""
    from oncofed.governance.pki import issue

    console.print(f"issued {issue(ca_dir, csr, days=days)}")


@pki_app.command("revoke")
def pki_revoke(
    ca_dir: CaDirOption,
    who: Annotated[str, typer.Argument(help="A name or a certificate serial number.")],
) -> None:
    """Revoke certificates and re-sign crl.pem; copy it to the coordinator's --crl path."""
    from oncofed.governance.pki import revoke

    for cert in revoke(ca_dir, who):
        console.print(f"revoked {cert.role} {cert.name} (serial {cert.serial})")


@pki_app.command("list")
def pki_list(ca_dir: CaDirOption) -> None:
    """Certificates this CA issued, and which are revoked."""
    from oncofed.governance.pki import issued

    table = Table()
    for column in ("name", "role", "serial", "valid until", "revoked"):
        table.add_column(column)
    for cert in issued(ca_dir):
        until = datetime.datetime.fromtimestamp(cert.not_after, datetime.UTC)
        table.add_row(
            cert.name,
            cert.role,
            str(cert.serial),
            f"{until:%Y-%m-%d}",
            "yes" if cert.revoked else "",
        )
    console.print(table)


# ---- applications ---------------------------------------------------------


def _show_application(record: object, out: Console = console) -> None:
    from oncofed.kernel.wire import oncofed_pb2 as pb

    assert isinstance(record, pb.ApplicationRecord)
    out.print(
        f"application [bold]{record.application_id}[/] by {record.applicant}: "
        f"[bold]{record.state}[/]" + (f", permit {record.permit_id}" if record.permit_id else "")
    )


@application_app.command("submit")
def application_submit(
    application: Annotated[Path, typer.Argument(help="The application as JSON.")],
    amends: Annotated[str, typer.Option(help="Id of an application returned for changes.")] = "",
    coordinator: CoordinatorOption = "127.0.0.1:7100",
    credentials: CredentialsOption = DEFAULT_CREDENTIALS,
) -> None:
    """File a data access application with the data-access body (through the coordinator)."""
    from oncofed.client.access import DataAccessClient, load_document
    from oncofed.governance.permits import DataAccessApplication

    document = load_document(application, DataAccessApplication, "application")
    with DataAccessClient(coordinator, credentials) as client:
        _show_application(client.submit_application(document, amends))


@application_app.command("list")
def application_list(
    coordinator: CoordinatorOption = "127.0.0.1:7100",
    credentials: CredentialsOption = DEFAULT_CREDENTIALS,
) -> None:
    """Applications: all of them for a data-access body, your own for a researcher."""
    from oncofed.client.access import DataAccessClient

    with DataAccessClient(coordinator, credentials) as client:
        records = client.applications()
    # People copy ids from here into `show` and decisions, so an id is never cut or folded
    # (nor a state): the other columns fold to make room, and on a terminal too narrow
    # even for those two, lines run past its edge rather than being cropped.
    table = Table()
    for column, values in (
        ("id", [r.application_id for r in records]),
        ("state", [r.state for r in records]),
    ):
        table.add_column(column, no_wrap=True, min_width=max(map(len, [column, *values])))
    for column in ("applicant", "permit", "purposes", "datasets"):
        table.add_column(column, overflow="fold")
    for record in records:
        document = json.loads(record.application_json)
        table.add_row(
            record.application_id,
            record.state,
            record.applicant,
            record.permit_id,
            ", ".join(document["purposes"]),
            ", ".join(d["dataset"] for d in document["datasets"]),
        )
    console.print(table, crop=False)


@application_app.command("show")
def application_show(
    application_id: str,
    coordinator: CoordinatorOption = "127.0.0.1:7100",
    credentials: CredentialsOption = DEFAULT_CREDENTIALS,
) -> None:
    """Print an application as JSON on stdout, its state and history on stderr.

    `oncofed application show ID > application.json` writes the file `oncofed permit
    draft` reads, and the terminal still shows who decided what. ID may be any unique
    start of the id."""
    from oncofed.client.access import DataAccessClient

    with DataAccessClient(coordinator, credentials) as client:
        record = client.application(application_id)
    _show_application(record, err_console)
    for entry in json.loads(record.history_json):
        at = datetime.datetime.fromtimestamp(entry["at"], datetime.UTC)
        note = f": {entry['note']}" if entry["note"] else ""
        err_console.print(f"  {at:%Y-%m-%d %H:%M} {entry['by']} -> {entry['state']}{note}")
    sys.stdout.write(json.dumps(json.loads(record.application_json), indent=2) + "\n")


def _decide(
    decision: str, application_id: str, note: str, coordinator: str, credentials: Path
) -> None:
    from oncofed.client.access import DataAccessClient

    with DataAccessClient(coordinator, credentials) as client:
        _show_application(client.decide(application_id, decision, note))


NoteOption = Annotated[str, typer.Option(help="What the applicant reads.")]


@application_app.command("request-changes")
def application_request_changes(
    application_id: str,
    note: NoteOption,
    coordinator: CoordinatorOption = "127.0.0.1:7100",
    credentials: CredentialsOption = DEFAULT_CREDENTIALS,
) -> None:
    """Return an application to its applicant, who amends it (`submit --amends`)."""
    _decide("request-changes", application_id, note, coordinator, credentials)


@application_app.command("refuse")
def application_refuse(
    application_id: str,
    note: NoteOption,
    coordinator: CoordinatorOption = "127.0.0.1:7100",
    credentials: CredentialsOption = DEFAULT_CREDENTIALS,
) -> None:
    """Refuse an application, with the reason."""
    _decide("refuse", application_id, note, coordinator, credentials)


@application_app.command("approve")
def application_approve(
    application_id: str,
    note: NoteOption = "",
    coordinator: CoordinatorOption = "127.0.0.1:7100",
    credentials: CredentialsOption = DEFAULT_CREDENTIALS,
) -> None:
    """Record approval (publishing the signed permit records it too)."""
    _decide("approve", application_id, note, coordinator, credentials)


# ---- permits --------------------------------------------------------------


@permit_app.command("draft")
def permit_draft(
    application: Annotated[Path, typer.Argument(help="The application JSON (`application show`).")],
    permit_id: Annotated[str, typer.Option(help="The permit's id.")],
    application_id: Annotated[
        str,
        typer.Option(
            help="The application it answers: its id, or any unique start of it (looked "
            "up at the coordinator; a whole id needs no network)."
        ),
    ] = "",
    epsilon: Annotated[
        float | None, typer.Option(help="Privacy budget per dataset (default: as asked).")
    ] = None,
    models_may_leave: Annotated[bool, typer.Option(help="Allow trained models out.")] = False,
    conditions: Annotated[str, typer.Option(help="Special conditions, in words.")] = "",
    coordinator: CoordinatorOption = "127.0.0.1:7100",
    credentials: CredentialsOption = DEFAULT_CREDENTIALS,
    out: Annotated[Path | None, typer.Option(help="Write here instead of stdout.")] = None,
) -> None:
    """A permit granting what was asked, to edit (narrow) before signing."""
    from oncofed.client.access import draft_permit, load_document
    from oncofed.governance.keys import Identity
    from oncofed.governance.permits import DataAccessApplication

    document = load_document(application, DataAccessApplication, "application")
    permit = draft_permit(
        document,
        Identity.load(credentials),
        permit_id=permit_id,
        application_id=_whole_application_id(application_id, coordinator, credentials),
        epsilon=epsilon,
        models_may_leave=models_may_leave,
        conditions=conditions,
    )
    _write(permit.model_dump_json(indent=2), out)


def _whole_application_id(application_id: str, coordinator: str, credentials: Path) -> str:
    """The whole id a signed permit must name, for the start of one a person typed.

    Only a shorter id asks the coordinator, so a body drafting from a whole id can
    stay offline."""
    from oncofed.coordinator.access_store import APPLICATION_ID_LENGTH

    if not application_id or len(application_id) >= APPLICATION_ID_LENGTH:
        return application_id
    from oncofed.client.access import DataAccessClient

    with DataAccessClient(coordinator, credentials) as client:
        return str(client.application(application_id).application_id)


@permit_app.command("sign")
def permit_sign(
    permit: Annotated[Path, typer.Argument(help="The permit JSON (`permit draft`).")],
    credentials: CredentialsOption = DEFAULT_CREDENTIALS,
    out: Annotated[Path | None, typer.Option(help="Write here instead of stdout.")] = None,
) -> None:
    """Sign a permit with the data-access body's own key (offline; no coordinator needed)."""
    from oncofed.client.access import load_document
    from oncofed.governance.keys import Identity
    from oncofed.governance.permits import Permit

    body = Identity.load(credentials)
    document: Permit = load_document(permit, Permit, "permit")
    try:
        signed = document.sign(body.signing)
    except ValueError as exc:
        raise ConfigError(
            str(exc), rule="permit.issuer", fix="sign with the issuer's credentials"
        ) from None
    _write(signed.model_dump_json(indent=2), out)


@permit_app.command("publish")
def permit_publish(
    signed: Annotated[Path, typer.Argument(help="The signed permit (`permit sign`).")],
    valid_hours: Annotated[
        float, typer.Option(help="Hours until nodes need a newer revocation list.")
    ] = 24,
    coordinator: CoordinatorOption = "127.0.0.1:7100",
    credentials: CredentialsOption = DEFAULT_CREDENTIALS,
) -> None:
    """Hand a signed permit (or amendment) to the coordinator, which relays it with tasks.

    Also signs and publishes the body's next revocation list, which nodes need before
    any work under its permits; for an amendment (version > 1) the list revokes the
    older versions, so no coordinator can keep relaying them."""
    from oncofed.client.access import DataAccessClient, load_document
    from oncofed.governance.permits import SignedPermit

    document: SignedPermit = load_document(signed, SignedPermit, "signed permit")
    with DataAccessClient(coordinator, credentials) as client:
        permit_id, listed = client.grant(document, datetime.timedelta(hours=valid_hours))
    console.print(f"published permit [bold]{permit_id}[/]")
    _published(listed)


@permit_app.command("show")
def permit_show(
    permit_id: str,
    coordinator: CoordinatorOption = "127.0.0.1:7100",
    credentials: CredentialsOption = DEFAULT_CREDENTIALS,
) -> None:
    """Print a published permit that names you (or any, for a data-access body)."""
    from oncofed.client.access import DataAccessClient

    with DataAccessClient(coordinator, credentials) as client:
        _write(client.permit(permit_id).model_dump_json(indent=2), None)


@permit_app.command("revoke")
def permit_revoke(
    permit_id: Annotated[list[str], typer.Argument(help="Permit id(s) to revoke.")],
    reason: Annotated[str, typer.Option(help="Recorded in the revocation list.")] = "",
    valid_hours: Annotated[float, typer.Option(help="Hours until nodes need a newer list.")] = 24,
    coordinator: CoordinatorOption = "127.0.0.1:7100",
    credentials: CredentialsOption = DEFAULT_CREDENTIALS,
) -> None:
    """Sign the body's next revocation list with these permits on it, and publish it."""
    _revocations(permit_id, reason, valid_hours, coordinator, credentials)


@permit_app.command("renew")
def permit_renew(
    valid_hours: Annotated[float, typer.Option(help="Hours until nodes need a newer list.")] = 24,
    coordinator: CoordinatorOption = "127.0.0.1:7100",
    credentials: CredentialsOption = DEFAULT_CREDENTIALS,
) -> None:
    """Re-sign and publish the revocation list; run it well within --valid-hours (cron)."""
    _revocations([], "", valid_hours, coordinator, credentials)


def _revocations(
    permit_ids: list[str], reason: str, valid_hours: float, coordinator: str, credentials: Path
) -> None:
    from oncofed.client.access import DataAccessClient

    with DataAccessClient(coordinator, credentials) as client:
        signed = client.revise_revocations(
            permit_ids, reason, datetime.timedelta(hours=valid_hours)
        )
    _published(signed)


def _published(signed: SignedRevocations) -> None:
    listed = signed.revocations
    console.print(
        f"revocation list {listed.sequence} published: {len(listed.revoked)} revoked, "
        f"next update due {listed.next_update:%Y-%m-%d %H:%M} UTC"
    )


# ---- node approvals ---------------------------------------------------------


def _approvals_state(config: Path) -> GovernanceState:
    from oncofed.node.config import load_node_config
    from oncofed.node.governance_state import GovernanceState

    return GovernanceState.at(load_node_config(config).state_dir)


@approvals_app.command("list")
def approvals_list(
    config: NodeConfigArgument,
    all_: Annotated[bool, typer.Option("--all", help="Decided ones too.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines instead.")] = False,
) -> None:
    """Tasks waiting for approval (run id, permit, researcher, task, dataset, parameters)."""
    approvals = _approvals_state(config).approvals(None if all_ else "pending")
    if as_json:
        for approval in approvals:
            print(json.dumps(dataclasses.asdict(approval)))
        return
    table = Table()
    for column in ("run", "state", "permit", "researcher", "task", "dataset", "parameters"):
        table.add_column(column, overflow="fold")
    for approval in approvals:
        table.add_row(
            str(approval.run_id),
            approval.state,
            approval.permit_id,
            approval.researcher,
            approval.task_type,
            approval.dataset,
            approval.params_json,
        )
    console.print(table)


def _decide_approval(
    config: Path, run_id: int, decision: Literal["approved", "rejected"], reason: str
) -> None:
    from oncofed.node.config import load_node_config
    from oncofed.node.governance_state import GovernanceState
    from oncofed.node.local_state import decide_approval

    cfg = load_node_config(config)
    listing = f"`oncofed node approvals list {config} --all`"
    decide_approval(
        GovernanceState.at(cfg.state_dir), cfg.name, run_id, decision, reason, listing=listing
    )
    console.print(f"run {run_id}: {decision}")


@approvals_app.command("approve")
def approvals_approve(config: NodeConfigArgument, run_id: int) -> None:
    """Let a waiting task run on this node."""
    _decide_approval(config, run_id, "approved", "")


@approvals_app.command("reject")
def approvals_reject(
    config: NodeConfigArgument,
    run_id: int,
    reason: Annotated[str, typer.Option(help="What the researcher reads.")],
) -> None:
    """Refuse a waiting task; the researcher gets the reason."""
    _decide_approval(config, run_id, "rejected", reason)


# ---- audit ----------------------------------------------------------------


def _trail(
    node: Path | None, db: str | None, credentials: Path | None
) -> tuple[AuditTrail, Ed25519PublicKey, str]:
    """The audit trail to read, and the public key its checkpoints are signed with."""
    from oncofed.governance.audit import AuditTrail

    if node is not None:
        from oncofed.node.config import load_node_config
        from oncofed.node.local_state import node_audit_trail

        cfg = load_node_config(node)
        return (*node_audit_trail(cfg), cfg.name)
    if db is not None and credentials is not None:
        from oncofed.coordinator.db import open_database
        from oncofed.governance.keys import Identity

        key = Identity.load(credentials).signing.public_key()
        return AuditTrail(open_database(db), create=False), key, "coordinator"
    raise ConfigError(
        "say whose audit trail to read",
        rule="audit.source",
        fix="pass --node CONFIG, or --db URL with the coordinator's --credentials",
    )


NodeOption = Annotated[Path | None, typer.Option("--node", help="A node's TOML config.")]
DbOption = Annotated[str | None, typer.Option("--db", help="The coordinator's database URL.")]
KeyFolderOption = Annotated[
    Path | None, typer.Option("--credentials", help="The coordinator's credentials folder.")
]


@audit_app.command("verify")
def audit_verify(
    node: NodeOption = None, db: DbOption = None, credentials: KeyFolderOption = None
) -> None:
    """Check the hash chain and signed checkpoints; name every edited, deleted or moved entry."""
    trail, key, owner = _trail(node, db, credentials)
    problems = trail.verify(key)
    if problems:
        for problem in problems:
            console.print(f"[red]{problem}[/]")
        raise ConfigError(
            f"the audit trail of {owner} has {len(problems)} problem(s)",
            rule="audit.verify",
            fix="treat the trail as tampered with; compare with its backups",
        )
    count = sum(1 for _ in trail.entries())
    console.print(f"[green]ok[/]: the audit trail of {owner} is intact ({count} entries)")


@audit_app.command("export")
def audit_export(
    permit: Annotated[str, typer.Option("--permit", help="The permit id.")],
    node: NodeOption = None,
    db: DbOption = None,
    credentials: KeyFolderOption = None,
    out: Annotated[Path | None, typer.Option(help="Write here instead of stdout.")] = None,
) -> None:
    """Every entry under a permit, with the chain's verification: what a body asks for."""
    trail, key, owner = _trail(node, db, credentials)
    record = {"source": owner, **trail.export(permit, key)}
    _write(json.dumps(record, indent=1, sort_keys=True), out)


__all__ = ["application_app", "approvals_app", "audit_app", "permit_app", "pki_app"]
