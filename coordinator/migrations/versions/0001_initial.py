"""Nodes, tasks, messages and replies.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "nodes",
        sa.Column("node_id", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("datasets", sa.Text(), nullable=False),
        sa.Column("online", sa.Boolean(), nullable=False),
        sa.Column("last_seen", sa.Float(), nullable=False),
        sa.Column("registered_at", sa.Float(), nullable=False),
    )
    op.create_table(
        "tasks",
        sa.Column("task_id", sa.String(32), primary_key=True),
        sa.Column("run_id", sa.BigInteger(), nullable=False, unique=True),
        sa.Column("task_type", sa.String(64), nullable=False),
        sa.Column("params", sa.Text(), nullable=False),
        sa.Column("researcher", sa.String(128), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.Column("result", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
    )
    op.create_index("ix_tasks_state", "tasks", ["state"])
    op.create_table(
        "messages",
        sa.Column("message_id", sa.String(64), primary_key=True),
        sa.Column("task_id", sa.String(32), sa.ForeignKey("tasks.task_id"), nullable=False),
        sa.Column("dst_node_id", sa.BigInteger(), nullable=False),
        sa.Column("message_type", sa.String(128), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.Column("delivered_at", sa.Float(), nullable=True),
    )
    op.create_index("ix_messages_task_id", "messages", ["task_id"])
    op.create_index("ix_messages_dst_node_id", "messages", ["dst_node_id"])
    op.create_index("ix_messages_state", "messages", ["state"])
    op.create_table(
        "replies",
        sa.Column(
            "message_id",
            sa.String(64),
            sa.ForeignKey("messages.message_id"),
            primary_key=True,
        ),
        sa.Column("src_node_id", sa.BigInteger(), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("received_at", sa.Float(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("replies")
    op.drop_table("messages")
    op.drop_table("tasks")
    op.drop_table("nodes")
