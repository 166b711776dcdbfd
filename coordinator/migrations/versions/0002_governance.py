"""Data access applications, permits, revocation lists, signed tasks and the audit trail.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "applications",
        sa.Column("application_id", sa.String(32), primary_key=True),
        sa.Column("applicant", sa.String(64), nullable=False, index=True),
        sa.Column("state", sa.String(24), nullable=False),
        sa.Column("document", sa.Text(), nullable=False),
        sa.Column("history", sa.Text(), nullable=False),
        sa.Column("permit_id", sa.String(64), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
    )
    op.create_table(
        "permits",
        sa.Column("permit_id", sa.String(64), primary_key=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("issuer", sa.String(64), nullable=False),
        sa.Column("signed_json", sa.Text(), nullable=False),
        sa.Column("published_at", sa.Float(), nullable=False),
    )
    op.create_table(
        "revocation_lists",
        sa.Column("issuer", sa.String(64), primary_key=True),
        sa.Column("sequence", sa.Integer(), nullable=False),
        sa.Column("signed_json", sa.Text(), nullable=False),
        sa.Column("published_at", sa.Float(), nullable=False),
    )
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("permit_id", sa.String(64), nullable=True))
        batch.add_column(sa.Column("nonce", sa.String(32), nullable=True))
        batch.add_column(sa.Column("signed_task", sa.Text(), nullable=True))
        batch.create_index("ix_tasks_permit_id", ["permit_id"])
        batch.create_unique_constraint("uq_tasks_nonce", ["nonce"])
    # Mirrors governance/audit.py AUDIT_TABLE, which nodes create on their own SQLite file.
    op.create_table(
        "audit_trail",
        sa.Column("seq", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("time", sa.Float(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("actor", sa.String(256), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("permit_id", sa.String(128), nullable=False, index=True),
        sa.Column("dataset", sa.String(128), nullable=False),
        sa.Column("params_sha256", sa.String(64), nullable=False),
        sa.Column("outcome", sa.String(64), nullable=False),
        sa.Column("rule", sa.String(128), nullable=False),
        sa.Column("released_bytes", sa.BigInteger(), nullable=False),
        sa.Column("epsilon", sa.Float(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("prev", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("signature", sa.Text(), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("audit_trail")
    with op.batch_alter_table("tasks") as batch:
        batch.drop_constraint("uq_tasks_nonce", type_="unique")
        batch.drop_index("ix_tasks_permit_id")
        batch.drop_column("signed_task")
        batch.drop_column("nonce")
        batch.drop_column("permit_id")
    op.drop_table("revocation_lists")
    op.drop_table("permits")
    op.drop_table("applications")
