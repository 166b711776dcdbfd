"""Alembic environment: runs on the connection the coordinator hands it."""

from alembic import context

from oncofed.coordinator.db import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata)
with context.begin_transaction():
    context.run_migrations()
