"""Alembic environment: always driven from db.migrate with a live connection."""

from alembic import context

from db.models import Base

connection = context.config.attributes.get("connection")
if connection is None:
    from db.engine import database_url, make_engine

    connection = make_engine(database_url()).connect()

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
